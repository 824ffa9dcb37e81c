package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	return noopWorkerOn(t, asynq.RedisClientOpt{Addr: addr}, host, conc)
}

// noopWorkerOn is noopWorker on a Redis connection option of the test's.
func noopWorkerOn(t *testing.T, opt asynq.RedisConnOpt, host string, conc int) *Worker {
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
		Redis: opt, S3: cl, Outputs: s3x.URL{Bucket: "outputs"},
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

// enqueuePool enqueues a small job with id on pool:cpu.
func enqueuePool(t *testing.T, cl *asynq.Client, id string) {
	t.Helper()
	req := job.Request{Model: "demo", Prompt: "p"}
	req.ApplyDefaults()
	task, opts, err := job.NewTask(id, req, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Enqueue(task, opts...); err != nil {
		t.Fatal(err)
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

	// Idle: every poll looks at all its (empty) queues in one script, one
	// LLEN each (host and pool, three priorities each).
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	calls := commandCalls(t, rdb)
	probes, scripts := calls["llen"]+calls["rpoplpush"], calls["evalsha"]+calls["eval"]
	if probes < 10 {
		t.Fatalf("only %d queue probes in an idle second (poll every 20ms): %v", probes, calls)
	}
	// Six probes per dequeue script; the other scripts (asynq's forwarder
	// and heartbeat) are few. One script per queue would give probes ≤
	// scripts.
	if float64(probes) < 3*float64(scripts) {
		t.Errorf("idle second: %d probes in %d scripts; want every queue tried in one script (%v)", probes, scripts, calls)
	}
}

// A job's final record write travels with asynq's completion of the task:
// both are EVALSHAs in one pipeline (asynq.OnSuccess). Outside a task's
// context finishDone writes at once.
func TestFinishRidesWithTheCompletion(t *testing.T) {
	srv := testenv.Redis(t).Addr
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv})
	defer rdb.Close()
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: srv})
	defer cl.Close()
	pipes := &pipeRecorder{}
	w := noopWorkerOn(t, hookedOpt{asynq.RedisClientOpt{Addr: srv}, pipes}, "w1", 2)

	// Without a task's context: written at once.
	rec := &job.Record{ID: "direct", Status: job.StatusRunning}
	w.finishDone(ctx, rec, job.StatusSucceeded, time.Now(), "")
	if got, err := w.store.Get(ctx, "direct"); err != nil || got.Status != job.StatusSucceeded {
		t.Fatalf("record written outside a task: %+v, %v", got, err)
	}

	runWorker(t, w)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv})
	defer insp.Close()
	const n = 20
	// Three rounds: on a fresh Redis, whose first EVALSHAs get NOSCRIPT and
	// are run again on their own; on a Redis that has the scripts; and
	// right after SCRIPT FLUSH, which is the first round again.
	for round := range 3 {
		if round == 2 {
			if err := rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		pipes.reset()
		for i := range n {
			enqueuePool(t, cl, fmt.Sprintf("job-%d-%d", round, i))
		}
		deadline := time.Now().Add(20 * time.Second)
		for i := range n {
			waitSucceeded(t, w.store, fmt.Sprintf("job-%d-%d", round, i), deadline)
		}
		// The tasks are completed too: nothing left active in asynq.
		for {
			info, err := insp.GetQueueInfo("pool:cpu")
			if err != nil {
				t.Fatal(err)
			}
			if info.Active == 0 && info.Pending == 0 && info.Processed >= (round+1)*n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: queue %+v", round, info)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Each job's record write went in one pipeline with its completion,
		// record first; without the scripts in Redis, the first pipelines got
		// NOSCRIPT and the jobs still completed.
		ok, noscript := pipes.finishThenDone()
		if round == 1 && (ok != n || noscript != 0) {
			t.Errorf("%d pipelines carried a job's finish then its completion (%d got NOSCRIPT), want %d and 0", ok, noscript, n)
		}
		if round != 1 && (ok+noscript != n || noscript == 0) {
			t.Errorf("round %d, no scripts loaded: %d finish-then-completion pipelines ran, %d got NOSCRIPT; want %d in all, some NOSCRIPT", round, ok, noscript, n)
		}
	}
}

// hookedOpt makes asynq's (and the worker's) Redis clients with a hook.
type hookedOpt struct {
	asynq.RedisClientOpt
	hook redis.Hook
}

func (o hookedOpt) MakeRedisClient() any {
	c := o.RedisClientOpt.MakeRedisClient().(*redis.Client)
	c.AddHook(o.hook)
	return c
}

// pipeRecorder records the pipelines a client sends: each command's name,
// first key and error.
type pipeRecorder struct {
	mu    sync.Mutex
	pipes [][]pipedCmd
}

type pipedCmd struct {
	name, key string
	err       error
}

func (p *pipeRecorder) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipeRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipeRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		var got []pipedCmd
		for _, c := range cmds {
			pc := pipedCmd{name: c.Name(), err: c.Err()}
			if args := c.Args(); len(args) > 3 {
				pc.key = fmt.Sprint(args[3]) // EVALSHA sha numkeys key...
			}
			got = append(got, pc)
		}
		p.mu.Lock()
		p.pipes = append(p.pipes, got)
		p.mu.Unlock()
		return err
	}
}

func (p *pipeRecorder) reset() {
	p.mu.Lock()
	p.pipes = nil
	p.mu.Unlock()
}

// finishThenDone counts the pipelines that were a job record's finish
// script then an asynq completion script, both EVALSHA: those that ran
// (ok) and those that got NOSCRIPT.
func (p *pipeRecorder) finishThenDone() (ok, noscript int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cmds := range p.pipes {
		if len(cmds) != 2 || cmds[0].name != "evalsha" || cmds[1].name != "evalsha" ||
			!strings.HasPrefix(cmds[0].key, "genfleet:job:") || !strings.HasSuffix(cmds[1].key, ":active") {
			continue
		}
		switch {
		case cmds[0].err == nil && cmds[1].err == nil:
			ok++
		case redis.HasErrorPrefix(cmds[0].err, "NOSCRIPT") || redis.HasErrorPrefix(cmds[1].err, "NOSCRIPT"):
			noscript++
		}
	}
	return ok, noscript
}

// The worker's dequeue decides whether it may run a job and takes the
// job's run claim in the same script (job.ClaimHook through the replaced
// asynq's DequeueHook): the handler finds the decision, and for "ok" the
// claim already held by the owner it names.
func TestClaimTakenAtDequeue(t *testing.T) {
	srv := testenv.Redis(t).Addr
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv})
	defer rdb.Close()
	store := job.NewStore(rdb)
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: srv})
	defer cl.Close()

	for _, id := range []string{"free", "cancelled", "ended", "held"} {
		enqueuePool(t, cl, id)
	}
	if err := store.RequestCancel(ctx, "cancelled"); err != nil {
		t.Fatal(err)
	}
	if err := store.Finish(ctx, &job.Record{ID: "ended", Status: job.StatusSucceeded}, ""); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "genfleet:claim:held", "someone-else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}

	type seen struct {
		result, claim string
		ok            bool
	}
	var mu sync.Mutex
	got := map[string]seen{}
	var n atomic.Int64
	srvA := asynq.NewServer(asynq.RedisClientOpt{Addr: srv}, asynq.Config{
		Concurrency: 1, Queues: map[string]int{job.PoolQueue("cpu"): 1}, TaskCheckInterval: 20 * time.Millisecond,
		LogLevel: asynq.FatalLevel,
		DequeueHook: &asynq.DequeueHook{
			Script: job.ClaimHook,
			Args:   func() []string { return job.ClaimHookArgs("me:"+strconv.FormatInt(n.Add(1), 10), time.Minute) },
		},
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(job.TaskType, func(ctx context.Context, _ *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		res, ok := asynq.GetDequeueHookResult(ctx)
		claim, _ := rdb.Get(ctx, "genfleet:claim:"+id).Result()
		mu.Lock()
		got[id] = seen{res, claim, ok}
		mu.Unlock()
		return nil
	})
	if err := srvA.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srvA.Shutdown()
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		done := len(got)
		mu.Unlock()
		if done == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handled %d of 4 tasks: %v", done, got)
		}
		time.Sleep(10 * time.Millisecond)
	}

	free := got["free"]
	res, owner, err := job.ParseClaimHook(free.result)
	if !free.ok || err != nil || res != job.StartOK || !strings.HasPrefix(owner, "me:") || free.claim != owner {
		t.Errorf("free job: hook result %q (ran %v, %v), claim held by %q; want ok with the claim held by its owner", free.result, free.ok, err, free.claim)
	}
	for id, want := range map[string]job.StartResult{"cancelled": job.StartCancelled, "ended": job.StartDone, "held": job.StartClaimed} {
		s := got[id]
		res, _, err := job.ParseClaimHook(s.result)
		if !s.ok || err != nil || res != want {
			t.Errorf("%s job: hook result %q (ran %v, %v), want %s", id, s.result, s.ok, err, want)
		}
		if id != "held" && s.claim != "" {
			t.Errorf("%s job: claim taken by %q, want none", id, s.claim)
		}
	}
	if got["held"].claim != "someone-else" {
		t.Errorf("held job: claim now %q, want it still someone else's", got["held"].claim)
	}
}

// A job claimed at dequeue gets its running record only after
// runningRecordDelay, and never once stopped: a short job has only its
// final record, and a late write never lands over the final one.
func TestRunningRecordWrittenLater(t *testing.T) {
	srv := testenv.Redis(t).Addr
	ctx := context.Background()
	w := noopWorker(t, srv, "w1", 1)
	running := func(id string) *job.Record {
		return &job.Record{ID: id, Status: job.StatusRunning, Worker: &job.WorkerInfo{Host: "w1"}, Timings: map[string]float64{"queue_wait": 1}}
	}

	// Long enough: the record appears, a copy of the record as it was.
	rec := running("long")
	stop := w.markRunningLater(ctx, rec)
	rec.Timings["generate"] = 5 // the job goes on; the write must not race with it
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := w.store.Get(ctx, "long")
		if err == nil {
			if got.Status != job.StatusRunning || got.Worker == nil || got.Worker.Host != "w1" {
				t.Errorf("running record %+v", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no running record 5 s after the delay: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()

	// Stopped first: nothing is written.
	stop = w.markRunningLater(ctx, running("short"))
	stop()
	time.Sleep(2 * runningRecordDelay)
	if got, err := w.store.Get(ctx, "short"); err == nil {
		t.Errorf("stopped job got a running record: %+v", got)
	}

	// A record that is already final is not overwritten.
	if err := w.store.Finish(ctx, &job.Record{ID: "ended", Status: job.StatusSucceeded}, ""); err != nil {
		t.Fatal(err)
	}
	if err := w.store.MarkRunning(ctx, running("ended")); err != nil {
		t.Fatal(err)
	}
	if got, err := w.store.Get(ctx, "ended"); err != nil || got.Status != job.StatusSucceeded {
		t.Errorf("final record after a late running write: %+v, %v", got, err)
	}
}
