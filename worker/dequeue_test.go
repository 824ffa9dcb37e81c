package worker

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	_ "github.com/genfleet/genfleet/backends/cpu" // registers "cpu"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// noopWorker is a worker in Noop mode on the Redis at addr: it needs no S3
// server, model or backend work.
func noopWorker(t *testing.T, addr, host string, conc int) *Worker {
	t.Helper()
	cl := s3.New(s3.Options{Region: "us-east-1"})
	src := modelcache.NewS3Source(cl)
	cache, err := modelcache.Open(t.TempDir(), src)
	if err != nil {
		t.Fatal(err)
	}
	be, err := backends.New("cpu")
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{
		Redis: asynq.RedisClientOpt{Addr: addr}, S3: cl, Outputs: s3x.URL{Bucket: "outputs"},
		Registry: &modelcache.Registry{Src: src, Root: s3x.URL{Bucket: "models"}}, Cache: cache, Backend: be,
		HostID: host, Concurrency: conc, Noop: true, HeartbeatInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// runWorker runs w until the test ends.
func runWorker(t *testing.T, w *Worker) {
	t.Helper()
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	t.Cleanup(func() { stop(); <-done })
}

// waitSucceeded waits until job id's record says succeeded and returns it.
func waitSucceeded(t *testing.T, store *job.Store, id string, deadline time.Time) *job.Record {
	t.Helper()
	for {
		rec, err := store.Get(context.Background(), id)
		if err == nil && rec.Status == job.StatusSucceeded {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not done: %+v %v", id, rec, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func commandCalls(t *testing.T, rdb *redis.Client) map[string]int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, l := range strings.Split(info, "\r\n") {
		rest, ok := strings.CutPrefix(l, "cmdstat_")
		if !ok {
			continue
		}
		name, rest, _ := strings.Cut(rest, ":calls=")
		n, _, _ := strings.Cut(rest, ",")
		calls[name], _ = strconv.Atoi(n)
	}
	return calls
}

// The worker takes its host queue strictly before its pool queue, and an
// idle poll of both queues is one script (one round trip), not one per
// queue: the replaced asynq's multi-queue dequeue.
func TestDequeueHostFirstOneScriptPerPoll(t *testing.T) {
	srv := testenv.Redis(t).Addr
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv})
	defer rdb.Close()
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: srv})
	defer cl.Close()

	req := job.Request{Model: "demo", Prompt: "p"}
	req.ApplyDefaults()
	enqueue := func(id, queue string) {
		task, opts, err := job.NewRoutedTask(id, req, "cpu", &job.Route{Queue: queue, Pool: "pool:cpu"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Enqueue(task, opts...); err != nil {
			t.Fatal(err)
		}
	}
	// The pool job is older; the host job still goes first.
	enqueue("pool-job", "pool:cpu")
	enqueue("host-job", "host:w1")

	w := noopWorker(t, srv, "w1", 1)
	runWorker(t, w)

	store := job.NewStore(rdb)
	recs := map[string]*job.Record{}
	deadline := time.Now().Add(20 * time.Second)
	for _, id := range []string{"pool-job", "host-job"} {
		recs[id] = waitSucceeded(t, store, id, deadline)
	}
	if !recs["host-job"].StartedAt.Before(recs["pool-job"].StartedAt) {
		t.Errorf("host job started at %v, pool job at %v: want the host queue first",
			recs["host-job"].StartedAt, recs["pool-job"].StartedAt)
	}

	// Idle: every poll pops from both (empty) queues in one script.
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	calls := commandCalls(t, rdb)
	pops, scripts := calls["rpoplpush"], calls["evalsha"]+calls["eval"]
	if pops < 10 {
		t.Fatalf("only %d queue pops in an idle second (poll every 20ms): %v", pops, calls)
	}
	// Two pops per dequeue script; the other scripts (asynq's forwarder and
	// heartbeat) are few. One script per queue would give pops ≤ scripts.
	if float64(pops) < 1.5*float64(scripts) {
		t.Errorf("idle second: %d pops in %d scripts; want two queues popped per script (%v)", pops, scripts, calls)
	}
}

// A job's final record write travels with asynq's completion of the task:
// both are EVALs in one pipeline (asynq.OnSuccess). Outside a task's
// context finishDone writes at once.
func TestFinishRidesWithTheCompletion(t *testing.T) {
	srv := testenv.Redis(t).Addr
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv})
	defer rdb.Close()
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: srv})
	defer cl.Close()
	w := noopWorker(t, srv, "w1", 2)

	// Without a task's context: written at once.
	rec := &job.Record{ID: "direct", Status: job.StatusRunning}
	w.finishDone(ctx, rec, job.StatusSucceeded, time.Now(), "")
	if got, err := w.store.Get(ctx, "direct"); err != nil || got.Status != job.StatusSucceeded {
		t.Fatalf("record written outside a task: %+v, %v", got, err)
	}

	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	const n = 20
	req := job.Request{Model: "demo", Prompt: "p"}
	req.ApplyDefaults()
	for i := range n {
		task, opts, err := job.NewTask("job-"+strconv.Itoa(i), req, "cpu")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Enqueue(task, opts...); err != nil {
			t.Fatal(err)
		}
	}
	runWorker(t, w)
	deadline := time.Now().Add(20 * time.Second)
	for i := range n {
		waitSucceeded(t, w.store, "job-"+strconv.Itoa(i), deadline)
	}
	// The tasks are completed too: nothing left active in asynq.
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv})
	defer insp.Close()
	for {
		info, err := insp.GetQueueInfo("pool:cpu")
		if err != nil {
			t.Fatal(err)
		}
		if info.Active == 0 && info.Pending == 0 && info.Processed >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue: %+v", info)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Finish and completion went as EVALs in a pipeline (the other scripts
	// run as EVALSHA): two per job.
	if evals := commandCalls(t, rdb)["eval"]; evals < 2*n {
		t.Errorf("%d EVALs for %d jobs: the record write did not ride with the completion", evals, n)
	}
}
