package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/worker"
)

func init() {
	registerBench("queue", "no-op jobs through the API and genfleet workers vs raw asynq on the same Redis; idle start latency", benchQueue)
}

// benchRedis returns the Redis to benchmark on: --redis when given
// explicitly, else a redis-server started for the run.
func benchRedis(c *common, explicit bool) (asynq.RedisConnOpt, func(), error) {
	if explicit {
		opt, err := c.redisOpt()
		return opt, func() {}, err
	}
	dir, err := os.MkdirTemp("", "genfleet-bench-redis-")
	if err != nil {
		return nil, nil, err
	}
	srv, err := testenv.StartRedis(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("start redis-server for the benchmark (or pass --redis): %w", err)
	}
	return asynq.RedisClientOpt{Addr: srv.Addr}, func() { srv.Stop(); os.RemoveAll(dir) }, nil
}

func benchQueue(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := newFlags("bench queue", stderr)
	c := addCommon(f)
	jobs := f.Int("jobs", 10000, "no-op jobs per side and round")
	rounds := f.Int("rounds", 5, "rounds, each raw asynq then genfleet; the figures are medians over rounds")
	conc := f.Int("concurrency", 4, "worker concurrency (both sides)")
	clients := f.Int("clients", 8, "concurrent submitters (both sides)")
	idle := f.Int("idle-jobs", 50, "jobs submitted one at a time to an idle fleet for the start-latency figures")
	client := f.String("client", "lean", "how the submitters talk to the API: lean (one keep-alive HTTP/1.1 connection each, like wrk) or net/http (Go's http.Client)")
	cpuProfile := f.String("cpuprofile", "", "write a CPU profile of the first round's genfleet phase (API, worker and submitters) to this file")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	if *jobs < 1 || *rounds < 1 {
		return nil, fmt.Errorf("--jobs %d, --rounds %d: want at least 1 of each", *jobs, *rounds)
	}
	if *client != "lean" && *client != "net/http" {
		return nil, fmt.Errorf("--client %q: want lean or net/http", *client)
	}
	redisOpt, stop, err := benchRedis(c, flagGiven(f, "redis"))
	if err != nil {
		return nil, err
	}
	defer stop()
	rdb := redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()

	// Both sides run for the whole bench, on the same Redis, so each side's
	// rounds pay for the other's idle polling alike.
	raw, err := startRawAsynq(redisOpt, *conc)
	if err != nil {
		return nil, err
	}
	defer raw.stop()
	fleet, err := startNoopFleet(ctx, c, redisOpt, *conc)
	if err != nil {
		return nil, err
	}
	defer fleet.stop()
	if *client == "net/http" {
		fleet.stdClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	}
	body := []byte(`{"model":"demo","prompt":"noop","width":64,"height":64,"steps":1}`)

	var profile *os.File
	if *cpuProfile != "" {
		if profile, err = os.Create(*cpuProfile); err != nil {
			return nil, err
		}
		defer profile.Close()
	}
	var asynqRates, fleetRates, ratios []float64
	var asynqCPU, fleetCPU cpuPerJob
	for r := range *rounds {
		// Anchor: raw asynq, no-op handler, same Redis, same concurrency.
		fmt.Fprintf(stderr, "round %d/%d: raw asynq, %d no-op tasks, concurrency %d…\n", r+1, *rounds, *jobs, *conc)
		m := startCPU(ctx, rdb)
		ar, err := raw.rate(ctx, *jobs, *clients)
		if err != nil {
			return nil, err
		}
		asynqCPU.add(ctx, rdb, m, *jobs)
		// genfleet: the scheduler's HTTP API and a genfleet worker in no-op mode.
		fmt.Fprintf(stderr, "round %d/%d: genfleet, %d no-op jobs through the API, concurrency %d…\n", r+1, *rounds, *jobs, *conc)
		if r == 0 && profile != nil {
			if err := pprof.StartCPUProfile(profile); err != nil {
				return nil, err
			}
		}
		m = startCPU(ctx, rdb)
		gr, err := fleet.rate(ctx, body, *jobs, *clients)
		if r == 0 && profile != nil {
			pprof.StopCPUProfile()
		}
		if err != nil {
			return nil, err
		}
		fleetCPU.add(ctx, rdb, m, *jobs)
		fmt.Fprintf(stderr, "round %d/%d: %.0f vs %.0f jobs/s, ratio %.3f\n", r+1, *rounds, gr, ar, gr/ar)
		asynqRates, fleetRates, ratios = append(asynqRates, ar), append(fleetRates, gr), append(ratios, gr/ar)
	}

	raw.stop() // the anchor is done; the fleet alone is measured from here
	// Idle start latency: one job at a time on an idle fleet, submit →
	// handler start (the record's started_at), with a random pause between
	// jobs so submits land anywhere in the workers' poll cycle.
	fmt.Fprintf(stderr, "idle start latency: %d jobs one at a time…\n", *idle)
	var lat []float64
	for i := range *idle {
		time.Sleep(time.Duration(50+(i*37)%100) * time.Millisecond)
		base := int(fleet.done())
		t0 := time.Now()
		id, err := fleet.submit(ctx, body)
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
	res := map[string]any{
		"jobs": *jobs, "rounds": *rounds, "concurrency": *conc, "clients": *clients,
		"genfleet_jobs_per_s":       round1(median(fleetRates)),
		"asynq_jobs_per_s":          round1(median(asynqRates)),
		"ratio":                     round3(ratio),
		"round_ratios":              mapFloats(ratios, round3),
		"round_genfleet_jobs_per_s": mapFloats(fleetRates, round1),
		"round_asynq_jobs_per_s":    mapFloats(asynqRates, round1),
		"idle_start_p50_ms":         round1(percentile(lat, 0.50)),
		"idle_start_p99_ms":         round1(percentile(lat, 0.99)),
		"poll_interval_ms":          20,
		"client":                    *client,
	}
	asynqCPU.report(res, "asynq")
	fleetCPU.report(res, "genfleet")
	res["targets_met"] = ratio >= 0.5 && percentile(lat, 0.5) <= 50
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

// report adds side_cpu_us_per_job and side_redis_cpu_us_per_job (medians
// over rounds) to res; the Redis figure only where INFO could be read.
func (c *cpuPerJob) report(res map[string]any, side string) {
	res[side+"_cpu_us_per_job"] = round1(median(c.proc))
	if len(c.redis) == len(c.proc) {
		res[side+"_redis_cpu_us_per_job"] = round1(median(c.redis))
	}
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

func mapFloats(xs []float64, f func(float64) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
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
		Concurrency: conc, Queues: map[string]int{"bench:raw": 1},
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
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if _, err := r.cl.EnqueueContext(ctx, asynq.NewTask("bench:noop", []byte(fmt.Sprint(i))), asynq.Queue("bench:raw")); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
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

func startNoopFleet(ctx context.Context, c *common, opt asynq.RedisConnOpt, conc int) (fl *noopFleet, err error) {
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
	s3cl, stopS3, err := benchS3(ctx, c, "", "genfleet-models", "genfleet-outputs")
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
	// As `genfleet serve` runs it: models checked at submit, routing on.
	sched, err := scheduler.New(scheduler.Config{Redis: opt, S3: s3cl, Registry: reg, Pool: "cpu", Logger: log,
		CheckModels: true, Routing: scheduler.Policy{Enabled: true}})
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { sched.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: sched.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	undo = append(undo, func() { hs.Close() })
	be, err := backends.New("cpu")
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
		addr:  ln.Addr().String(),
		conns: make(chan *apiConn, 64),
		done:  func() float64 { return counterValue(promReg, "genfleet_worker_jobs_total", "succeeded") },
		stopAll: func() {
			stopWorker()
			<-wdone
			w.Close()
			stopReaper()
			<-reaperDone
			hs.Close()
			sched.Close()
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

// acceptedID reads and closes the body of a response to POST /v1/jobs and
// returns the accepted job's id, or the API's error.
func acceptedID(resp *http.Response) (string, error) {
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	var out struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return "", fmt.Errorf("POST /v1/jobs: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("POST /v1/jobs: %s: %s", resp.Status, out.Error)
	}
	return out.ID, nil
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

// post sends body as POST /v1/jobs and returns the accepted job's id.
func (c *apiConn) post(body []byte) (string, error) {
	c.buf = append(c.buf[:0], "POST /v1/jobs HTTP/1.1\r\nHost: "...)
	c.buf = append(c.buf, c.host...)
	c.buf = append(c.buf, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	c.buf = strconv.AppendInt(c.buf, int64(len(body)), 10)
	c.buf = append(c.buf, "\r\n\r\n"...)
	c.buf = append(c.buf, body...)
	if _, err := c.nc.Write(c.buf); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(c.br, nil)
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

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }
func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }
