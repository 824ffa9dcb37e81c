package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/internal/lineprefix"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

func init() {
	registerBench("chaos", "jobs through the API to worker processes of one host, one SIGKILLed and restarted every few seconds: every job ends once, with the right image", benchChaos)
}

func benchChaos(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := newFlags("bench chaos", stderr)
	c := addCommon(f)
	cfg := chaosConfig{Stderr: stderr}
	f.IntVar(&cfg.Jobs, "jobs", 300, "jobs to submit through the API (64×64, distinct seeds)")
	f.IntVar(&cfg.Workers, "workers", 3, "worker processes sharing one cache directory (one host)")
	f.IntVar(&cfg.Steps, "steps", 200, "steps per job (each sweeps the whole model: enough that kills land mid-job)")
	size := f.String("size", "4MiB", "model size")
	f.DurationVar(&cfg.KillEvery, "kill-every", 2*time.Second, "SIGKILL one worker (a busy one when any is busy) and restart it this often")
	f.IntVar(&cfg.MaxKills, "max-kills", 0, "stop killing after this many kills (0: kill until every job has left its queue once)")
	f.DurationVar(&cfg.Deadline, "deadline", 5*time.Minute, "a job not terminal this long after the last submit is lost (a killed job comes back only after asynq's lease recovery: 60–120s)")
	verbose := f.Bool("v", false, "copy worker logs to stderr")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	n, err := parseSize(*size)
	if err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	cfg.ModelSize = n
	cfg.Verbose = *verbose
	redisOpt, stopRedis, err := benchRedis(c, flagGiven(f, "redis"))
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	dir, err := os.MkdirTemp("", "genfleet-bench-chaos-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cl, s3cfg, stopS3, err := benchS3Config(ctx, c, dir, chaosModels, chaosOutputs)
	if err != nil {
		return nil, err
	}
	defer stopS3()
	cfg.Dir = dir
	res, err := runChaos(ctx, redisOpt, cl, s3cfg, cfg)
	if err != nil {
		return nil, err
	}
	return res.asMap(), nil
}

const (
	chaosModels  = "genfleet-models"
	chaosOutputs = "genfleet-outputs"
	chaosPrefix  = "chaos-outputs/"
	chaosHost    = "chaos-host"
)

// chaosConfig is one chaos run.
type chaosConfig struct {
	Jobs, Workers, Steps int
	ModelSize            int64
	KillEvery            time.Duration
	MaxKills             int // 0: until every job left its queue once
	Deadline             time.Duration
	Dir                  string   // scratch directory (cache, model file)
	ChildEnv             []string // extra environment for worker processes (tests mark re-executed binaries)
	Verbose              bool
	Stderr               io.Writer
}

// chaosResult is what a chaos run found.
type chaosResult struct {
	Jobs, Succeeded, Failed, Lost, Cancelled int
	// DuplicatedOutputs counts jobs with more than one object in the
	// outputs bucket. Output keys are <prefix><job id>.png, so a re-run
	// overwrites its own key: this stays 0 by construction, and the two
	// counters below are the ones that see repeated work.
	DuplicatedOutputs int
	// DuplicateUploads counts jobs whose output the S3 server accepted more
	// than once: a run that uploaded and was killed before it recorded the
	// result, then ran again. Same bytes, same key: harmless, but it is the
	// at-least-once cost.
	DuplicateUploads int
	// SucceededTwice counts jobs for which more than one worker process
	// logged "job succeeded" (recorded the success): the run claim and the
	// final mark must keep this at 0.
	SucceededTwice int
	// Corrupt counts succeeded jobs whose object is missing, does not
	// decode as a PNG, or differs from the bytes computed in-process.
	Corrupt                  int
	Kills, KillsMidJob       int
	Restarts                 int
	Attempts                 map[int]int // final attempt number → jobs
	FailureReasons, Problems []string
	SubmitS, DrainS          float64
}

func (r *chaosResult) asMap() map[string]any {
	attempts := map[string]int{}
	for a, n := range r.Attempts {
		attempts[fmt.Sprint(a)] = n
	}
	m := map[string]any{
		"jobs": r.Jobs, "succeeded": r.Succeeded, "failed": r.Failed, "lost": r.Lost, "cancelled": r.Cancelled,
		"duplicated_outputs": r.DuplicatedOutputs, "duplicate_uploads": r.DuplicateUploads,
		"succeeded_twice": r.SucceededTwice, "corrupt_outputs": r.Corrupt,
		"kills": r.Kills, "kills_mid_job": r.KillsMidJob, "attempts": attempts,
		"submit_s": round1(r.SubmitS), "drain_s": round1(r.DrainS),
		"targets_met": r.Lost == 0 && r.Corrupt == 0 && r.Failed == 0 && r.SucceededTwice == 0 && r.DuplicatedOutputs == 0,
	}
	if len(r.FailureReasons) > 0 {
		m["failure_reasons"] = r.FailureReasons
	}
	if len(r.Problems) > 0 {
		m["problems"] = r.Problems
	}
	return m
}

// runChaos registers a model, starts the scheduler's API in this process
// and cfg.Workers worker processes of one host (this executable re-run as
// `genfleet worker`, one cache directory), submits the jobs through the API
// while a killer SIGKILLs a worker every cfg.KillEvery and restarts it with
// the same host id, waits for every job to end, then checks every output
// against the image computed in this process.
func runChaos(ctx context.Context, redisOpt asynq.RedisConnOpt, cl *s3.Client, s3cfg s3x.Config, cfg chaosConfig) (*chaosResult, error) {
	logw := cfg.Stderr
	if logw == nil {
		logw = io.Discard
	}
	rdb := redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return nil, err
	}

	// The model, kept in memory for the expected images.
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: chaosModels}}
	modelPath := filepath.Join(cfg.Dir, "chaos.safetensors")
	if err := writeModel(modelPath, cfg.ModelSize, 42); err != nil {
		return nil, err
	}
	if _, err := reg.Push(ctx, modelPath, s3x.URL{Bucket: chaosModels, Key: "blobs/chaos.safetensors"}, "chaos", nil); err != nil {
		return nil, err
	}
	modelBytes, err := os.ReadFile(modelPath)
	if err != nil {
		return nil, err
	}
	be, err := backends.New("cpu")
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(modelBytes)
	modelDigest := "sha256:" + hex.EncodeToString(sum[:])

	// Workers reach S3 through a proxy that counts accepted output PUTs.
	proxy, err := newPutCounter(s3cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	defer proxy.Close()

	sched, err := scheduler.New(scheduler.Config{
		Redis: redisOpt, S3: cl, Registry: reg, Pool: job.DefaultPool, CheckModels: true,
		Routing: scheduler.Policy{Enabled: true}, FleetTTL: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, err
	}
	defer sched.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: sched.Handler()}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	api := "http://" + ln.Addr().String()

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	redisAddr := ""
	switch o := redisOpt.(type) {
	case asynq.RedisClientOpt:
		redisAddr = o.Addr
	default:
		return nil, fmt.Errorf("bench chaos needs a single Redis (host:port), got %T", redisOpt)
	}
	env := append(os.Environ(), cfg.ChildEnv...)
	env = append(env,
		"GENFLEET_REDIS="+redisAddr,
		"GENFLEET_S3_ENDPOINT="+proxy.URL, "GENFLEET_S3_REGION=us-east-1",
		"GENFLEET_S3_ACCESS_KEY="+s3cfg.AccessKey, "GENFLEET_S3_SECRET_KEY="+s3cfg.SecretKey,
		"GENFLEET_S3_PATH_STYLE=true",
		"GENFLEET_REGISTRY=s3://"+chaosModels+"/", "GENFLEET_OUTPUTS=s3://"+chaosOutputs+"/"+chaosPrefix,
		"GENFLEET_LOG_LEVEL=info",
	)
	fl := &chaosFleet{self: self, env: env, cacheDir: filepath.Join(cfg.Dir, "cache"), verbose: cfg.Verbose, stderr: logw}
	defer fl.stopAll()
	for i := range cfg.Workers {
		if err := fl.start(i); err != nil {
			return nil, err
		}
	}
	fleet := job.NewFleet(rdb)
	for deadline := time.Now().Add(30 * time.Second); ; {
		hbs, err := fleet.Heartbeats(ctx)
		if err == nil && len(hbs) >= cfg.Workers {
			break
		}
		if time.Now().After(deadline) {
			return nil, errors.New("workers did not start heartbeating within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	res := &chaosResult{Jobs: cfg.Jobs, Attempts: map[int]int{}}
	insp := asynq.NewInspectorFromRedisClient(rdb)

	// The killer: every KillEvery, SIGKILL a worker (a busy one if any)
	// and start it again with the same host id. It stops after MaxKills, or
	// once every job was submitted and none waits in a queue: from then on
	// a restart would only reset asynq's one-minute lease recovery timer.
	submitted := make(chan struct{})
	killCtx, stopKiller := context.WithCancel(ctx)
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		t := time.NewTicker(cfg.KillEvery)
		defer t.Stop()
		for {
			select {
			case <-killCtx.Done():
				return
			case <-t.C:
			}
			select {
			case <-submitted:
				if queuesDrained(insp) {
					return
				}
			default:
			}
			busy := map[int]bool{}
			if hbs, err := fleet.Heartbeats(killCtx); err == nil {
				for _, hb := range hbs {
					if hb.InFlight > 0 {
						busy[hb.PID] = true
					}
				}
			}
			i, mid := fl.pickVictim(busy)
			if err := fl.kill(i); err != nil {
				fmt.Fprintf(logw, "chaos: kill worker %d: %v\n", i, err)
				continue
			}
			res.Kills++
			if mid {
				res.KillsMidJob++
			}
			if err := fl.start(i); err != nil {
				fmt.Fprintf(logw, "chaos: restart worker %d: %v\n", i, err)
				continue
			}
			res.Restarts++
			if cfg.MaxKills > 0 && res.Kills >= cfg.MaxKills {
				return
			}
		}
	}()

	// Submit every job through the API.
	start := time.Now()
	client := &http.Client{Timeout: 30 * time.Second}
	ids := make([]string, cfg.Jobs)
	bodies := make([]job.Request, cfg.Jobs)
	var wg sync.WaitGroup
	var submitErr error
	var mu sync.Mutex
	sem := make(chan struct{}, 8)
	for i := range cfg.Jobs {
		bodies[i] = job.Request{Model: "chaos", Prompt: fmt.Sprintf("chaos job %d", i), Seed: int64(i),
			Width: 64, Height: 64, Steps: cfg.Steps, Guidance: job.DefaultGuidance, OutputFormat: job.FormatPNG}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			body := fmt.Sprintf(`{"model":"chaos","prompt":%q,"seed":%d,"width":64,"height":64,"steps":%d}`, bodies[i].Prompt, i, cfg.Steps)
			id, err := chaosSubmit(ctx, client, api, body)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && submitErr == nil {
				submitErr = err
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	close(submitted)
	res.SubmitS = time.Since(start).Seconds()
	if submitErr != nil {
		stopKiller()
		<-killerDone
		return nil, fmt.Errorf("submit: %w", submitErr)
	}
	fmt.Fprintf(logw, "chaos: %d jobs submitted in %.1fs; waiting (deadline %v)…\n", cfg.Jobs, res.SubmitS, cfg.Deadline)

	// The expected PNGs, computed here while the fleet works (mostly while
	// it waits for asynq's lease recovery, with the CPU idle).
	expected := make([][]byte, cfg.Jobs)
	expectedErr := make([]error, cfg.Jobs)
	expectedDone := make(chan struct{})
	go func() {
		defer close(expectedDone)
		for i := range bodies {
			expected[i], expectedErr[i] = expectedPNG(ctx, be, modelBytes, modelDigest, bodies[i])
		}
	}()

	// Wait until every job is terminal, as the API reports it.
	recs := make([]*job.Record, cfg.Jobs)
	deadline := time.Now().Add(cfg.Deadline)
	lastReport := time.Now()
	for {
		pending := 0
		for i, id := range ids {
			if recs[i] != nil {
				continue
			}
			rec, err := chaosGet(ctx, client, api, id)
			if err == nil && rec.Status.Terminal() {
				recs[i] = rec
				continue
			}
			pending++
		}
		if pending == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			res.Lost = pending
			break
		}
		if time.Since(lastReport) > 10*time.Second {
			lastReport = time.Now()
			fmt.Fprintf(logw, "chaos: %d of %d jobs not finished yet (%d kills so far)\n", pending, cfg.Jobs, res.Kills)
		}
		time.Sleep(250 * time.Millisecond)
	}
	res.DrainS = time.Since(start).Seconds()
	stopKiller()
	<-killerDone
	fl.stopAll()

	// Outputs: one object per job, the bytes computed here.
	perJob := map[string]int{}
	pg := s3.NewListObjectsV2Paginator(cl, &s3.ListObjectsV2Input{Bucket: aws.String(chaosOutputs), Prefix: aws.String(chaosPrefix)})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list outputs: %w", err)
		}
		for _, o := range page.Contents {
			id := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(o.Key), chaosPrefix), ".png")
			perJob[id]++
		}
	}
	<-expectedDone
	succeededBy := fl.succeededCounts()
	for i, rec := range recs {
		id := ids[i]
		if perJob[id] > 1 {
			res.DuplicatedOutputs++
		}
		if proxy.puts(chaosOutputs, chaosPrefix+id+".png") > 1 {
			res.DuplicateUploads++
		}
		if succeededBy[id] > 1 {
			res.SucceededTwice++
			res.Problems = append(res.Problems, fmt.Sprintf("job %s: %d workers logged success", id, succeededBy[id]))
		}
		if rec == nil {
			res.Problems = append(res.Problems, fmt.Sprintf("job %s (seed %d) lost", id, i))
			continue
		}
		res.Attempts[rec.Attempt]++
		switch rec.Status {
		case job.StatusSucceeded:
			res.Succeeded++
		case job.StatusCancelled:
			res.Cancelled++
			continue
		default:
			res.Failed++
			if len(res.FailureReasons) < 10 {
				res.FailureReasons = append(res.FailureReasons, fmt.Sprintf("job %s: %s", id, rec.Error))
			}
			continue
		}
		if problem := checkChaosOutput(ctx, cl, expected[i], expectedErr[i], rec); problem != "" {
			res.Corrupt++
			res.Problems = append(res.Problems, fmt.Sprintf("job %s: %s", id, problem))
		}
	}
	if len(res.Problems) > 20 {
		res.Problems = append(res.Problems[:20], fmt.Sprintf("… and %d more", len(res.Problems)-20))
	}
	return res, nil
}

// expectedPNG is the PNG the cpu backend makes of req on model, encoded
// as worker.run encodes it.
func expectedPNG(ctx context.Context, be backends.Backend, model []byte, digest string, req job.Request) ([]byte, error) {
	img, err := be.Generate(ctx, backends.Model{Files: []backends.File{{Digest: digest, Data: model}}}, backends.Params{
		Prompt: req.Prompt, NegativePrompt: req.NegativePrompt, Width: req.Width, Height: req.Height,
		Steps: req.Steps, Seed: req.Seed, Guidance: req.Guidance,
	}, nil)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// checkChaosOutput returns "" when the succeeded job's object exists,
// decodes as a PNG and equals want byte for byte.
func checkChaosOutput(ctx context.Context, cl *s3.Client, want []byte, wantErr error, rec *job.Record) string {
	if rec.Result == nil {
		return "succeeded without a result"
	}
	if wantErr != nil {
		return fmt.Sprintf("expected image: %v", wantErr)
	}
	out, err := cl.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(rec.Result.Bucket), Key: aws.String(rec.Result.Key)})
	if err != nil {
		return fmt.Sprintf("read output %s: %v", rec.Result.URL, err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil {
		return fmt.Sprintf("read output %s: %v", rec.Result.URL, err)
	}
	if _, err := png.Decode(bytes.NewReader(got)); err != nil {
		return fmt.Sprintf("output is not a PNG: %v", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Sprintf("output (%d bytes) differs from the expected PNG (%d bytes)", len(got), len(want))
	}
	if s := sha256.Sum256(got); hex.EncodeToString(s[:]) != rec.Result.SHA256 {
		return "output's sha256 differs from the one recorded"
	}
	return ""
}

// queuesDrained reports whether no job waits in a queue (pending,
// scheduled or retry): each one has been taken by a worker at least once
// and is running, done, or held by a dead worker's lease.
func queuesDrained(insp *asynq.Inspector) bool {
	queues, err := insp.Queues()
	if err != nil {
		return false
	}
	for _, q := range queues {
		info, err := insp.GetQueueInfo(q)
		if err != nil || info.Pending+info.Scheduled+info.Retry > 0 {
			return false
		}
	}
	return true
}

func chaosSubmit(ctx context.Context, client *http.Client, api, body string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, api+"/v1/jobs", strings.NewReader(body))
	var created struct {
		ID string `json:"id"`
	}
	if err := doJSONWith(client, req, http.StatusAccepted, &created); err != nil {
		return "", err
	}
	return created.ID, nil
}

func chaosGet(ctx context.Context, client *http.Client, api, id string) (*job.Record, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, api+"/v1/jobs/"+id, nil)
	var rec job.Record
	if err := doJSONWith(client, req, http.StatusOK, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// chaosFleet is the worker processes of one host: slot i runs one process
// at a time; kill and start replace it.
type chaosFleet struct {
	self, cacheDir string
	env            []string
	verbose        bool
	stderr         io.Writer

	mu    sync.Mutex
	procs map[int]*exec.Cmd
	logs  []*lockedBuffer // every process's log, dead ones included
}

func (f *chaosFleet) start(i int) error {
	cmd := exec.Command(f.self, "worker", "--cache-dir", f.cacheDir, "--host-id", chaosHost,
		"--metrics-listen", "", "--heartbeat-interval", "250ms", "--shutdown-timeout", "5s", "--retry-base", "500ms")
	cmd.Env = f.env
	log := &lockedBuffer{}
	var w io.Writer = log
	if f.verbose {
		w = io.MultiWriter(log, lineprefix.New(f.stderr, fmt.Sprintf("w%d | ", i)))
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.procs == nil {
		f.procs = map[int]*exec.Cmd{}
	}
	f.procs[i] = cmd
	f.logs = append(f.logs, log)
	return nil
}

// pickVictim returns a random slot, preferring one whose process has a job
// in flight (per its heartbeat), and whether it had one.
func (f *chaosFleet) pickVictim(busy map[int]bool) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all, hot []int
	for i, p := range f.procs {
		all = append(all, i)
		if busy[p.Process.Pid] {
			hot = append(hot, i)
		}
	}
	sort.Ints(all)
	sort.Ints(hot)
	if len(hot) > 0 {
		return hot[rand.IntN(len(hot))], true
	}
	return all[rand.IntN(len(all))], false
}

func (f *chaosFleet) kill(i int) error {
	f.mu.Lock()
	p := f.procs[i]
	delete(f.procs, i)
	f.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no process in slot %d", i)
	}
	if err := p.Process.Kill(); err != nil {
		return err
	}
	_ = p.Wait()
	return nil
}

// stopAll ends every process with SIGTERM (a clean shutdown) and waits.
func (f *chaosFleet) stopAll() {
	f.mu.Lock()
	procs := f.procs
	f.procs = nil
	f.mu.Unlock()
	for _, p := range procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
}

var succeededRE = regexp.MustCompile(`msg="job succeeded".* job=(\S+)`)

// succeededCounts counts, per job id, the processes that logged that they
// recorded the job's success.
func (f *chaosFleet) succeededCounts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := map[string]int{}
	for _, l := range f.logs {
		for _, line := range strings.Split(l.String(), "\n") {
			if m := succeededRE.FindStringSubmatch(line); m != nil {
				n[m[1]]++
			}
		}
	}
	return n
}

// putCounter is a reverse proxy to an S3 server that counts successful
// PUTs per object path.
type putCounter struct {
	*httptest.Server
	mu     sync.Mutex
	counts map[string]int
}

func newPutCounter(target string) (*putCounter, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	p := &putCounter{counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u) // keeps the Host header: SigV4 still verifies
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodPut && resp.StatusCode < 300 {
			p.mu.Lock()
			p.counts[resp.Request.URL.Path]++
			p.mu.Unlock()
		}
		return nil
	}
	p.Server = httptest.NewServer(rp)
	return p, nil
}

func (p *putCounter) puts(bucket, key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts["/"+bucket+"/"+key]
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes and reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
