package job

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
)

// Finish indexes each job in RecentKey by its finish time, newest first;
// the index keeps at most RecentCap ids, and ids whose record expired are
// skipped and dropped by Recent.
func TestRecentIndex(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	defer rdb.Close()
	s := NewStore(rdb)
	req := valid()
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 3 {
		rec := &Record{ID: fmt.Sprintf("j%d", i), Status: StatusSucceeded, Model: req.Model, Request: &req, FinishedAt: base.Add(time.Duration(i) * time.Second)}
		if err := s.Finish(ctx, rec, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Through QueueFinish (the worker's pipelined path) too.
	pipe := rdb.Pipeline()
	done := s.QueueFinish(ctx, pipe, &Record{ID: "j3", Status: StatusFailed, Model: req.Model, FinishedAt: base.Add(time.Hour)}, "")
	_, _ = pipe.Exec(ctx)
	if err := done(); err != nil {
		t.Fatal(err)
	}
	got, more, err := s.Recent(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if more {
		t.Fatal("more = true with every id read")
	}
	var ids []string
	for _, r := range got {
		ids = append(ids, r.ID+":"+string(r.Status))
	}
	if fmt.Sprint(ids) != "[j3:failed j2:succeeded j1:succeeded j0:succeeded]" {
		t.Fatalf("Recent = %v", ids)
	}
	if got, more, _ := s.Recent(ctx, 0, 2); len(got) != 2 || got[0].ID != "j3" || got[1].ID != "j2" || !more {
		t.Fatalf("Recent(0, 2) = %v, more %v", got, more)
	}
	if got, more, _ := s.Recent(ctx, 2, 2); len(got) != 2 || got[0].ID != "j1" || got[1].ID != "j0" || more {
		t.Fatalf("Recent(2, 2) = %v, more %v", got, more)
	}

	// An expired record is skipped and its id leaves the index.
	if err := rdb.Del(ctx, recordKey("j2")).Err(); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.Recent(ctx, 0, 10); len(got) != 3 {
		t.Fatalf("Recent after an expiry = %d records, want 3", len(got))
	}
	if n := rdb.ZCard(ctx, RecentKey).Val(); n != 3 {
		t.Fatalf("index holds %d ids after Recent met an expired one, want 3", n)
	}

	// The cap.
	for i := range RecentCap + 5 {
		if err := s.Finish(ctx, &Record{ID: fmt.Sprintf("c%d", i), Status: StatusSucceeded, FinishedAt: base.Add(2*time.Hour + time.Duration(i)*time.Millisecond)}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if n := rdb.ZCard(ctx, RecentKey).Val(); n != RecentCap {
		t.Fatalf("index holds %d ids, want the cap %d", n, RecentCap)
	}
	if got, _, _ := s.Recent(ctx, 0, 1); got[0].ID != fmt.Sprintf("c%d", RecentCap+4) {
		t.Fatalf("newest = %s", got[0].ID)
	}
}
