// Package worker runs generation jobs: an asynq server whose handler
// resolves the job's model, acquires it from the host's model cache (which
// fetches it from S3 when missing and maps it read-only), runs the backend
// on the mapping, uploads the PNG to the outputs bucket and records the
// result in Redis for the scheduler's API.
//
// Shutdown order (Run, when its context ends): stop the cache scrubber
// (background work that holds no job); stop pulling new tasks;
// give in-flight jobs ShutdownTimeout to finish; asynq then pushes any
// still running back to their queue (hand back), after which the worker
// cancels their contexts and waits for their handlers to record the hand
// back before Run returns.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/uploads"
)

// Config configures a Worker. Fields without a stated default are required.
type Config struct {
	// Redis is where the queues are.
	Redis asynq.RedisConnOpt
	// S3 is the client for the outputs bucket.
	S3 *s3.Client
	// Outputs is the bucket and key prefix for images,
	// e.g. s3://genfleet-outputs/outputs/.
	Outputs s3x.URL
	// Uploads is where the scheduler stores uploaded input images (init
	// images, masks), e.g. s3://genfleet-outputs/uploads/; empty: jobs can
	// name input images by s3:// ref only. MaxUploadBytes limits one
	// image. Default 16 MiB.
	Uploads        s3x.URL
	MaxUploadBytes int64
	// Registry resolves model refs; Cache holds the blobs.
	Registry *modelcache.Registry
	Cache    *modelcache.Cache
	// Backend runs the model.
	Backend backends.Backend
	// HostID names this host's queues (host:<HostID>, and with a
	// priority, host:<HostID>:high and :low). Default: the hostname.
	HostID string
	// PriorityWeights weigh the priorities against each other when the
	// worker picks its next job (see queueOrder). Default
	// DefaultPriorityWeights (high 6, normal 3, low 1).
	PriorityWeights map[job.Priority]int
	// Concurrency is how many jobs run at once in this process. Default 1.
	Concurrency int
	// ShutdownTimeout is how long in-flight jobs may run after shutdown
	// starts before they are handed back to the queue. Default 30s.
	ShutdownTimeout time.Duration
	// CancelPoll is how often a running job checks for a cancel request.
	// Default 250ms.
	CancelPoll time.Duration
	// RetryBase and RetryMax shape the backoff before retry n (1-based) of
	// a job whose attempt failed with a transient error:
	// min(RetryBase·2^(n-1), RetryMax), ±25% jitter so that jobs failed by one
	// outage do not all come back at once. Defaults 2s and 5m.
	RetryBase, RetryMax time.Duration
	// HeartbeatInterval is how often the process publishes its state; the
	// heartbeat expires after three intervals. Default 2s.
	HeartbeatInterval time.Duration
	// PollInterval is how often an idle worker checks its queues for new
	// jobs (asynq's TaskCheckInterval). It bounds the start latency of a job
	// submitted to an idle fleet. Default 20ms.
	PollInterval time.Duration
	// RecoverInterval is how often this process looks for jobs whose
	// worker died (their asynq lease expired) and queues them again.
	// Default 5s.
	RecoverInterval time.Duration
	// LeaseGrace is how long after its lease expired such a job is
	// recovered: the margin for clock skew between hosts. Default 5s. A job
	// of a killed worker runs again about 30s (asynq's lease) + LeaseGrace
	// + up to RecoverInterval later; recovering one too early is harmless,
	// the run claim keeps it from running twice at once.
	LeaseGrace time.Duration
	// Scrub configures the background scrubber of Cache that Run starts
	// (see modelcache.Scrubber); a zero Rate or Interval, the zero value,
	// runs none.
	Scrub modelcache.ScrubConfig
	// Advertise, when set, says what this host's blob server offers its
	// peers (package peer); each heartbeat carries it. Default none.
	Advertise func() *job.PeerState
	// Noop runs each job's bookkeeping (claim, records, cancel watch,
	// metrics) but skips the model, the backend and the upload: for
	// benchmarking genfleet's queueing overhead against plain asynq.
	Noop bool
	// Metrics, when set, receives the worker's collectors.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Worker runs jobs from the host and pool queues.
type Worker struct {
	cfg     Config
	rdb     redis.UniversalClient
	store   *job.Store
	log     *slog.Logger
	metrics *metrics
	pid     int
	// ownerPrefix starts every run claim owner of this process (newOwner).
	ownerPrefix string

	// baseCtx is the parent of every handler's context; cancelling it with
	// errShutdown stops handlers that outlived the shutdown timeout.
	baseCtx    context.Context
	baseCancel context.CancelCauseFunc
	// running counts handlers still executing, so Run can wait for the ones
	// it cancelled to write their records.
	running  sync.WaitGroup
	inFlight atomic.Int64
	// stopping is set when Run begins to shut down (see handedBack).
	stopping atomic.Bool
	// beatNow asks the heartbeat loop for an immediate beat.
	beatNow chan struct{}
	models  models
	fleet   *job.Fleet
	order   *queueOrder
	uploads *uploads.Store
}

var (
	// errWrongEngine: the job's model needs an engine this worker lacks.
	errWrongEngine = errors.New("model engine not run by this worker")
	errShutdown    = errors.New("worker shutting down")
	errCancelled   = errors.New("job cancelled by request")
	errClaimed     = errors.New("job is running in another worker")
)

// New checks cfg and returns a Worker.
func New(cfg Config) (*Worker, error) {
	if cfg.Redis == nil || cfg.S3 == nil || cfg.Registry == nil || cfg.Cache == nil || cfg.Backend == nil {
		return nil, errors.New("worker: Redis, S3, Registry, Cache and Backend are required")
	}
	if cfg.Outputs.Bucket == "" {
		return nil, errors.New("worker: Outputs bucket is required")
	}
	if cfg.HostID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("worker: no host id given and hostname unknown: %w", err)
		}
		cfg.HostID = h
	}
	if base, p := job.SplitQueue(cfg.HostID); p != job.PriorityNormal {
		return nil, fmt.Errorf("worker: host id %q ends in %q, which would make its queue look like the %s-priority queue of host %q; choose another --host-id", cfg.HostID, ":"+string(p), p, base)
	}
	if cfg.PriorityWeights == nil {
		cfg.PriorityWeights = DefaultPriorityWeights
	}
	if err := checkWeights(cfg.PriorityWeights); err != nil {
		return nil, err
	}
	defaults.Positive(&cfg.Concurrency, 1)
	defaults.Positive(&cfg.ShutdownTimeout, 30*time.Second)
	defaults.Positive(&cfg.CancelPoll, 250*time.Millisecond)
	defaults.Zero(&cfg.Logger, slog.Default())
	defaults.Positive(&cfg.HeartbeatInterval, 2*time.Second)
	defaults.Positive(&cfg.PollInterval, 20*time.Millisecond)
	defaults.Positive(&cfg.RecoverInterval, 5*time.Second)
	defaults.Positive(&cfg.LeaseGrace, 5*time.Second)
	defaults.Positive(&cfg.RetryBase, 2*time.Second)
	defaults.Positive(&cfg.RetryMax, 5*time.Minute)
	rdb, ok := cfg.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("worker: unsupported Redis connection option")
	}
	w := &Worker{
		cfg:     cfg,
		rdb:     rdb,
		store:   job.NewStore(rdb),
		fleet:   job.NewFleet(rdb),
		beatNow: make(chan struct{}, 1),
		log:     cfg.Logger.With("host", cfg.HostID, "pid", os.Getpid(), "backend", cfg.Backend.Name()),
		metrics: newMetrics(cfg.Metrics),
		pid:     os.Getpid(),
		uploads: &uploads.Store{S3: cfg.S3, Root: cfg.Uploads, MaxBytes: cfg.MaxUploadBytes},
	}
	w.ownerPrefix = fmt.Sprintf("%s:%d:", cfg.HostID, w.pid)
	w.order = newQueueOrder(job.HostQueue(cfg.HostID), job.PoolQueue(cfg.Backend.DeviceClass()), cfg.PriorityWeights)
	w.baseCtx, w.baseCancel = context.WithCancelCause(context.Background())
	return w, nil
}

// Queues returns the queues this worker listens to: its host's and its
// pool's, of every priority. It takes the host's strictly before the
// pool's, and weighs the priorities within each (see queueOrder).
func (w *Worker) Queues() map[string]int { return w.order.queues() }

// Run serves jobs until ctx ends, then shuts down in the order the package
// comment gives. It returns nil after a clean shutdown.
func (w *Worker) Run(ctx context.Context) error {
	srv := asynq.NewServer(w.cfg.Redis, asynq.Config{
		Concurrency:              w.cfg.Concurrency,
		Queues:                   w.Queues(),
		TaskCheckInterval:        w.cfg.PollInterval,
		DelayedTaskCheckInterval: time.Second,
		RecovererInterval:        w.cfg.RecoverInterval,
		LeaseExpiryGrace:         w.cfg.LeaseGrace,
		LeaseExpiredArchived:     w.leaseExpiredArchived,
		QueueOrder:               w.order.next,
		ShutdownTimeout:          w.cfg.ShutdownTimeout,
		BaseContext:              func() context.Context { return w.baseCtx },
		// Invalid jobs return SkipRetry and are archived at once; other
		// errors retry with asynq's default exponential backoff.
		IsFailure: func(err error) bool { return !errors.Is(err, errShutdown) && !errors.Is(err, errClaimed) },
		RetryDelayFunc: func(n int, err error, _ *asynq.Task) time.Duration {
			if errors.Is(err, errClaimed) {
				return time.Second
			}
			return retryDelay(n, w.cfg.RetryBase, w.cfg.RetryMax)
		},
		Logger:   asynqLogger{w.log},
		LogLevel: asynq.WarnLevel,
		// Each dequeue also decides whether this worker may run the job and
		// takes its run claim, in the same round trip.
		DequeueHook: &asynq.DequeueHook{
			Script: job.ClaimHook,
			Args:   func() []string { return job.ClaimHookArgs(w.newOwner(), claimTTL) },
		},
	})
	if err := w.checkHostID(ctx); err != nil {
		return err
	}
	mux := asynq.NewServeMux()
	mux.Handle(job.TaskType, w)
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("worker: start: %w", err)
	}
	hbCtx, stopHB := context.WithCancel(context.Background())
	hbDone := make(chan struct{})
	hb := &heartbeat{w: w, fleet: w.fleet, interval: w.cfg.HeartbeatInterval, started: time.Now()}
	go func() { defer close(hbDone); hb.run(hbCtx) }()
	scrub := w.cfg.Cache.NewScrubber(w.cfg.Scrub)
	scrub.Start()
	w.log.Info("worker started", "queues", w.Queues(), "concurrency", w.cfg.Concurrency)
	<-ctx.Done()
	w.log.Info("worker shutting down", "timeout", w.cfg.ShutdownTimeout)
	scrub.Shutdown() // background work first: it holds no job
	w.stopping.Store(true)
	srv.Shutdown()
	// Heartbeats stop after the last job was finished or handed back, so the
	// scheduler never sees a silent host that still holds work.
	defer func() { stopHB(); <-hbDone }()
	w.baseCancel(errShutdown)
	done := make(chan struct{})
	go func() { w.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		w.log.Warn("handlers still running 10s after cancellation; exiting anyway")
	}
	if c, ok := w.cfg.Backend.(io.Closer); ok {
		if err := c.Close(); err != nil {
			w.log.Warn("close backend", "err", err)
		}
	}
	w.log.Info("worker stopped")
	return nil
}

// checkHostID refuses a host id that live workers of another device class
// use: processes that share a host id share its queue, host:<id>, and a job
// routed there for one backend's model must not reach a worker that cannot
// run it. (Workers of different backends on one machine take different
// host ids; they may share the cache directory.)
func (w *Worker) checkHostID(ctx context.Context) error {
	hbs, err := w.fleet.Heartbeats(ctx)
	if err != nil {
		w.log.Warn("cannot check the host id against the fleet", "err", err)
		return nil
	}
	for _, hb := range hbs {
		if hb.Host == w.cfg.HostID && hb.PID != w.pid && hb.DeviceClass != w.cfg.Backend.DeviceClass() {
			return fmt.Errorf("worker: host id %q is in use by a worker of device class %q (pid %d, backend %s); "+
				"processes with one host id share the queue %s, so they must run the same kind of backend: give this %s worker its own --host-id",
				w.cfg.HostID, hb.DeviceClass, hb.PID, hb.Backend, job.HostQueue(w.cfg.HostID), w.cfg.Backend.DeviceClass())
		}
	}
	return nil
}

// Close releases the worker's Redis connection.
func (w *Worker) Close() error { return w.rdb.Close() }

// ProcessTask runs one job. It implements asynq.Handler.
func (w *Worker) ProcessTask(ctx context.Context, t *asynq.Task) error {
	id, _ := asynq.GetTaskID(ctx)
	queue, _ := asynq.GetQueueName(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	log := w.log.With("job", id, "queue", queue, "attempt", retried+1)
	started := time.Now()
	w.running.Add(1)
	defer w.running.Done()
	w.metrics.inFlight.Inc()
	defer w.metrics.inFlight.Dec()
	w.inFlight.Add(1)
	defer w.inFlight.Add(-1)

	// Record writes must land even when ctx is being cancelled.
	wctx := context.WithoutCancel(ctx)
	rec := &job.Record{
		ID: id, Queue: queue, Attempt: retried + 1, CreatedAt: started.UTC(),
		Worker: &job.WorkerInfo{Host: w.cfg.HostID, PID: w.pid, Backend: w.cfg.Backend.Name()},
	}
	// The job's run claim: taken by the dequeue itself (job.ClaimHook), or
	// here when the dequeue could not run the hook.
	hookRes, claimedAtDequeue := asynq.GetDequeueHookResult(ctx)
	var (
		start job.StartResult
		owner string
	)
	if claimedAtDequeue {
		var err error
		if start, owner, err = job.ParseClaimHook(hookRes); err != nil {
			return err // not from this worker's hook: retry
		}
	}
	if err := job.ValidID(id); err != nil {
		return w.rejectID(wctx, id, owner, err)
	}

	// A payload that does not decode fails the job, but only once the
	// start decision says the job is this worker's: a duplicate of an
	// ended job must not overwrite its record.
	p, decodeErr := job.DecodePayload(t.Payload())
	if decodeErr == nil {
		rec.Model = p.Request.Model
		rec.Request = &p.Request
		rec.Route = p.Route
		if !p.SubmittedAt.IsZero() {
			rec.CreatedAt = p.SubmittedAt
		}
	}
	rec.Status = job.StatusRunning
	rec.StartedAt = started.UTC()
	rec.Timings = map[string]float64{}
	if decodeErr == nil && !p.SubmittedAt.IsZero() {
		rec.Timings["queue_wait"] = ms(started.Sub(p.SubmittedAt))
	}
	var err error
	if !claimedAtDequeue {
		// owner is unique per attempt: it names this claim, no other.
		owner = w.newOwner()
		if start, err = w.store.Start(wctx, rec, owner, claimTTL); err != nil {
			return err // Redis fault: retry
		}
	}
	switch start {
	case job.StartCancelled:
		w.finish(wctx, rec, job.StatusCancelled, "", started, "")
		return nil
	case job.StartDone:
		w.skipDuplicate(wctx, id, t.Payload(), p, log)
		return nil
	case job.StartClaimed:
		return errClaimed
	}
	if decodeErr != nil {
		return w.failPermanently(wctx, rec, decodeErr, permanentReason(decodeErr), started, owner, log)
	}
	w.notifyStarted(wctx, rec)
	// A claim taken at dequeue wrote no record: the running record follows
	// unless the job ends first (until then the API shows it running from
	// asynq's task state).
	stopMark := func() {}
	if claimedAtDequeue {
		stopMark = w.markRunningLater(wctx, rec)
	}

	jctx, stop := w.watch(ctx, id, owner)
	defer stop()
	var out *job.Output
	if w.cfg.Noop {
		out, err = &job.Output{}, nil
	} else {
		out, err = w.run(jctx, rec, &p.Request, log)
	}
	stopMark() // before any final write, so the running record never lands after it
	switch {
	case err == nil:
		rec.Result = out
		w.finishDone(wctx, rec, job.StatusSucceeded, started, owner)
		log.Info("job succeeded", "ms", rec.Timings["total"], "key", out.Key)
		return nil
	case errors.Is(context.Cause(jctx), errCancelled):
		w.finishDone(wctx, rec, job.StatusCancelled, started, owner)
		log.Info("job cancelled")
		return nil
	case errors.Is(context.Cause(jctx), errShutdown) || w.handedBack(ctx):
		// Handed back: asynq has requeued the task; another worker runs it.
		rec.Status, rec.Error = job.StatusQueued, "worker shut down; job handed back to the queue"
		w.finish(wctx, rec, job.StatusQueued, rec.Error, started, owner)
		return fmt.Errorf("%w: %w", errShutdown, err)
	case permanentReason(err) != "":
		return w.failPermanently(wctx, rec, err, permanentReason(err), started, owner, log)
	case retried >= maxRetry:
		w.finish(wctx, rec, job.StatusFailed, fmt.Sprintf("failed after %d attempts: %v", retried+1, err), started, owner)
		log.Warn("job failed, no retries left", "err", err)
		return err
	default:
		w.finish(wctx, rec, job.StatusQueued, fmt.Sprintf("attempt %d of %d failed, will retry: %v", retried+1, maxRetry+1, err), started, owner)
		w.metrics.jobs.WithLabelValues("retry").Inc()
		log.Warn("job attempt failed, will retry", "err", err)
		return err
	}
}

// newOwner returns a run claim owner, unique per attempt.
func (w *Worker) newOwner() string {
	return w.ownerPrefix + strconv.FormatInt(time.Now().UnixNano(), 10)
}

// runningRecordDelay is how long a job claimed at dequeue runs before its
// running record is written: a job that ends sooner has only its final one.
const runningRecordDelay = 100 * time.Millisecond

// markRunningLater writes a copy of rec, as it is now, as the job's running
// record after runningRecordDelay. The returned function cancels the write
// if it has not started and waits for it if it has.
func (w *Worker) markRunningLater(ctx context.Context, rec *job.Record) (stop func()) {
	snap := *rec
	snap.Timings = maps.Clone(rec.Timings)
	var mu sync.Mutex
	stopped := false
	t := time.AfterFunc(runningRecordDelay, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if err := w.store.MarkRunning(ctx, &snap); err != nil {
			w.log.Warn("write running record", "job", snap.ID, "err", err)
		}
	})
	return func() {
		t.Stop()
		mu.Lock()
		stopped = true
		mu.Unlock()
	}
}

// finish writes the record with status st and releases owner's claim.
// A terminal status is counted in the metrics; "queued" (a retry or a hand
// back) is not an outcome.
func (w *Worker) finish(ctx context.Context, rec *job.Record, st job.Status, msg string, started time.Time, owner string) {
	w.settle(rec, st, msg, started)
	w.write(ctx, rec, owner)
}

// write writes rec as the job's record, releasing owner's claim; a failure
// is logged (the job's outcome stands: asynq's task state still says it).
func (w *Worker) write(ctx context.Context, rec *job.Record, owner string) {
	if err := w.store.Finish(ctx, rec, owner); err != nil {
		w.log.Error("write job record", "job", rec.ID, "err", err)
	}
}

// finishDone is finish for a handler about to return nil: the record write
// goes to Redis in the same round trip as asynq's completion of the task
// (asynq.OnSuccess, a patch of genfleet's asynq copy: third_party/asynq),
// or at once when that cannot be arranged.
func (w *Worker) finishDone(ctx context.Context, rec *job.Record, st job.Status, started time.Time, owner string) {
	w.settle(rec, st, "", started)
	queued := asynq.OnSuccess(ctx, func(ctx context.Context, pipe redis.Pipeliner) func() {
		result := w.store.QueueFinish(ctx, pipe, rec, owner)
		return func() {
			if err := result(); err != nil {
				w.log.Error("write job record", "job", rec.ID, "err", err)
			}
		}
	})
	if !queued {
		w.write(ctx, rec, owner)
	}
}

// settle fills the record's final fields and counts a terminal outcome.
func (w *Worker) settle(rec *job.Record, st job.Status, msg string, started time.Time) {
	rec.Status, rec.Error = st, msg
	rec.Progress = nil
	if rec.Timings == nil {
		rec.Timings = map[string]float64{}
	}
	if st.Terminal() {
		rec.FinishedAt = time.Now().UTC()
		rec.Timings["total"] = ms(rec.FinishedAt.Sub(started))
		w.metrics.jobs.WithLabelValues(string(st)).Inc()
	}
}

// watch returns a context that is cancelled with errCancelled once a
// cancel is requested for id, and keeps owner's claim on the job alive.
// stop ends both. The checks run on timers, so a job shorter than the
// first check costs no goroutine; they never overlap, and stop waits for
// one that is running.
func (w *Worker) watch(ctx context.Context, id, owner string) (context.Context, func()) {
	jctx, cancel := context.WithCancelCause(ctx)
	var (
		mu            sync.Mutex
		stopped       bool
		poll, refresh *time.Timer
	)
	mu.Lock() // the timers' functions wait until both timers are set
	poll = time.AfterFunc(w.cfg.CancelPoll, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped || jctx.Err() != nil {
			return
		}
		if c, err := w.store.CancelRequested(jctx, id); err == nil && c {
			cancel(errCancelled)
			return
		}
		poll.Reset(w.cfg.CancelPoll)
	})
	refresh = time.AfterFunc(claimTTL/3, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped || jctx.Err() != nil {
			return
		}
		_ = w.store.RefreshClaim(jctx, id, owner, claimTTL)
		refresh.Reset(claimTTL / 3)
	})
	mu.Unlock()
	return jctx, func() {
		poll.Stop()
		refresh.Stop()
		mu.Lock()
		stopped = true
		mu.Unlock()
		cancel(nil)
	}
}

// claimTTL bounds how long a dead worker's claim blocks another copy of its
// job; a live worker refreshes its claim every claimTTL/3.
const claimTTL = 30 * time.Second

// retryDelay is min(base·2^(n-1), max) with ±25% jitter.
func retryDelay(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d*3/4 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// asynqLogger adapts slog to asynq's logger interface.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }
