package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/worker"
)

// batchReply is the body of POST /v1/jobs:batch.
type batchReply struct {
	Jobs []struct {
		ID, Queue, Status, Error, Field string
		Duplicate                       bool
		Code                            int
	}
	Queued, Duplicates, Failed int
}

func (fl *fleet) batch(body string) (int, batchReply) {
	fl.t.Helper()
	code, b := fl.do("POST", "/v1/jobs:batch", body)
	var r batchReply
	if code == http.StatusOK {
		if err := json.Unmarshal(b, &r); err != nil {
			fl.t.Fatalf("batch reply %s: %v", b, err)
		}
	}
	return code, r
}

// startNoopWorker runs a genfleet worker in no-op mode in this process (the
// whole job path but the model, the backend and the upload) until the test
// ends.
func (fl *fleet) startNoopWorker(host string, conc int) {
	fl.t.Helper()
	opt := asynq.RedisClientOpt{Addr: fl.redis.Addr}
	cache, err := modelcache.Open(fl.t.TempDir(), fl.reg.Src)
	if err != nil {
		fl.t.Fatal(err)
	}
	be, err := backends.New("cpu")
	if err != nil {
		fl.t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: opt, S3: fl.s3.Client, Outputs: s3x.URL{Bucket: outputsBucket, Key: "outputs/"},
		Registry: fl.reg, Cache: cache, Backend: be, HostID: host, Concurrency: conc, Noop: true,
		HeartbeatInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fl.t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	fl.t.Cleanup(func() { stop(); <-done; w.Close() })
}

// A batch of 1,000 requests with a few bad ones: each good one is queued
// (one id each, in order), each bad one gets its own field error; the same
// batch sent again queues nothing and answers the same ids; a key reused
// with another request is refused for that item only; and a genfleet
// worker runs every queued task, so they are tasks as asynq stores them.
func TestBatchSubmitThousand(t *testing.T) {
	fl := newFleet(t, 1<<20, "cpu")
	const n = 1000
	items := make([]string, n)
	bad := map[int]string{} // item → the field its error names
	for i := range n {
		req := fmt.Sprintf(`{"model":"demo","prompt":"batch %d","seed":%d,"width":64,"height":64,"steps":1}`, i, i)
		switch {
		case i%97 == 5:
			req = fmt.Sprintf(`{"model":"demo","prompt":"batch %d","width":65}`, i)
			bad[i] = "width"
		case i == 500:
			req = `{"model":"no-such-model","prompt":"x"}`
			bad[i] = "model"
		case i == 501:
			req = `{"model":"demo","prompt":"x","colour":"red"}`
			bad[i] = "colour"
		case i == 502:
			req = `null`
			bad[i] = "request"
		case i%3 == 0:
			req = strings.Replace(req, `"steps":1`, `"steps":1,"priority":"high"`, 1)
		}
		items[i] = fmt.Sprintf(`{"request":%s,"idempotency_key":"bk-%d"}`, req, i)
	}
	body := `{"jobs":[` + strings.Join(items, ",") + `]}`

	code, first := fl.batch(body)
	if code != http.StatusOK || len(first.Jobs) != n {
		t.Fatalf("POST /v1/jobs:batch = %d, %d results", code, len(first.Jobs))
	}
	if first.Queued != n-len(bad) || first.Failed != len(bad) || first.Duplicates != 0 {
		t.Fatalf("queued %d, failed %d, duplicates %d; want %d, %d, 0", first.Queued, first.Failed, first.Duplicates, n-len(bad), len(bad))
	}
	ids := map[string]int{}
	for i, r := range first.Jobs {
		if f, isBad := bad[i]; isBad {
			if r.ID != "" || r.Field != f || r.Error == "" {
				t.Fatalf("item %d: %+v; want an error on field %q and no id", i, r, f)
			}
			continue
		}
		want := "pool:cpu"
		if i%3 == 0 {
			want = "pool:cpu:high"
		}
		if r.ID == "" || r.Status != "queued" || r.Queue != want || r.Error != "" {
			t.Fatalf("item %d: %+v; want queued on %s", i, r, want)
		}
		if _, seen := ids[r.ID]; seen {
			t.Fatalf("id %s given twice", r.ID)
		}
		ids[r.ID] = i
	}
	if r := first.Jobs[500]; r.Code != http.StatusNotFound {
		t.Fatalf("unknown model: code %d, want 404", r.Code)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer insp.Close()
	pending := func() int {
		total := 0
		for _, q := range job.PriorityQueues("pool:cpu") {
			if qi, err := insp.GetQueueInfo(q); err == nil {
				total += qi.Pending
			}
		}
		return total
	}
	if got := pending(); got != n-len(bad) {
		t.Fatalf("%d jobs pending after the batch, want %d", got, n-len(bad))
	}

	// The same batch again: the same ids, nothing new queued.
	code, again := fl.batch(body)
	if code != http.StatusOK || again.Duplicates != n-len(bad) || again.Queued != 0 || again.Failed != len(bad) {
		t.Fatalf("retried batch: %d, queued %d, duplicates %d, failed %d", code, again.Queued, again.Duplicates, again.Failed)
	}
	for i, r := range again.Jobs {
		if _, isBad := bad[i]; !isBad && (r.ID != first.Jobs[i].ID || !r.Duplicate) {
			t.Fatalf("retried item %d: %+v; want duplicate of %s", i, r, first.Jobs[i].ID)
		}
	}
	if got := pending(); got != n-len(bad) {
		t.Fatalf("%d jobs pending after the retry, want still %d", got, n-len(bad))
	}
	// A key reused for another request: that item alone is refused.
	code, mixed := fl.batch(`{"jobs":[{"request":{"model":"demo","prompt":"another"},"idempotency_key":"bk-1"},` +
		`{"request":{"model":"demo","prompt":"new","width":64,"height":64,"steps":1},"idempotency_key":"bk-new"}]}`)
	if code != http.StatusOK || mixed.Jobs[0].Field != "idempotency_key" || mixed.Jobs[0].Code != http.StatusUnprocessableEntity || mixed.Jobs[1].Status != "queued" {
		t.Fatalf("key reused in a batch: %d %+v", code, mixed.Jobs)
	}
	ids[mixed.Jobs[1].ID] = -1

	// Envelopes that are not a batch.
	for _, tc := range []struct{ body, field string }{
		{`{"jobs":[]}`, "jobs"},
		{`{"jobz":[]}`, "jobs"},
		{`[1]`, "jobs"},
		{`{"jobs":[` + strings.Repeat(`{"request":{"model":"demo","prompt":"x"}},`, n) + `{"request":{"model":"demo","prompt":"x"}}]}`, "jobs"},
	} {
		code, b := fl.do("POST", "/v1/jobs:batch", tc.body)
		var e struct{ Error, Field string }
		if code != http.StatusBadRequest || json.Unmarshal(b, &e) != nil || e.Field != tc.field {
			t.Fatalf("batch %.40s…: %d %s; want 400 on %s", tc.body, code, b, tc.field)
		}
	}

	// A genfleet worker runs every queued task.
	fl.startNoopWorker("batch-host", 8)
	rdb := redis.NewClient(&redis.Options{Addr: fl.redis.Addr})
	defer rdb.Close()
	store := job.NewStore(rdb)
	deadline := time.Now().Add(2 * time.Minute)
	for id, i := range ids {
		for {
			rec, err := store.Get(context.Background(), id)
			if err == nil && rec.Status == job.StatusSucceeded {
				if i >= 0 && (rec.Request.Prompt != fmt.Sprintf("batch %d", i) || rec.Route == nil) {
					t.Fatalf("job %s ran request %+v route %+v; want item %d's", id, rec.Request, rec.Route, i)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s (item %d) not done: %+v %v", id, i, rec, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
