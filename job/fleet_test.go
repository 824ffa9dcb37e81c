package job

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
)

// Heartbeats lists the live processes from the heartbeat index: a process
// that left or whose heartbeat expired is gone, long-expired index entries
// are dropped, and the keyspace (which holds every job record) is never
// scanned.
func TestHeartbeatsFromTheIndex(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	defer rdb.Close()
	f := NewFleet(rdb)
	// Plenty of other keys, as a busy fleet's job records.
	pipe := rdb.Pipeline()
	for i := range 2000 {
		pipe.HSet(ctx, recordKey("job-"+strconv.Itoa(i)), "run", "{}")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	beat := func(host string, pid int, ttl time.Duration) {
		t.Helper()
		if err := f.Beat(ctx, &Heartbeat{Host: host, PID: pid, At: now}, ttl); err != nil {
			t.Fatal(err)
		}
	}
	beat("h1", 1, time.Minute)
	beat("h1", 2, time.Minute)
	beat("h2", 3, time.Minute)
	beat("h3", 4, 50*time.Millisecond) // expires
	if err := f.Leave(ctx, "h2", 3); err != nil {
		t.Fatal(err)
	}
	// An index entry long past its expiry, for a key that is gone.
	if err := rdb.ZAdd(ctx, heartbeatIndex, redis.Z{Score: float64(now.Add(-time.Hour).UnixMilli()), Member: heartbeatKey("old", 9)}).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	hbs, err := f.Heartbeats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, hb := range hbs {
		got = append(got, hb.Host+":"+strconv.Itoa(hb.PID))
	}
	slices.Sort(got)
	if want := []string{"h1:1", "h1:2"}; !slices.Equal(got, want) {
		t.Errorf("heartbeats %v, want %v", got, want)
	}
	idx, err := rdb.ZRange(ctx, heartbeatIndex, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(idx, heartbeatKey("old", 9)) || slices.Contains(idx, heartbeatKey("h2", 3)) {
		t.Errorf("index still lists a long-expired or departed process: %v", idx)
	}
	stats, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stats, "cmdstat_scan:") {
		t.Errorf("listing the fleet scanned the keyspace:\n%s", stats)
	}
}
