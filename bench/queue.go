package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/backends/cpu"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/worker"
)

// QueueOptions is one run of Queue.
type QueueOptions struct {
	// Redis is the Redis both sides run on; nil starts a redis-server for
	// the run.
	Redis asynq.RedisConnOpt
	// S3 holds the registry the API checks models against (the no-op
	// jobs never fetch); an empty Endpoint starts versitygw for the run.
	S3 s3x.Config
	// Jobs no-op jobs per side and round, Rounds rounds (each raw asynq,
	// then genfleet); at least 1 of each. The figures are medians over
	// rounds.
	Jobs, Rounds int
	// Concurrency is the worker concurrency, Clients the concurrent
	// submitters, of both sides.
	Concurrency, Clients int
	// IdleJobs jobs are submitted one at a time to an idle fleet for the
	// start-latency figures, cycling through the priorities (the worker
	// listens to its host's and its pool's queues of all three).
	IdleJobs int
	// BatchJobs jobs per round go through POST /v1/jobs:batch, in batches
	// of BatchSize (default 1000), against as many tasks through raw
	// asynq's Client.Enqueue; 0 skips the batch phase.
	BatchJobs, BatchSize int
	// Client is how the submitters talk to the API: QueueClientLean (one
	// keep-alive HTTP/1.1 connection each, like wrk; the default for "")
	// or QueueClientNetHTTP (Go's http.Client).
	Client string
	// CPUProfile, when not nil, receives a CPU profile of the first
	// round's genfleet phase (API, worker and submitters).
	CPUProfile io.Writer
}

// The submitters' clients of QueueOptions.Client.
const (
	QueueClientLean    = "lean"
	QueueClientNetHTTP = "net/http"
)

// QueueResult is what Queue measured. Rates are in jobs per second, first
// submit to last completion; CPU per job is in µs, medians over rounds:
// this process's (the side's submitters, API or client and worker, plus
// the other side's idle polling) and Redis's (INFO cpu, user + sys).
type QueueResult struct {
	Jobs        int `json:"jobs"`
	Rounds      int `json:"rounds"`
	Concurrency int `json:"concurrency"`
	Clients     int `json:"clients"`

	GenfleetJobsPerS float64 `json:"genfleet_jobs_per_s"`
	AsynqJobsPerS    float64 `json:"asynq_jobs_per_s"`
	// Ratio is the median of the rounds' genfleet/asynq rates.
	Ratio                 float64   `json:"ratio"`
	RoundRatios           []float64 `json:"round_ratios"`
	RoundGenfleetJobsPerS []float64 `json:"round_genfleet_jobs_per_s"`
	RoundAsynqJobsPerS    []float64 `json:"round_asynq_jobs_per_s"`

	// The batch phase: jobs per second into the queues through
	// POST /v1/jobs:batch against raw asynq's Client.Enqueue loop, the
	// same number of jobs from as many goroutines, enqueue only (the
	// queues are paused meanwhile; every job is run after). BatchRatio is
	// the median of the rounds' ratios; absent without a batch phase.
	BatchJobs               int       `json:"batch_jobs,omitempty"`
	BatchSize               int       `json:"batch_size,omitempty"`
	BatchJobsPerS           float64   `json:"batch_jobs_per_s,omitempty"`
	AsynqEnqueueJobsPerS    float64   `json:"asynq_enqueue_jobs_per_s,omitempty"`
	BatchRatio              float64   `json:"batch_ratio,omitempty"`
	RoundBatchRatios        []float64 `json:"round_batch_ratios,omitempty"`
	RoundBatchJobsPerS      []float64 `json:"round_batch_jobs_per_s,omitempty"`
	RoundAsynqEnqueueJobsPS []float64 `json:"round_asynq_enqueue_jobs_per_s,omitempty"`

	// Idle start latency: submit → the handler's start (the record's
	// started_at), one job at a time on an idle fleet, the jobs cycling
	// through the priorities high, normal, low.
	IdleStartP50MS float64 `json:"idle_start_p50_ms"`
	IdleStartP99MS float64 `json:"idle_start_p99_ms"`
	// PollIntervalMS is how often an idle worker polls its queues.
	PollIntervalMS int    `json:"poll_interval_ms"`
	Client         string `json:"client"`

	AsynqCPUUsPerJob    float64 `json:"asynq_cpu_us_per_job"`
	GenfleetCPUUsPerJob float64 `json:"genfleet_cpu_us_per_job"`
	// The Redis figures are absent where Redis does not report its CPU (a
	// managed Redis may not).
	AsynqRedisCPUUsPerJob    float64 `json:"asynq_redis_cpu_us_per_job,omitempty"`
	GenfleetRedisCPUUsPerJob float64 `json:"genfleet_redis_cpu_us_per_job,omitempty"`

	// TargetsMet: at least half raw asynq's rate, an idle start within
	// 50 ms at the median, and, with a batch phase, the batch endpoint at
	// least as fast as raw asynq's enqueue loop.
	TargetsMet bool `json:"targets_met"`
}

// Queue measures no-op jobs through the scheduler's HTTP API and a genfleet
// worker in no-op mode (the whole genfleet path except the model, backend
// and upload) against raw asynq with a no-op handler on the same Redis at
// the same concurrency (the anchor), round by round; then the start
// latency of jobs submitted one at a time to the idle fleet.
func Queue(ctx context.Context, o QueueOptions, progress io.Writer) (*QueueResult, error) {
	progress = orDiscard(progress)
	if o.Jobs < 1 || o.Rounds < 1 {
		return nil, fmt.Errorf("--jobs %d, --rounds %d: want at least 1 of each", o.Jobs, o.Rounds)
	}
	if o.Client == "" {
		o.Client = QueueClientLean
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.BatchSize > scheduler.MaxBatchJobs {
		return nil, fmt.Errorf("--batch-size %d: the API takes at most %d jobs per batch", o.BatchSize, scheduler.MaxBatchJobs)
	}
	if o.Client != QueueClientLean && o.Client != QueueClientNetHTTP {
		return nil, fmt.Errorf("--client %q: want lean or net/http", o.Client)
	}
	redisOpt, stop, err := startRedis(o.Redis)
	if err != nil {
		return nil, err
	}
	defer stop()
	rdb := redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()

	// Both sides run for the whole bench, on the same Redis, so each side's
	// rounds pay for the other's idle polling alike.
	raw, err := startRawAsynq(redisOpt, o.Concurrency)
	if err != nil {
		return nil, err
	}
	defer raw.stop()
	fleet, err := startNoopFleet(ctx, o.S3, redisOpt, o.Concurrency)
	if err != nil {
		return nil, err
	}
	defer fleet.stop()
	if o.Client == QueueClientNetHTTP {
		fleet.stdClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	}
	body := []byte(`{"model":"demo","prompt":"noop","width":64,"height":64,"steps":1}`)

	var asynqRates, fleetRates, ratios []float64
	var enqRates, batchRates, batchRatios []float64
	var asynqCPU, fleetCPU cpuPerJob
	insp := asynq.NewInspectorFromRedisClient(rdb)
	for r := range o.Rounds {
		// Anchor: raw asynq, no-op handler, same Redis, same concurrency.
		fmt.Fprintf(progress, "round %d/%d: raw asynq, %d no-op tasks, concurrency %d…\n", r+1, o.Rounds, o.Jobs, o.Concurrency)
		m := startCPU(ctx, rdb)
		ar, err := raw.rate(ctx, o.Jobs, o.Clients)
		if err != nil {
			return nil, err
		}
		asynqCPU.add(ctx, rdb, m, o.Jobs)
		// genfleet: the scheduler's HTTP API and a genfleet worker in no-op mode.
		fmt.Fprintf(progress, "round %d/%d: genfleet, %d no-op jobs through the API, concurrency %d…\n", r+1, o.Rounds, o.Jobs, o.Concurrency)
		if r == 0 && o.CPUProfile != nil {
			if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
				return nil, err
			}
		}
		m = startCPU(ctx, rdb)
		gr, err := fleet.rate(ctx, body, o.Jobs, o.Clients)
		if r == 0 && o.CPUProfile != nil {
			pprof.StopCPUProfile()
		}
		if err != nil {
			return nil, err
		}
		fleetCPU.add(ctx, rdb, m, o.Jobs)
		fmt.Fprintf(progress, "round %d/%d: %.0f vs %.0f jobs/s, ratio %.3f\n", r+1, o.Rounds, gr, ar, gr/ar)
		asynqRates, fleetRates, ratios = append(asynqRates, ar), append(fleetRates, gr), append(ratios, gr/ar)
		if o.BatchJobs > 0 {
			fmt.Fprintf(progress, "round %d/%d: %d jobs into the queue, raw asynq's Enqueue loop vs POST /v1/jobs:batch of %d…\n", r+1, o.Rounds, o.BatchJobs, o.BatchSize)
			er, br, err := batchRound(ctx, raw, fleet, insp, o.BatchJobs, o.BatchSize, o.Clients, r%2 == 1)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(progress, "round %d/%d: batch %.0f vs enqueue loop %.0f jobs/s, ratio %.3f\n", r+1, o.Rounds, br, er, br/er)
			enqRates, batchRates, batchRatios = append(enqRates, er), append(batchRates, br), append(batchRatios, br/er)
		}
	}

	raw.stop() // the anchor is done; the fleet alone is measured from here
	// Idle start latency: one job at a time on an idle fleet, submit →
	// handler start (the record's started_at), with a pause between jobs
	// that varies so submits land anywhere in the workers' poll cycle.
	fmt.Fprintf(progress, "idle start latency: %d jobs one at a time…\n", o.IdleJobs)
	var lat []float64
	for i := range o.IdleJobs {
		time.Sleep(time.Duration(50+(i*37)%100) * time.Millisecond)
		base := int(fleet.done())
		t0 := time.Now()
		prio := job.Priorities[i%len(job.Priorities)]
		id, err := fleet.submit(ctx, priorityBody(body, prio))
		if err != nil {
			return nil, err
		}
		if err := fleet.waitDone(ctx, base+1, time.Minute); err != nil {
			return nil, err
		}
		rec, err := finalRecord(ctx, job.NewStore(rdb), id)
		if err != nil {
			return nil, err
		}
		lat = append(lat, float64(rec.StartedAt.Sub(t0).Microseconds())/1000)
	}
	sort.Float64s(lat)
	ratio := median(ratios)
	res := &QueueResult{
		Jobs: o.Jobs, Rounds: o.Rounds, Concurrency: o.Concurrency, Clients: o.Clients,
		GenfleetJobsPerS:      round1(median(fleetRates)),
		AsynqJobsPerS:         round1(median(asynqRates)),
		Ratio:                 round3(ratio),
		RoundRatios:           roundAll(ratios, round3),
		RoundGenfleetJobsPerS: roundAll(fleetRates, round1),
		RoundAsynqJobsPerS:    roundAll(asynqRates, round1),
		IdleStartP50MS:        round1(percentile(lat, 0.50)),
		IdleStartP99MS:        round1(percentile(lat, 0.99)),
		PollIntervalMS:        20,
		Client:                o.Client,
		TargetsMet:            ratio >= 0.5 && percentile(lat, 0.5) <= 50,
	}
	if o.BatchJobs > 0 {
		res.BatchJobs, res.BatchSize = o.BatchJobs, o.BatchSize
		res.BatchJobsPerS, res.AsynqEnqueueJobsPerS = round1(median(batchRates)), round1(median(enqRates))
		res.BatchRatio = round3(median(batchRatios))
		res.RoundBatchRatios = roundAll(batchRatios, round3)
		res.RoundBatchJobsPerS, res.RoundAsynqEnqueueJobsPS = roundAll(batchRates, round1), roundAll(enqRates, round1)
		res.TargetsMet = res.TargetsMet && median(batchRatios) >= 1.0
	}
	res.AsynqCPUUsPerJob, res.AsynqRedisCPUUsPerJob = asynqCPU.medians()
	res.GenfleetCPUUsPerJob, res.GenfleetRedisCPUUsPerJob = fleetCPU.medians()
	return res, nil
}

// cpuMark is the CPU this process and Redis had used at the start of a
// phase.
type cpuMark struct {
	proc, redis time.Duration
	redisOK     bool
}

func startCPU(ctx context.Context, rdb redis.UniversalClient) cpuMark {
	r, ok := redisCPU(ctx, rdb)
	return cpuMark{proc: processCPU(), redis: r, redisOK: ok}
}

// cpuPerJob collects, per round, the CPU one side used per job: this
// process's (getrusage: the side's submitters, API or client and worker,
// plus the other side's idle polling) and Redis's (INFO cpu, user + sys).
type cpuPerJob struct {
	proc, redis []float64
}

func (c *cpuPerJob) add(ctx context.Context, rdb redis.UniversalClient, m cpuMark, jobs int) {
	c.proc = append(c.proc, float64((processCPU()-m.proc).Microseconds())/float64(jobs))
	if r, ok := redisCPU(ctx, rdb); ok && m.redisOK {
		c.redis = append(c.redis, float64((r-m.redis).Microseconds())/float64(jobs))
	}
}

// medians returns the side's CPU per job in µs, this process's and
// Redis's, medians over rounds; Redis's is 0 unless INFO could be read in
// every round.
func (c *cpuPerJob) medians() (proc, redis float64) {
	if len(c.redis) == len(c.proc) {
		redis = round1(median(c.redis))
	}
	return round1(median(c.proc)), redis
}

// processCPU is the user + system CPU this process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is the user + system CPU the Redis server has used, from INFO
// cpu; false where the server does not say (a managed Redis may not).
func redisCPU(ctx context.Context, rdb redis.UniversalClient) (time.Duration, bool) {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, false
	}
	var total float64
	found := 0
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (k != "used_cpu_user" && k != "used_cpu_sys") {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, false
		}
		total += f
		found++
	}
	return time.Duration(total * float64(time.Second)), found == 2
}

// rawAsynq is the anchor: a plain asynq server with a no-op handler and a
// plain asynq client, on the queue bench:raw.
type rawAsynq struct {
	opt  asynq.RedisConnOpt
	srv  *asynq.Server
	cl   *asynq.Client
	done atomic.Int64
	// goal and all: rate waits for done to reach goal, then all is closed.
	mu   sync.Mutex
	goal int64
	all  chan struct{}

	stopOnce sync.Once
}

func startRawAsynq(opt asynq.RedisConnOpt, conc int) (*rawAsynq, error) {
	r := &rawAsynq{opt: opt}
	r.srv = asynq.NewServer(opt, asynq.Config{
		Concurrency: conc, Queues: map[string]int{rawQueue: 1},
		TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.ErrorLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("bench:noop", func(context.Context, *asynq.Task) error {
		n := r.done.Add(1)
		r.mu.Lock()
		if n == r.goal && r.all != nil {
			close(r.all)
			r.all = nil
		}
		r.mu.Unlock()
		return nil
	})
	if err := r.srv.Start(mux); err != nil {
		return nil, err
	}
	r.cl = asynq.NewClient(opt)
	return r, nil
}

func (r *rawAsynq) stop() {
	r.stopOnce.Do(func() {
		r.srv.Shutdown()
		r.cl.Close()
	})
}

// rate enqueues n no-op tasks from clients goroutines and returns tasks
// per second, first enqueue to last completion.
func (r *rawAsynq) rate(ctx context.Context, n, clients int) (float64, error) {
	all := make(chan struct{})
	r.mu.Lock()
	base := r.done.Load()
	r.goal, r.all = base+int64(n), all
	r.mu.Unlock()
	start := time.Now()
	if err := r.enqueue(ctx, n, clients); err != nil {
		return 0, err
	}
	select {
	case <-all:
	case <-time.After(10 * time.Minute):
		return 0, fmt.Errorf("raw asynq: only %d of %d tasks done after 10 minutes", r.done.Load()-base, n)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// rawQueue is the queue of raw asynq's no-op tasks.
const rawQueue = "bench:raw"

// enqueue enqueues n no-op tasks into rawQueue from clients goroutines
// through asynq's Client.Enqueue, and returns the first error.
func (r *rawAsynq) enqueue(ctx context.Context, n, clients int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if _, err := r.cl.EnqueueContext(ctx, asynq.NewTask("bench:noop", []byte(strconv.FormatInt(i, 10))), asynq.Queue(rawQueue)); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	err, _ := firstErr.Load().(error)
	return err
}

// noopFleet is a scheduler and one worker, in this process, running no-op
// jobs: the whole genfleet path except the model, backend and upload.
type noopFleet struct {
	addr  string // the API's host:port
	conns chan *apiConn
	// stdClient, when set, submits through net/http's client instead.
	stdClient *http.Client
	done      func() float64
	stopAll   func()
}

func startNoopFleet(ctx context.Context, s3cfg s3x.Config, opt asynq.RedisConnOpt, conc int) (fl *noopFleet, err error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Whatever is started is stopped again if a later step fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	dir, err := os.MkdirTemp("", "genfleet-bench-queue-")
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	// The no-op path never touches S3 or the cache, but the API checks
	// models against a registry: give it a real one (--s3-endpoint, or a
	// versitygw started for the run).
	s3cl, _, stopS3, err := startS3(ctx, s3cfg, "", "genfleet-models", "genfleet-outputs")
	if err != nil {
		return nil, err
	}
	undo = append(undo, stopS3)
	src := modelcache.NewS3Source(s3cl)
	reg := &modelcache.Registry{Src: src, Root: s3x.URL{Bucket: "genfleet-models"}}
	model := dir + "/demo.safetensors"
	if err := writeModel(model, 64<<10, 1); err != nil {
		return nil, err
	}
	if _, err := reg.Push(ctx, model, s3x.URL{Bucket: "genfleet-models", Key: "blobs/demo.safetensors"}, "demo", nil); err != nil {
		return nil, err
	}
	cache, err := modelcache.Open(dir+"/cache", src)
	if err != nil {
		return nil, err
	}
	sched, addr, stopAPI, err := serveAPI(scheduler.Config{Redis: opt, S3: s3cl, Registry: reg, Pool: "cpu", Logger: log})
	if err != nil {
		return nil, err
	}
	undo = append(undo, stopAPI)
	be, err := cpu.New()
	if err != nil {
		return nil, err
	}
	promReg := prometheus.NewRegistry()
	w, err := worker.New(worker.Config{Redis: opt, S3: s3cl, Outputs: s3x.URL{Bucket: "genfleet-outputs"},
		Registry: reg, Cache: cache, Backend: be, HostID: "bench", Concurrency: conc, Noop: true,
		Metrics: promReg, Logger: log})
	if err != nil {
		return nil, err
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	wdone := make(chan struct{})
	go func() { defer close(wdone); _ = w.Run(wctx) }()
	reapCtx, stopReaper := context.WithCancel(context.Background())
	reaperDone := make(chan struct{})
	go func() { defer close(reaperDone); sched.RunReaper(reapCtx) }()
	return &noopFleet{
		addr:  addr,
		conns: make(chan *apiConn, 64),
		done:  func() float64 { return counterValue(promReg, "genfleet_worker_jobs_total", "succeeded") },
		stopAll: func() {
			stopWorker()
			<-wdone
			w.Close()
			stopReaper()
			<-reaperDone
			stopAPI()
			stopS3()
			os.RemoveAll(dir)
		},
	}, nil
}

func (f *noopFleet) stop() {
	f.stopAll()
	for {
		select {
		case c := <-f.conns:
			c.close()
		default:
			return
		}
	}
}

// rate submits n no-op jobs from clients goroutines and returns jobs per
// second, first submit to the worker's last completion.
func (f *noopFleet) rate(ctx context.Context, body []byte, n, clients int) (float64, error) {
	base := int(f.done())
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if _, err := f.submit(ctx, body); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, err
	}
	if err := f.waitDone(ctx, base+n, 10*time.Minute); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func (f *noopFleet) submit(ctx context.Context, body []byte) (string, error) {
	if f.stdClient != nil {
		return f.submitStd(ctx, body)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	c, err := f.conn()
	if err != nil {
		return "", err
	}
	id, err := c.post(body)
	if err != nil {
		c.close()
		return "", err
	}
	f.conns <- c
	return id, nil
}

// submitStd is submit through net/http's client (--client net/http).
func (f *noopFleet) submitStd(ctx context.Context, body []byte) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+f.addr+"/v1/jobs", bytes.NewReader(body))
	resp, err := f.stdClient.Do(req)
	if err != nil {
		return "", err
	}
	return acceptedID(resp)
}

// conn returns an idle keep-alive connection to the API, or a new one.
func (f *noopFleet) conn() (*apiConn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	default:
	}
	nc, err := net.Dial("tcp", f.addr)
	if err != nil {
		return nil, err
	}
	return &apiConn{nc: nc, br: bufio.NewReader(nc), host: f.addr}, nil
}

// apiConn is the submitters' HTTP/1.1 client: one keep-alive connection,
// a request written in one write, the response read in place. A load
// generator, like wrk or hey, so that the bench spends its CPU on the API
// rather than on net/http's client, whose transport hands every request
// to two goroutines of its own.
type apiConn struct {
	nc   net.Conn
	br   *bufio.Reader
	host string
	buf  []byte
}

func (c *apiConn) close() { c.nc.Close() }

// do sends body as a POST to path and reads the response's head; the
// caller reads and closes its body.
func (c *apiConn) do(path string, body []byte) (*http.Response, error) {
	c.buf = append(c.buf[:0], "POST "...)
	c.buf = append(c.buf, path...)
	c.buf = append(c.buf, " HTTP/1.1\r\nHost: "...)
	c.buf = append(c.buf, c.host...)
	c.buf = append(c.buf, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	c.buf = strconv.AppendInt(c.buf, int64(len(body)), 10)
	c.buf = append(c.buf, "\r\n\r\n"...)
	c.buf = append(c.buf, body...)
	if _, err := c.nc.Write(c.buf); err != nil {
		return nil, err
	}
	return http.ReadResponse(c.br, nil)
}

// post sends body as POST /v1/jobs and returns the accepted job's id.
func (c *apiConn) post(body []byte) (string, error) {
	resp, err := c.do("/v1/jobs", body)
	if err != nil {
		return "", err
	}
	id, err := acceptedID(resp)
	if err == nil && resp.Close {
		err = fmt.Errorf("POST /v1/jobs: the server closed the connection")
	}
	return id, err
}

// waitDone waits until the worker has finished n jobs in all. It reads the
// worker's counter every 5 ms: a Gather every millisecond cost about 2% of
// the process's CPU, charged to the genfleet side only (the asynq side's
// handler counts in an atomic).
func (f *noopFleet) waitDone(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for f.done() < float64(n) {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %.0f of %d jobs done after %v", f.done(), n, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// finalRecord returns job id's record once it is final. The worker counts
// a job done as it hands the final write to the task's completion, which
// lands a moment later.
func finalRecord(ctx context.Context, store *job.Store, id string) (*job.Record, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := store.Get(ctx, id)
		switch {
		case err == nil && rec.Status.Terminal():
			return rec, nil
		case err != nil && !errors.Is(err, job.ErrNoRecord):
			return nil, err
		case time.Now().After(deadline):
			return nil, fmt.Errorf("job %s: no final record 10 s after the worker finished it", id)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// counterValue reads one labelled counter from a registry.
func counterValue(reg *prometheus.Registry, name, label string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// priorityBody is a POST /v1/jobs body with "priority" p added (none for
// normal).
func priorityBody(body []byte, p job.Priority) []byte {
	if p == job.PriorityNormal {
		return body
	}
	return append(bytes.TrimSuffix(bytes.Clone(body), []byte("}")), `,"priority":"`+string(p)+`"}`...)
}
