package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/lineprefix"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

func init() {
	registerBench("routing", "2 hosts, 2 models, cache budget for one: model loads with routing vs plain asynq", benchRouting)
}

func benchRouting(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := newFlags("bench routing", stderr)
	c := addCommon(f)
	size := f.String("size", "64MiB", "size of each of the two models")
	jobs := f.Int("jobs", 40, "jobs, alternating between the two models")
	inflight := f.Int("inflight", 2, "jobs in flight at once")
	steps := f.Int("steps", 2, "steps per job")
	verbose := f.Bool("v", false, "print each job: model, cache hit, host that ran it, route reason")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	n, err := parseSize(*size)
	if err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	redisOpt, stopRedis, err := benchRedis(c, flagGiven(f, "redis"))
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	dir, err := os.MkdirTemp("", "genfleet-bench-routing-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cl, s3cfg, stopS3, err := benchS3Config(ctx, c, dir, "genfleet-models", "genfleet-outputs")
	if err != nil {
		return nil, err
	}
	defer stopS3()
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: "genfleet-models"}}
	for i, name := range []string{"model-a", "model-b"} {
		path := filepath.Join(dir, name+".safetensors")
		if err := writeModel(path, n, uint64(i+1)); err != nil {
			return nil, err
		}
		if _, err := reg.Push(ctx, path, s3x.URL{Bucket: "genfleet-models", Key: "blobs/" + name + ".safetensors"}, name, nil); err != nil {
			return nil, err
		}
		os.Remove(path)
	}
	redisAddr := *c.redis
	if o, ok := redisOpt.(asynq.RedisClientOpt); ok && !flagGiven(f, "redis") {
		redisAddr = o.Addr
	}
	env := []string{
		"GENFLEET_REDIS=" + redisAddr,
		"GENFLEET_S3_ENDPOINT=" + s3cfg.Endpoint, "GENFLEET_S3_REGION=us-east-1",
		"GENFLEET_S3_ACCESS_KEY=" + s3cfg.AccessKey, "GENFLEET_S3_SECRET_KEY=" + s3cfg.SecretKey,
		"GENFLEET_S3_PATH_STYLE=true",
		"GENFLEET_REGISTRY=s3://genfleet-models/", "GENFLEET_OUTPUTS=s3://genfleet-outputs/outputs/",
		"GENFLEET_LOG_LEVEL=warn",
	}
	res := map[string]any{"jobs": *jobs, "model_bytes": n, "inflight": *inflight}
	for _, routed := range []bool{false, true} {
		label := map[bool]string{true: "routed", false: "unrouted"}[routed]
		fmt.Fprintf(stderr, "%s: %d jobs over 2 hosts…\n", label, *jobs)
		loads, p50, err := routingRun(ctx, redisOpt, env, cl, reg, filepath.Join(dir, label), routed, n, *jobs, *inflight, *steps, *verbose, stderr)
		if err != nil {
			return nil, fmt.Errorf("%s run: %w", label, err)
		}
		res[label+"_loads"] = loads
		res[label+"_p50_ms"] = round1(p50)
	}
	rl, ul := res["routed_loads"].(int), res["unrouted_loads"].(int)
	res["targets_met"] = ul > 0 && float64(rl) <= 0.2*float64(ul)
	return res, nil
}

// routingRun starts two worker processes (hosts h1, h2, separate cache
// directories whose budget fits one model) and a scheduler, runs the job
// stream, and returns the number of cold model loads the workers reported
// and the p50 job latency (submit → finished).
func routingRun(ctx context.Context, redisOpt asynq.RedisConnOpt, env []string, cl *s3.Client, reg *modelcache.Registry,
	dir string, routed bool, modelSize int64, jobs, inflight, steps int, verbose bool, stderr io.Writer) (int, float64, error) {
	rdb := redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return 0, 0, err
	}
	sched, err := scheduler.New(scheduler.Config{
		Redis: redisOpt, S3: cl, Registry: reg, Pool: "cpu", CheckModels: true,
		Routing: scheduler.Policy{Enabled: routed}, FleetTTL: 50 * time.Millisecond,
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
	api := "http://" + ln.Addr().String()

	self, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	budget := fmt.Sprint(modelSize + modelSize/2) // room for one model, not two
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
		cmd := exec.Command(self, "worker", "--cache-dir", filepath.Join(dir, h), "--host-id", h,
			"--metrics-listen", "", "--cache-budget", budget, "--heartbeat-interval", "250ms", "--shutdown-timeout", "5s")
		cmd.Env = append(os.Environ(), env...)
		cmd.Stderr = lineprefix.New(stderr, h+" | ")
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
			return 0, 0, fmt.Errorf("workers did not start heartbeating")
		}
		time.Sleep(50 * time.Millisecond)
	}

	store := job.NewStore(rdb)
	client := &http.Client{}
	sem := make(chan struct{}, inflight)
	var mu sync.Mutex
	var recs []*job.Record
	var firstErr error
	var wg sync.WaitGroup
	for i := range jobs {
		model := []string{"model-a", "model-b"}[i%2]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			body := fmt.Sprintf(`{"model":%q,"prompt":"bench %d","seed":%d,"width":64,"height":64,"steps":%d}`, model, i, i, steps)
			rec, err := submitAndWait(ctx, client, store, api, body, 5*time.Minute)
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
	for _, r := range recs {
		if r.Status != job.StatusSucceeded || r.Result == nil {
			return 0, 0, fmt.Errorf("job %s ended %s: %s", r.ID, r.Status, r.Error)
		}
		if !r.Result.CacheHit {
			loads++
		}
		if verbose {
			fmt.Fprintf(stderr, "%s %s hit=%v ran=%s route=%s\n", r.CreatedAt.Format("05.000"), r.Model, r.Result.CacheHit, r.Worker.Host, r.Route.Reason)
		}
		lat = append(lat, float64(r.FinishedAt.Sub(r.CreatedAt).Microseconds())/1000)
	}
	sort.Float64s(lat)
	return loads, percentile(lat, 0.5), nil
}

// submitAndWait posts a job and polls its record until it ends.
func submitAndWait(ctx context.Context, client *http.Client, store *job.Store, api, body string, timeout time.Duration) (*job.Record, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, api+"/v1/jobs", strings.NewReader(body))
	var created struct {
		ID string `json:"id"`
	}
	if err := doJSONWith(client, req, http.StatusAccepted, &created); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		rec, err := store.Get(ctx, created.ID)
		if err == nil && rec.Status.Terminal() {
			return rec, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s not done after %v", created.ID, timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
