package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

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

func flagGiven(f flags, name string) bool {
	given := false
	f.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			given = true
		}
	})
	return given
}

func benchQueue(ctx context.Context, args []string, stderr io.Writer) (map[string]any, error) {
	f := newFlags("bench queue", stderr)
	c := addCommon(f)
	jobs := f.Int("jobs", 5000, "no-op jobs per side")
	conc := f.Int("concurrency", 4, "worker concurrency (both sides)")
	clients := f.Int("clients", 8, "concurrent submitters (both sides)")
	idle := f.Int("idle-jobs", 50, "jobs submitted one at a time to an idle fleet for the start-latency figures")
	cpuProfile := f.String("cpuprofile", "", "write a CPU profile of the genfleet throughput phase (API, worker and submitters) to this file")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	redisOpt, stop, err := benchRedis(c, flagGiven(f, "redis"))
	if err != nil {
		return nil, err
	}
	defer stop()
	rdb := redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()

	// Anchor: raw asynq, no-op handler, same Redis, same concurrency.
	fmt.Fprintf(stderr, "raw asynq: %d no-op tasks, concurrency %d…\n", *jobs, *conc)
	asynqRate, err := rawAsynqRate(ctx, redisOpt, *jobs, *conc, *clients)
	if err != nil {
		return nil, err
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return nil, err
	}

	// genfleet: the scheduler's HTTP API and a genfleet worker in no-op mode.
	fmt.Fprintf(stderr, "genfleet: %d no-op jobs through the API, concurrency %d…\n", *jobs, *conc)
	fleet, err := startNoopFleet(ctx, c, redisOpt, *conc)
	if err != nil {
		return nil, err
	}
	defer fleet.stop()
	body := []byte(`{"model":"demo","prompt":"noop","width":64,"height":64,"steps":1}`)
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			pf.Close()
			return nil, err
		}
		defer func() { pprof.StopCPUProfile(); pf.Close() }()
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, *clients)
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*jobs) {
				if _, err := fleet.submit(ctx, body); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	if err := fleet.waitDone(ctx, *jobs, 10*time.Minute); err != nil {
		return nil, err
	}
	genfleetRate := float64(*jobs) / time.Since(start).Seconds()
	if *cpuProfile != "" {
		pprof.StopCPUProfile() // the throughput phase only; stopping twice is harmless
	}

	// Idle start latency: one job at a time on an idle fleet, submit →
	// handler start (the record's started_at), with a random pause between
	// jobs so submits land anywhere in the workers' poll cycle.
	fmt.Fprintf(stderr, "idle start latency: %d jobs one at a time…\n", *idle)
	var lat []float64
	for i := range *idle {
		time.Sleep(time.Duration(50+(i*37)%100) * time.Millisecond)
		t0 := time.Now()
		id, err := fleet.submit(ctx, body)
		if err != nil {
			return nil, err
		}
		if err := fleet.waitDone(ctx, *jobs+i+1, time.Minute); err != nil {
			return nil, err
		}
		rec, err := job.NewStore(rdb).Get(ctx, id)
		if err != nil {
			return nil, err
		}
		lat = append(lat, float64(rec.StartedAt.Sub(t0).Microseconds())/1000)
	}
	sort.Float64s(lat)
	res := map[string]any{
		"jobs": *jobs, "concurrency": *conc, "clients": *clients,
		"genfleet_jobs_per_s": round1(genfleetRate),
		"asynq_jobs_per_s":    round1(asynqRate),
		"ratio":               round3(genfleetRate / asynqRate),
		"idle_start_p50_ms":   round1(percentile(lat, 0.50)),
		"idle_start_p99_ms":   round1(percentile(lat, 0.99)),
		"poll_interval_ms":    20,
	}
	res["targets_met"] = genfleetRate/asynqRate >= 0.5 && percentile(lat, 0.5) <= 50
	return res, nil
}

// rawAsynqRate enqueues n no-op tasks from clients goroutines and processes
// them with a plain asynq server; it returns tasks per second, first
// enqueue to last completion.
func rawAsynqRate(ctx context.Context, opt asynq.RedisConnOpt, n, conc, clients int) (float64, error) {
	var done atomic.Int64
	all := make(chan struct{})
	srv := asynq.NewServer(opt, asynq.Config{
		Concurrency: conc, Queues: map[string]int{"bench:raw": 1},
		TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.ErrorLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("bench:noop", func(context.Context, *asynq.Task) error {
		if done.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})
	if err := srv.Start(mux); err != nil {
		return 0, err
	}
	defer srv.Shutdown()
	cl := asynq.NewClient(opt)
	defer cl.Close()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if _, err := cl.EnqueueContext(ctx, asynq.NewTask("bench:noop", []byte(fmt.Sprint(i))), asynq.Queue("bench:raw")); err != nil {
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
		return 0, fmt.Errorf("raw asynq: only %d of %d tasks done after 10 minutes", done.Load(), n)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// noopFleet is a scheduler and one worker, in this process, running no-op
// jobs: the whole genfleet path except the model, backend and upload.
type noopFleet struct {
	url     string
	client  *http.Client
	done    func() float64
	stopAll func()
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
		url:    "http://" + ln.Addr().String(),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		done:   func() float64 { return counterValue(promReg, "genfleet_worker_jobs_total", "succeeded") },
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

func (f *noopFleet) stop() { f.stopAll() }

func (f *noopFleet) submit(ctx context.Context, body []byte) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/jobs", bytes.NewReader(body))
	resp, err := f.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("POST /v1/jobs: %s: %s", resp.Status, out.Error)
	}
	return out.ID, nil
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
