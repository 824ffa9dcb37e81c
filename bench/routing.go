package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/internal/lineprefix"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// RoutingOptions is one run of Routing.
type RoutingOptions struct {
	// Redis is the Redis to run on; nil starts a redis-server for the run.
	// Routing flushes its database.
	Redis asynq.RedisConnOpt
	// WorkerRedis is the --redis the worker processes are given; "" is
	// Redis's address (it must then be a single server).
	WorkerRedis string
	// S3 is the server for the models and outputs; an empty Endpoint
	// starts versitygw for the run.
	S3 s3x.Config
	// ModelSize is the size of each of the two models, in bytes.
	ModelSize int64
	// Jobs alternate between the two models, InFlight at a time, each of
	// Steps steps; Jobs and InFlight at least 1.
	Jobs, InFlight, Steps int
	// Verbose prints each job to the progress writer: model, cache hit,
	// the host that ran it and the scheduler's reason for its route.
	Verbose bool
	// Executable is the genfleet binary run as the worker processes; ""
	// is this process's own executable.
	Executable string
}

// RoutingResult is what Routing measured, once without routing and once
// with: the model loads (jobs that found their model not in the cache)
// and the median job latency, submit to finished.
type RoutingResult struct {
	Jobs          int     `json:"jobs"`
	ModelBytes    int64   `json:"model_bytes"`
	InFlight      int     `json:"inflight"`
	UnroutedLoads int     `json:"unrouted_loads"`
	UnroutedP50MS float64 `json:"unrouted_p50_ms"`
	RoutedLoads   int     `json:"routed_loads"`
	RoutedP50MS   float64 `json:"routed_p50_ms"`
	// TargetsMet: routing needs at most a fifth of the loads.
	TargetsMet bool `json:"targets_met"`
}

// Routing runs the same job stream twice over two hosts (worker processes
// with separate caches whose budget fits one of the two models), first
// with the scheduler's model-aware routing off (plain asynq queueing, the
// anchor), then on, and counts the model loads of each.
func Routing(ctx context.Context, o RoutingOptions, progress io.Writer) (*RoutingResult, error) {
	progress = orDiscard(progress)
	if o.Jobs < 1 || o.InFlight < 1 {
		return nil, fmt.Errorf("--jobs %d, --inflight %d: want at least 1 of each", o.Jobs, o.InFlight)
	}
	self, err := executable(o.Executable)
	if err != nil {
		return nil, err
	}
	redisOpt, redisAddr, stopRedis, err := startWorkerRedis(o.Redis, o.WorkerRedis, "routing")
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	dir, err := os.MkdirTemp("", "genfleet-bench-routing-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cl, s3cfg, stopS3, err := startS3(ctx, o.S3, dir, "genfleet-models", "genfleet-outputs")
	if err != nil {
		return nil, err
	}
	defer stopS3()
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: "genfleet-models"}}
	for i, name := range []string{"model-a", "model-b"} {
		path := filepath.Join(dir, name+".safetensors")
		if err := writeModel(path, o.ModelSize, uint64(i+1)); err != nil {
			return nil, err
		}
		if _, err := reg.Push(ctx, path, s3x.URL{Bucket: "genfleet-models", Key: "blobs/" + name + ".safetensors"}, name, nil); err != nil {
			return nil, err
		}
		os.Remove(path)
	}
	env := []string{
		"GENFLEET_REDIS=" + redisAddr,
		"GENFLEET_S3_ENDPOINT=" + s3cfg.Endpoint, "GENFLEET_S3_REGION=us-east-1",
		"GENFLEET_S3_ACCESS_KEY=" + s3cfg.AccessKey, "GENFLEET_S3_SECRET_KEY=" + s3cfg.SecretKey,
		"GENFLEET_S3_PATH_STYLE=true",
		"GENFLEET_REGISTRY=s3://genfleet-models/", "GENFLEET_OUTPUTS=s3://genfleet-outputs/outputs/",
		"GENFLEET_LOG_LEVEL=warn",
	}
	res := &RoutingResult{Jobs: o.Jobs, ModelBytes: o.ModelSize, InFlight: o.InFlight}
	for _, routed := range []bool{false, true} {
		label, loads, p50 := "unrouted", &res.UnroutedLoads, &res.UnroutedP50MS
		if routed {
			label, loads, p50 = "routed", &res.RoutedLoads, &res.RoutedP50MS
		}
		fmt.Fprintf(progress, "%s: %d jobs over 2 hosts…\n", label, o.Jobs)
		r := routingRun{o: o, self: self, redisOpt: redisOpt, env: env, cl: cl, reg: reg, dir: filepath.Join(dir, label), routed: routed, progress: progress}
		n, lat, err := r.run(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s run: %w", label, err)
		}
		*loads, *p50 = n, round1(lat)
	}
	res.TargetsMet = res.UnroutedLoads > 0 && float64(res.RoutedLoads) <= 0.2*float64(res.UnroutedLoads)
	return res, nil
}

// routingRun is one pass of Routing's job stream.
type routingRun struct {
	o        RoutingOptions
	self     string
	redisOpt asynq.RedisConnOpt
	env      []string
	cl       *s3.Client
	reg      *modelcache.Registry
	dir      string
	routed   bool
	progress io.Writer
}

// run starts two worker processes (hosts h1, h2, separate cache
// directories whose budget fits one model) and a scheduler, runs the job
// stream, and returns the number of cold model loads the workers reported
// and the p50 job latency (submit → finished) in milliseconds.
func (r *routingRun) run(ctx context.Context) (int, float64, error) {
	rdb := r.redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return 0, 0, err
	}
	sched, err := scheduler.New(scheduler.Config{
		Redis: r.redisOpt, S3: r.cl, Registry: r.reg, Pool: "cpu", CheckModels: true,
		Routing: scheduler.Policy{Enabled: r.routed}, FleetTTL: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return 0, 0, err
	}
	defer sched.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	hs := &http.Server{Handler: sched.Handler()}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	api := client.New("http://"+ln.Addr().String(), "")

	budget := fmt.Sprint(r.o.ModelSize + r.o.ModelSize/2) // room for one model, not two
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			_ = p.Wait()
		}
	}()
	for _, h := range []string{"h1", "h2"} {
		cmd := exec.Command(r.self, "worker", "--cache-dir", filepath.Join(r.dir, h), "--host-id", h,
			"--metrics-listen", "", "--cache-budget", budget, "--heartbeat-interval", "250ms", "--shutdown-timeout", "5s")
		cmd.Env = append(os.Environ(), r.env...)
		cmd.Stderr = lineprefix.New(r.progress, h+" | ")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return 0, 0, err
		}
		procs = append(procs, cmd)
	}
	fleet := job.NewFleet(rdb)
	for deadline := time.Now().Add(30 * time.Second); ; {
		hbs, err := fleet.Heartbeats(ctx)
		if err == nil && len(scheduler.MergeHeartbeats(hbs)) == 2 {
			break
		}
		if time.Now().After(deadline) {
			return 0, 0, errors.New("workers did not start heartbeating")
		}
		time.Sleep(50 * time.Millisecond)
	}

	store := job.NewStore(rdb)
	sem := make(chan struct{}, r.o.InFlight)
	var mu sync.Mutex
	var recs []*job.Record
	var firstErr error
	var wg sync.WaitGroup
	for i := range r.o.Jobs {
		model := []string{"model-a", "model-b"}[i%2]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req := job.Request{Model: model, Prompt: fmt.Sprintf("bench %d", i), Seed: int64(i), Width: 64, Height: 64, Steps: r.o.Steps,
				Guidance: job.DefaultGuidance}
			rec, err := submitAndWait(ctx, api, store, req, 5*time.Minute)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			recs = append(recs, rec)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	loads := 0
	var lat []float64
	for _, rec := range recs {
		if rec.Status != job.StatusSucceeded || rec.Result == nil {
			return 0, 0, fmt.Errorf("job %s ended %s: %s", rec.ID, rec.Status, rec.Error)
		}
		if !rec.Result.CacheHit {
			loads++
		}
		if r.o.Verbose {
			fmt.Fprintf(r.progress, "%s %s hit=%v ran=%s route=%s\n", rec.CreatedAt.Format("05.000"), rec.Model, rec.Result.CacheHit, rec.Worker.Host, rec.Route.Reason)
		}
		lat = append(lat, float64(rec.FinishedAt.Sub(rec.CreatedAt).Microseconds())/1000)
	}
	sort.Float64s(lat)
	return loads, percentile(lat, 0.5), nil
}

// submitAndWait posts a job and polls its record until it ends.
func submitAndWait(ctx context.Context, api *client.Client, store *job.Store, req job.Request, timeout time.Duration) (*job.Record, error) {
	a, err := api.Submit(ctx, req)
	if err != nil {
		return nil, err
	}
	id := a.ID
	deadline := time.Now().Add(timeout)
	for {
		rec, err := store.Get(ctx, id)
		if err == nil && rec.Status.Terminal() {
			return rec, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s not done after %v", id, timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
