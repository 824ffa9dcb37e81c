package job

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
)

// A job's stream on real Redis: started with the claim, progress with the
// step, requeued and completed with the record, in order; a retried final
// write publishes no second completed event; the stream is bounded and
// expires with the record; reads resume after a given id.
func TestEventStream(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	defer rdb.Close()
	s := NewStore(rdb)
	req := valid()
	rec := &Record{ID: "ev-1", Status: StatusRunning, Model: req.Model, Request: &req, Worker: &WorkerInfo{Host: "h<1>", PID: 7, Backend: "cpu"}}
	if r, err := s.Start(ctx, rec, "w1", time.Minute); err != nil || r != StartOK {
		t.Fatalf("Start: %v %v", r, err)
	}
	if err := s.SetProgress(ctx, "ev-1", 1, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(ctx, rec, EventModel, []byte(`{"source":"disk"}`)); err != nil {
		t.Fatal(err)
	}
	retry := *rec
	retry.Status, retry.Error = StatusQueued, `attempt 1 of 6 failed, will retry: "boom"`
	if err := s.Finish(ctx, &retry, "w1"); err != nil {
		t.Fatal(err)
	}
	done := *rec
	done.Status = StatusSucceeded
	for range 2 { // a retried completion repeats the write
		if err := s.Finish(ctx, &done, ""); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := s.ReadEvents(ctx, "ev-1", "", -1, 100)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
		var v map[string]any
		if err := json.Unmarshal(ev.Data, &v); err != nil {
			t.Fatalf("event %s data %s: %v", ev.Type, ev.Data, err)
		}
	}
	if got := strings.Join(types, " "); got != "started progress model requeued completed" {
		t.Fatalf("events %q", got)
	}
	var started struct {
		Status, Host, Backend string
		PID                   int
	}
	_ = json.Unmarshal(evs[0].Data, &started)
	if started.Host != "h<1>" || started.PID != 7 || started.Status != "running" {
		t.Fatalf("started event %s", evs[0].Data)
	}
	if string(evs[1].Data) != `{"step":1,"steps":4}` || !strings.Contains(string(evs[3].Data), `will retry: \"boom\"`) || string(evs[4].Data) != `{"status":"succeeded"}` {
		t.Fatalf("progress %s, requeued %s, completed %s", evs[1].Data, evs[3].Data, evs[4].Data)
	}
	// Resuming after an id gives what came after it, and nothing after the end.
	rest, err := s.ReadEvents(ctx, "ev-1", evs[2].ID, -1, 100)
	if err != nil || len(rest) != 2 || rest[0].ID != evs[3].ID {
		t.Fatalf("after %s: %+v %v", evs[2].ID, rest, err)
	}
	if rest, err := s.ReadEvents(ctx, "ev-1", evs[4].ID, 50*time.Millisecond, 100); err != nil || len(rest) != 0 {
		t.Fatalf("after the end: %+v %v", rest, err)
	}
	last, err := s.LastEvent(ctx, "ev-1")
	if err != nil || last.ID != evs[4].ID {
		t.Fatalf("last event %+v %v", last, err)
	}
	// EnsureCompleted finds the completed event there.
	if id, err := s.EnsureCompleted(ctx, &done); err != nil || id != evs[4].ID {
		t.Fatalf("EnsureCompleted on a complete stream: %q %v, want %s", id, err, evs[4].ID)
	}
	// ... and gives one to a job that ended without it.
	old := &Record{ID: "ev-old", Status: StatusFailed, Error: "worker died"}
	id, err := s.EnsureCompleted(ctx, old)
	if err != nil || !ValidEventID(id) {
		t.Fatalf("EnsureCompleted: %q %v", id, err)
	}
	if again, _ := s.EnsureCompleted(ctx, old); again != id {
		t.Fatalf("EnsureCompleted twice: %s then %s", id, again)
	}
	// The stream lives as long as the record, and stays bounded.
	if ttl, _ := rdb.PTTL(ctx, EventsKey("ev-1")).Result(); ttl < RecordTTL-time.Minute {
		t.Fatalf("stream TTL %v, want about %v", ttl, RecordTTL)
	}
	for i := range 3 * EventsMaxLen {
		if err := s.SetProgress(ctx, "ev-long", i, 3*EventsMaxLen); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := rdb.XLen(ctx, EventsKey("ev-long")).Result(); n > EventsMaxLen+200 || n < EventsMaxLen {
		t.Fatalf("a stream of %d progress events holds %d; want about %d", 3*EventsMaxLen, n, EventsMaxLen)
	}
}

// The started event of a job claimed at dequeue (which publishes nothing)
// comes with whichever of the attempt's writes is first, once: the
// running record, the first event, or, for a short job, the final record,
// and only from the worker that holds the claim. A new attempt has its own.
func TestStartedEventRidesOnTheFirstWrite(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	defer rdb.Close()
	s := NewStore(rdb)
	claim := func(id, owner string) {
		t.Helper()
		// What ClaimHook does in the dequeue script.
		script := redis.NewScript(claimFunc + `return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2])`)
		if r, err := script.Run(ctx, rdb, []string{recordKey(id), claimKey(id)}, owner, 60000).Text(); err != nil || r != "ok" {
			t.Fatalf("claim %s: %q %v", id, r, err)
		}
	}
	types := func(id string) string {
		t.Helper()
		evs, err := s.ReadEvents(ctx, id, "", -1, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			out = append(out, e.Type)
		}
		return strings.Join(out, " ")
	}
	w := &WorkerInfo{Host: "h1", PID: 3, Backend: "cpu"}
	run := func(id string, st Status) *Record { return &Record{ID: id, Status: st, Worker: w} }

	// Short: the final write publishes started, then completed.
	claim("short", "o1")
	if err := s.Finish(ctx, run("short", StatusSucceeded), "o1"); err != nil {
		t.Fatal(err)
	}
	// Longer: the running record publishes it; the model event and the
	// final write do not again.
	claim("long", "o2")
	if err := s.MarkRunning(ctx, run("long", StatusRunning)); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(ctx, run("long", StatusRunning), EventModel, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(ctx, run("long", StatusSucceeded), "o2"); err != nil {
		t.Fatal(err)
	}
	// A model event before the running record: started goes first.
	claim("fast-model", "o3")
	if err := s.Publish(ctx, run("fast-model", StatusRunning), EventModel, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkRunning(ctx, run("fast-model", StatusRunning)); err != nil {
		t.Fatal(err)
	}
	// Retried: each attempt has its started.
	claim("retried", "o4")
	if err := s.Finish(ctx, run("retried", StatusQueued), "o4"); err != nil {
		t.Fatal(err)
	}
	claim("retried", "o5")
	if err := s.Finish(ctx, run("retried", StatusSucceeded), "o5"); err != nil {
		t.Fatal(err)
	}
	// Cancelled in its queue by the scheduler (no claim): no started.
	if err := s.Finish(ctx, &Record{ID: "cancelled", Status: StatusCancelled}, ""); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{
		"short": "started completed", "long": "started model completed", "fast-model": "started model",
		"retried": "started requeued started completed", "cancelled": "completed",
	} {
		if got := types(id); got != want {
			t.Errorf("%s: events %q, want %q", id, got, want)
		}
	}
}

func TestValidEventID(t *testing.T) {
	for s, want := range map[string]bool{"1-0": true, "1764000000000-12": true, "": false, "-1": false, "1-": false, "1": false,
		"1-2-3": false, "a-1": false, "1 -1": false, "0-0": true, strings.Repeat("9", 20) + "-" + strings.Repeat("9", 20): true, strings.Repeat("9", 21) + "-" + strings.Repeat("9", 20): false} {
		if ValidEventID(s) != want {
			t.Errorf("ValidEventID(%q) = %v", s, !want)
		}
	}
}
