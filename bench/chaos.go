package bench

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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/cpu"
	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/internal/lineprefix"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// ChaosOptions is one run of Chaos.
type ChaosOptions struct {
	// Redis is the Redis to run on, a single server (the worker processes
	// are given its address); nil starts a redis-server for the run.
	// Chaos flushes its database.
	Redis asynq.RedisConnOpt
	// S3 is the server for the model and the outputs; an empty Endpoint
	// starts versitygw for the run.
	S3 s3x.Config
	// Jobs are submitted through the API (64×64, distinct seeds), each of
	// Steps steps (each sweeps the whole model: enough that kills land
	// mid-job); Jobs at least 1.
	Jobs, Steps int
	// Workers is the number of worker processes sharing one cache
	// directory (one host); at least 1.
	Workers int
	// ModelSize is the model's size in bytes.
	ModelSize int64
	// KillEvery is how often one worker is SIGKILLed (a busy one when any
	// is busy) and restarted; above 0.
	KillEvery time.Duration
	// MaxKills stops the killing after this many kills; 0 kills until
	// every job has left its queue once.
	MaxKills int
	// Deadline is how long after the last submit a job may take to end
	// before it counts as lost (a killed job comes back only after the
	// queue's lease recovery).
	Deadline time.Duration
	// Verbose copies the workers' logs to the progress writer.
	Verbose bool
	// Executable is the genfleet binary run as the worker processes; ""
	// is this process's own executable.
	Executable string
}

// ChaosResult is what a chaos run found. TargetsMet: no job lost, failed,
// corrupt, recorded as succeeded twice or stored twice.
type ChaosResult struct {
	Jobs      int `json:"jobs"`
	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Lost      int `json:"lost"`
	Cancelled int `json:"cancelled"`
	// DuplicatedOutputs counts jobs with more than one object in the
	// outputs bucket. Output keys are <prefix><job id>.png, so a re-run
	// overwrites its own key: this stays 0 by construction, and the two
	// counters below are the ones that see repeated work.
	DuplicatedOutputs int `json:"duplicated_outputs"`
	// DuplicateUploads counts jobs whose output the S3 server accepted more
	// than once: a run that uploaded and was killed before it recorded the
	// result, then ran again. Same bytes, same key: harmless, but it is the
	// at-least-once cost.
	DuplicateUploads int `json:"duplicate_uploads"`
	// SucceededTwice counts jobs for which more than one worker process
	// logged "job succeeded" (recorded the success): the run claim and the
	// final mark must keep this at 0.
	SucceededTwice int `json:"succeeded_twice"`
	// Corrupt counts succeeded jobs whose object is missing, does not
	// decode as a PNG, or differs from the bytes computed in-process.
	Corrupt     int `json:"corrupt_outputs"`
	Kills       int `json:"kills"`
	KillsMidJob int `json:"kills_mid_job"`
	// Restarts counts the killed workers started again; not in the JSON.
	Restarts int `json:"-"`
	// Attempts maps a final attempt number to the jobs that ended with it.
	Attempts map[int]int `json:"attempts"`
	// FailureReasons (the first 10) and Problems (the first 20) are
	// absent when there are none.
	FailureReasons []string `json:"failure_reasons,omitempty"`
	Problems       []string `json:"problems,omitempty"`
	// SubmitS is the time to submit every job, DrainS until every job
	// ended (or the deadline), in seconds from the first submit.
	SubmitS    float64 `json:"submit_s"`
	DrainS     float64 `json:"drain_s"`
	TargetsMet bool    `json:"targets_met"`
}

const (
	chaosModels  = "genfleet-models"
	chaosOutputs = "genfleet-outputs"
	chaosPrefix  = "chaos-outputs/"
	chaosHost    = "chaos-host"
)

// Chaos registers a model, starts the scheduler's API in this process
// and o.Workers worker processes of one host (o.Executable run as
// `genfleet worker`, one cache directory), submits the jobs through the
// API while a killer SIGKILLs a worker every o.KillEvery and restarts it
// with the same host id, waits for every job to end, then checks every
// output against the image computed in this process.
func Chaos(ctx context.Context, o ChaosOptions, progress io.Writer) (*ChaosResult, error) {
	progress = orDiscard(progress)
	if o.Jobs < 1 || o.Workers < 1 {
		return nil, fmt.Errorf("--jobs %d, --workers %d: want at least 1 of each", o.Jobs, o.Workers)
	}
	if o.KillEvery <= 0 {
		return nil, fmt.Errorf("--kill-every %v: want a time above 0", o.KillEvery)
	}
	var sv chaosServices
	var err error
	if sv.self, err = executable(o.Executable); err != nil {
		return nil, err
	}
	redisOpt, stopRedis, err := startRedis(o.Redis)
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	ro, ok := redisOpt.(asynq.RedisClientOpt)
	if !ok {
		return nil, fmt.Errorf("bench chaos needs a single Redis (host:port), got %T", redisOpt)
	}
	sv.redis, sv.redisAddr = redisOpt, ro.Addr
	if sv.dir, err = os.MkdirTemp("", "genfleet-bench-chaos-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(sv.dir)
	cl, s3cfg, stopS3, err := startS3(ctx, o.S3, sv.dir, chaosModels, chaosOutputs)
	if err != nil {
		return nil, err
	}
	defer stopS3()
	sv.s3, sv.s3cfg = cl, s3cfg
	return runChaos(ctx, o, sv, progress)
}

// chaosServices is what a chaos run runs on.
type chaosServices struct {
	redis     asynq.RedisConnOpt
	redisAddr string // the worker processes' --redis
	s3        *s3.Client
	s3cfg     s3x.Config
	dir       string // scratch: the model file and the host's cache
	self      string // the genfleet executable
}

// runChaos is Chaos once its services run: sv says where.
func runChaos(ctx context.Context, cfg ChaosOptions, sv chaosServices, logw io.Writer) (*ChaosResult, error) {
	redisOpt, cl, s3cfg := sv.redis, sv.s3, sv.s3cfg
	rdb := redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return nil, err
	}

	// The model, kept in memory for the expected images.
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: chaosModels}}
	modelPath := filepath.Join(sv.dir, "chaos.safetensors")
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
	be, err := cpu.New() // the backend the workers run
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
	api := &client.Client{BaseURL: "http://" + ln.Addr().String(), HTTP: &http.Client{Timeout: 30 * time.Second}}

	env := append(os.Environ(),
		"GENFLEET_REDIS="+sv.redisAddr,
		"GENFLEET_S3_ENDPOINT="+proxy.URL, "GENFLEET_S3_REGION=us-east-1",
		"GENFLEET_S3_ACCESS_KEY="+s3cfg.AccessKey, "GENFLEET_S3_SECRET_KEY="+s3cfg.SecretKey,
		"GENFLEET_S3_PATH_STYLE=true",
		"GENFLEET_REGISTRY=s3://"+chaosModels+"/", "GENFLEET_OUTPUTS=s3://"+chaosOutputs+"/"+chaosPrefix,
		"GENFLEET_LOG_LEVEL=info",
	)
	fl := &chaosFleet{self: sv.self, env: env, cacheDir: filepath.Join(sv.dir, "cache"), verbose: cfg.Verbose, stderr: logw}
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

	res := &ChaosResult{Jobs: cfg.Jobs, Attempts: map[int]int{}}
	insp := asynq.NewInspectorFromRedisClient(rdb)

	// The killer: every KillEvery, SIGKILL a worker (a busy one if any)
	// and start it again with the same host id. It stops after MaxKills, or
	// once every job was submitted and none waits in a queue: from then on
	// a restart would only reset asynq's one-minute lease recovery timer.
	// res's counters are the killer's until it is done; the progress
	// report reads kills.
	var kills atomic.Int32
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
			kills.Store(int32(res.Kills))
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
			a, err := api.Submit(ctx, bodies[i])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if submitErr == nil {
					submitErr = err
				}
				return
			}
			ids[i] = a.ID
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
			rec, err := api.Job(ctx, id)
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
			fmt.Fprintf(logw, "chaos: %d of %d jobs not finished yet (%d kills so far)\n", pending, cfg.Jobs, kills.Load())
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
	res.SubmitS, res.DrainS = round1(res.SubmitS), round1(res.DrainS)
	res.TargetsMet = res.Lost == 0 && res.Corrupt == 0 && res.Failed == 0 && res.SucceededTwice == 0 && res.DuplicatedOutputs == 0
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

// chaosFleet is the worker processes of one host: slot i runs one process
// at a time; kill and start replace it.
type chaosFleet struct {
	self, cacheDir string
	env            []string
	verbose        bool
	stderr         io.Writer

	mu    sync.Mutex
	procs map[int]*exec.Cmd
	logs  []*testenv.Buffer // every process's log, dead ones included
}

func (f *chaosFleet) start(i int) error {
	cmd := exec.Command(f.self, "worker", "--cache-dir", f.cacheDir, "--host-id", chaosHost,
		"--metrics-listen", "", "--heartbeat-interval", "250ms", "--shutdown-timeout", "5s", "--retry-base", "500ms")
	cmd.Env = f.env
	log := &testenv.Buffer{}
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
