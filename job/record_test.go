package job

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
)

// Start and Finish decide who runs a job: one claim at a time, never again
// after a final status, never after a cancel.
func TestStartClaimFinishFinal(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	defer rdb.Close()
	s := NewStore(rdb)
	req := valid()
	run := func(id string) *Record {
		return &Record{ID: id, Status: StatusRunning, Model: req.Model, Request: &req, StartedAt: time.Now().UTC()}
	}
	start := func(rec *Record, owner string, want StartResult) {
		t.Helper()
		got, err := s.Start(ctx, rec, owner, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("Start(%s, %s) = %q, want %q", rec.ID, owner, got, want)
		}
	}

	a := run("a")
	start(a, "w1", StartOK)
	if rec, err := s.Get(ctx, "a"); err != nil || rec.Status != StatusRunning {
		t.Fatalf("after Start: %+v, %v", rec, err)
	}
	start(run("a"), "w2", StartClaimed)
	// Progress of an earlier attempt is cleared by the next start.
	if err := s.SetProgress(ctx, "a", 3, 4); err != nil {
		t.Fatal(err)
	}
	if rec, _ := s.Get(ctx, "a"); rec.Progress == nil || rec.Progress.Step != 3 {
		t.Fatalf("progress = %+v", rec.Progress)
	}

	// A non-terminal finish (a retry) releases the claim; the next attempt
	// may start and sees no stale progress.
	a.Status = StatusQueued
	if err := s.Finish(ctx, a, "w1"); err != nil {
		t.Fatal(err)
	}
	start(run("a"), "w2", StartOK)
	if rec, _ := s.Get(ctx, "a"); rec.Progress != nil {
		t.Fatalf("progress after a new start = %+v, want none", rec.Progress)
	}
	done := run("a")
	done.Status, done.FinishedAt = StatusSucceeded, time.Now().UTC()
	if err := s.Finish(ctx, done, "w2"); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, claimKey("a")).Result(); n != 0 {
		t.Fatal("claim kept after Finish")
	}
	start(run("a"), "w3", StartDone)
	if rec, _ := s.Get(ctx, "a"); rec.Status != StatusSucceeded {
		t.Fatalf("status after a refused start = %s", rec.Status)
	}
	if ttl, _ := rdb.PTTL(ctx, recordKey("a")).Result(); ttl <= 0 || ttl > RecordTTL {
		t.Fatalf("record TTL = %v", ttl)
	}

	// Finish with another owner's name releases nothing.
	start(run("b"), "w1", StartOK)
	b := run("b")
	b.Status = StatusQueued
	if err := s.Finish(ctx, b, "w9"); err != nil {
		t.Fatal(err)
	}
	start(run("b"), "w2", StartClaimed)

	// A cancel requested before the start wins.
	if err := s.RequestCancel(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	start(run("c"), "w1", StartCancelled)
	if n, _ := rdb.Exists(ctx, claimKey("c")).Result(); n != 0 {
		t.Fatal("a cancelled job was claimed")
	}
}

// FinishUnlessEnded writes the record of a job that has not ended, with its
// completed event, and leaves one that ended as it was.
func TestFinishUnlessEnded(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	defer rdb.Close()
	s := NewStore(rdb)
	req := valid()
	if _, err := s.Start(ctx, &Record{ID: "dead", Status: StatusRunning, Request: &req}, "w1", time.Minute); err != nil {
		t.Fatal(err)
	}
	failed := &Record{ID: "dead", Status: StatusFailed, Error: "its worker died", Request: &req}
	if wrote, err := s.FinishUnlessEnded(ctx, failed); err != nil || !wrote {
		t.Fatalf("FinishUnlessEnded of a running job = %v, %v; want written", wrote, err)
	}
	if rec, err := s.Get(ctx, "dead"); err != nil || rec.Status != StatusFailed || rec.Error != "its worker died" {
		t.Fatalf("record %+v, %v", rec, err)
	}
	if ev, err := s.LastEvent(ctx, "dead"); err != nil || ev == nil || ev.Type != EventCompleted {
		t.Fatalf("last event %+v, %v; want completed", ev, err)
	}

	if _, err := s.Start(ctx, &Record{ID: "done", Status: StatusRunning, Request: &req}, "w1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(ctx, &Record{ID: "done", Status: StatusSucceeded, Request: &req}, "w1"); err != nil {
		t.Fatal(err)
	}
	if wrote, err := s.FinishUnlessEnded(ctx, &Record{ID: "done", Status: StatusFailed, Error: "late", Request: &req}); err != nil || wrote {
		t.Fatalf("FinishUnlessEnded of an ended job = %v, %v; want nothing written", wrote, err)
	}
	if rec, err := s.Get(ctx, "done"); err != nil || rec.Status != StatusSucceeded {
		t.Fatalf("record %+v, %v; want succeeded as it was", rec, err)
	}
}
