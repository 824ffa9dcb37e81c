package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends/sdcpp/sd1"
	"github.com/genfleet/genfleet/internal/lineprefix"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// ShareEngineTarget is the most summed PSS, as a multiple of the model,
// that ShareEngine's engines may use with --mmap for its TargetsMet: one
// shared copy of the weights plus each engine's own memory (activations,
// runtime).
const ShareEngineTarget = 1.3

// The job each worker runs: small enough to be quick on a CPU, and still a
// whole generation (text encoder, diffusion model, VAE), so every module's
// weights are loaded.
const shareEngineWidth, shareEngineHeight, shareEngineSteps = 64, 64, 1

// ShareEngineOptions is one run of ShareEngine.
type ShareEngineOptions struct {
	// Redis is the Redis to run on; nil starts a redis-server for the run.
	Redis asynq.RedisConnOpt
	// WorkerRedis is the --redis the worker processes are given; "" is
	// Redis's address (it must then be a single server).
	WorkerRedis string
	// S3 is the server for the model and the outputs; an empty Endpoint
	// starts versitygw for the run.
	S3 s3x.Config
	// Procs is the number of worker processes per mode, each with its own
	// engine server; at least 1.
	Procs int
	// Server is stable-diffusion.cpp's server program (sd-server): a path
	// or a name looked up in PATH. Required.
	Server string
	// EngineArgs are extra engine flags, the workers' --sdcpp-args (e.g.
	// "--threads 2").
	EngineArgs string
	// ModelFile is the model the engines load: one file the engine takes
	// as --model. "" writes a random-weight SD 1.x checkpoint (package
	// sd1) of DType for the run.
	ModelFile string
	// DType is the type of the checkpoint written when ModelFile is "";
	// empty means sd1.F16.
	DType sd1.DType
	// Dir is the parent of the run's temporary files (model, cache, S3
	// data); "" is the system temp directory.
	Dir string
	// Executable is the genfleet binary run as the worker processes; ""
	// is this process's own executable.
	Executable string
	// JobTimeout bounds each job, submit to finished. Default 10 minutes.
	JobTimeout time.Duration
	// Verbose copies the workers' logs to the progress writer.
	Verbose bool
}

// ShareEngineResult is what ShareEngine measured, once with the engine's
// --mmap (engine_mmap_*) and once without (engine_nommap_*), each with
// Procs engine processes up and the model loaded:
//
//   - *_pss_bytes, *_rss_bytes: the engine processes' summed PSS and RSS
//     (/proc/PID/smaps_rollup, whole processes), and *_pss_ratio the PSS
//     over the model's size;
//   - *_model_pss_bytes: the part of that PSS that is the engines'
//     mappings of the model file (0 without --mmap: the engine reads it);
//   - *_own_bytes: per engine process, the mean of its PSS less its share
//     of the model file's mapping: activations and runtime, and without
//     --mmap also its private copy of the weights;
//   - *_worker_pss_bytes: the worker processes' summed PSS, for
//     completeness (they hold no mapping of the model between jobs);
//   - the warm start of each engine, page cache warm, medians over the
//     processes: *_start_ms from starting the server to its first answer
//     (it has read the model's metadata), *_load_ms the weights' load
//     time the engine logged during its first job (the job's engine_load
//     timing), *_first_answer_ms from starting the server to the first
//     job's image (the job's generate timing), and *_first_job_cpu_ms the
//     CPU time (user and system, all threads) the engine process used from
//     its start to the end of that job. The CPU time moves much less than
//     the wall times when other work shares the cores.
type ShareEngineResult struct {
	Engine       string `json:"engine"`
	EngineServer string `json:"engine_server"`
	SizeBytes    int64  `json:"size_bytes"`
	Procs        int    `json:"procs"`

	MmapPSSBytes       int64   `json:"engine_mmap_pss_bytes"`
	MmapRSSBytes       int64   `json:"engine_mmap_rss_bytes"`
	MmapPSSRatio       float64 `json:"engine_mmap_pss_ratio"`
	MmapModelPSSBytes  int64   `json:"engine_mmap_model_pss_bytes"`
	MmapOwnBytes       int64   `json:"engine_mmap_own_bytes"`
	MmapWorkerPSSBytes int64   `json:"engine_mmap_worker_pss_bytes"`
	MmapStartMS        float64 `json:"engine_mmap_start_ms"`
	MmapLoadMS         float64 `json:"engine_mmap_load_ms"`
	MmapFirstAnswerMS  float64 `json:"engine_mmap_first_answer_ms"`
	MmapFirstJobCPUMS  float64 `json:"engine_mmap_first_job_cpu_ms"`

	NoMmapPSSBytes       int64   `json:"engine_nommap_pss_bytes"`
	NoMmapRSSBytes       int64   `json:"engine_nommap_rss_bytes"`
	NoMmapPSSRatio       float64 `json:"engine_nommap_pss_ratio"`
	NoMmapModelPSSBytes  int64   `json:"engine_nommap_model_pss_bytes"`
	NoMmapOwnBytes       int64   `json:"engine_nommap_own_bytes"`
	NoMmapWorkerPSSBytes int64   `json:"engine_nommap_worker_pss_bytes"`
	NoMmapStartMS        float64 `json:"engine_nommap_start_ms"`
	NoMmapLoadMS         float64 `json:"engine_nommap_load_ms"`
	NoMmapFirstAnswerMS  float64 `json:"engine_nommap_first_answer_ms"`
	NoMmapFirstJobCPUMS  float64 `json:"engine_nommap_first_job_cpu_ms"`

	// TargetsMet: with --mmap the summed PSS is at most ShareEngineTarget
	// times the model.
	TargetsMet bool `json:"targets_met"`
}

// engineMode is what one mode of ShareEngine measured.
type engineMode struct {
	pss, rss, modelPSS, own, workerPSS int64
	startMS, loadMS, firstAnswerMS     float64
	cpuMS                              float64
}

// ShareEngine measures stable-diffusion.cpp's memory on one host: it
// registers the model (pushed to S3) and imports it into a scratch model
// cache, then, once with the engine's --mmap and once without, starts
// o.Procs genfleet worker processes (--backend sdcpp --sdcpp-mode server)
// on that cache, runs one small job on each, one job at a time, so that
// each has an engine server up with the model loaded, and sums the
// proportional set sizes of the engine processes (the workers'
// descendants). With --mmap the engines share the page cache's one copy
// of the weights; without it each holds its own.
func ShareEngine(ctx context.Context, o ShareEngineOptions, progress io.Writer) (*ShareEngineResult, error) {
	progress = &lockedWriter{w: orDiscard(progress)} // the workers' logs (Verbose) come in from their own goroutines
	if o.Procs < 1 {
		return nil, errors.New("--procs must be at least 1")
	}
	if o.Server == "" {
		return nil, errors.New("bench share --backend sdcpp needs stable-diffusion.cpp's server program: pass --sdcpp-server or set GENFLEET_SDCPP_SERVER")
	}
	server, err := exec.LookPath(o.Server)
	if err != nil {
		return nil, fmt.Errorf("stable-diffusion.cpp server program (--sdcpp-server, GENFLEET_SDCPP_SERVER): %w", err)
	}
	if server, err = filepath.Abs(server); err != nil {
		return nil, err
	}
	if o.JobTimeout <= 0 {
		o.JobTimeout = 10 * time.Minute
	}
	self, err := executable(o.Executable)
	if err != nil {
		return nil, err
	}
	redisOpt, redisAddr, stopRedis, err := startWorkerRedis(o.Redis, o.WorkerRedis, "share")
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	dir, err := os.MkdirTemp(o.Dir, "genfleet-bench-share-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	modelFile := o.ModelFile
	if modelFile == "" {
		modelFile = filepath.Join(dir, "sd1"+dtypeOr(o.DType).Ext())
		fmt.Fprintf(progress, "writing a random-weight SD 1.x checkpoint (%s)...\n", dtypeOr(o.DType))
		if err := sd1.Layout(false)[0].WriteFile(modelFile, sd1.Options{Seed: 1, DType: o.DType}, nil); err != nil {
			return nil, fmt.Errorf("write the SD 1.x checkpoint: %w", err)
		}
	}
	cl, s3cfg, stopS3, err := startS3(ctx, o.S3, dir, "genfleet-models", "genfleet-outputs")
	if err != nil {
		return nil, err
	}
	defer stopS3()
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: "genfleet-models"}}
	fmt.Fprintf(progress, "pushing %s and importing it into the cache...\n", filepath.Base(modelFile))
	man, err := reg.PushModel(ctx, "bench-share", "sdcpp", []modelcache.PushFile{{
		Path: modelFile, Role: "model", Dest: s3x.URL{Bucket: "genfleet-models", Key: "blobs/bench-share/"},
	}}, nil)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "cache")
	cache, err := modelcache.Open(root, nil)
	if err != nil {
		return nil, err
	}
	digest, err := cache.Import(ctx, modelFile)
	if err != nil {
		return nil, err
	}
	if digest != man.Files[0].Digest {
		return nil, fmt.Errorf("imported %s as %s, but the registry has %s", modelFile, digest, man.Files[0].Digest)
	}
	if o.ModelFile == "" {
		os.Remove(modelFile)
	}
	blob, err := blobPath(cache, digest)
	if err != nil {
		return nil, err
	}

	r := &shareEngineRun{
		o: o, self: self, server: server, root: root, blob: blob, size: man.Files[0].Size, redisOpt: redisOpt,
		env: []string{
			"GENFLEET_REDIS=" + redisAddr,
			"GENFLEET_S3_ENDPOINT=" + s3cfg.Endpoint, "GENFLEET_S3_REGION=us-east-1",
			"GENFLEET_S3_ACCESS_KEY=" + s3cfg.AccessKey, "GENFLEET_S3_SECRET_KEY=" + s3cfg.SecretKey,
			"GENFLEET_S3_PATH_STYLE=true",
			"GENFLEET_REGISTRY=s3://genfleet-models/", "GENFLEET_OUTPUTS=s3://genfleet-outputs/outputs/",
			"GENFLEET_LOG_LEVEL=info", // the engine server's start is an info line
		},
		progress: progress,
	}
	res := &ShareEngineResult{Engine: "sdcpp", EngineServer: filepath.Base(server), SizeBytes: r.size, Procs: o.Procs}
	for _, mmap := range []bool{true, false} {
		m, err := r.run(ctx, mmap)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", modeName(mmap), err)
		}
		ratio := round3(float64(m.pss) / float64(r.size))
		fmt.Fprintf(progress, "%s: %d engines, summed PSS %s (%.2f× the model; the model file's mappings %s), own memory %s each; start %.0f ms, load %.0f ms, first answer %.0f ms, CPU to the first answer %.0f ms (medians)\n",
			modeName(mmap), o.Procs, units.FormatSize(m.pss), ratio, units.FormatSize(m.modelPSS), units.FormatSize(m.own), m.startMS, m.loadMS, m.firstAnswerMS, m.cpuMS)
		if mmap {
			res.MmapPSSBytes, res.MmapRSSBytes, res.MmapPSSRatio = m.pss, m.rss, ratio
			res.MmapModelPSSBytes, res.MmapOwnBytes, res.MmapWorkerPSSBytes = m.modelPSS, m.own, m.workerPSS
			res.MmapStartMS, res.MmapLoadMS, res.MmapFirstAnswerMS, res.MmapFirstJobCPUMS = m.startMS, m.loadMS, m.firstAnswerMS, m.cpuMS
		} else {
			res.NoMmapPSSBytes, res.NoMmapRSSBytes, res.NoMmapPSSRatio = m.pss, m.rss, ratio
			res.NoMmapModelPSSBytes, res.NoMmapOwnBytes, res.NoMmapWorkerPSSBytes = m.modelPSS, m.own, m.workerPSS
			res.NoMmapStartMS, res.NoMmapLoadMS, res.NoMmapFirstAnswerMS, res.NoMmapFirstJobCPUMS = m.startMS, m.loadMS, m.firstAnswerMS, m.cpuMS
		}
	}
	res.TargetsMet = float64(res.MmapPSSBytes) <= ShareEngineTarget*float64(res.SizeBytes)
	return res, nil
}

func dtypeOr(d sd1.DType) sd1.DType {
	if d == "" {
		return sd1.F16
	}
	return d
}

func modeName(mmap bool) string {
	if mmap {
		return "--mmap"
	}
	return "without --mmap"
}

// blobPath returns the path of the cached blob digest.
func blobPath(c *modelcache.Cache, digest string) (string, error) {
	blobs, err := c.List()
	if err != nil {
		return "", err
	}
	for _, b := range blobs {
		if b.Digest == digest {
			return b.Path, nil
		}
	}
	return "", fmt.Errorf("blob %s not in the cache after its import", digest)
}

// shareEngineRun is ShareEngine's setup, shared by its two modes.
type shareEngineRun struct {
	o        ShareEngineOptions
	self     string
	server   string // absolute path of sd-server
	root     string // the cache the workers share
	blob     string // the model's blob in it
	size     int64
	redisOpt asynq.RedisConnOpt
	env      []string
	progress io.Writer
}

// shareWorker is one worker process of a mode and what it logged.
type shareWorker struct {
	host string
	cmd  *exec.Cmd
	log  *engineStartLog
}

// run measures one mode: it warms the page cache with the blob, starts
// the workers, runs one job on each (one at a time, so that each engine's
// start is timed on otherwise idle cores), then reads the memory of the
// engine processes while they hold the model, and stops everything.
func (r *shareEngineRun) run(ctx context.Context, mmap bool) (m engineMode, err error) {
	if err := readAll(r.blob); err != nil {
		return m, err
	}
	label := "mmap"
	if !mmap {
		label = "nommap"
	}
	var workers []*shareWorker
	engines := map[int]string{} // pid → its start time (procStart)
	defer func() {
		for _, w := range workers {
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, w := range workers {
			_ = w.cmd.Wait()
		}
		// A worker stops its engine servers on SIGTERM; one that could not
		// (it died first) leaves them to us. The start time tells an engine
		// from a later process that got its pid.
		for pid, started := range engines {
			if now, err := procStart(pid); err == nil && now == started {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}()
	for i := range r.o.Procs {
		host := fmt.Sprintf("share-%s-%d", label, i+1)
		w := &shareWorker{host: host, log: &engineStartLog{}}
		w.cmd = exec.Command(r.self, "worker", "--cache-dir", r.root, "--host-id", host,
			"--backend", "sdcpp", "--sdcpp-mode", "server", "--sdcpp-server", r.server,
			"--sdcpp-args", r.o.EngineArgs, "--sdcpp-mmap="+strconv.FormatBool(mmap), "--sdcpp-keep-alive", "24h",
			"--metrics-listen", "", "--heartbeat-interval", "250ms", "--shutdown-timeout", "5s")
		w.cmd.Env = append(os.Environ(), r.env...)
		if r.o.Verbose {
			w.log.copy = lineprefix.New(r.progress, host+" | ")
		}
		w.cmd.Stderr = w.log
		w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := w.cmd.Start(); err != nil {
			return m, err
		}
		workers = append(workers, w)
	}
	rdb := r.redisOpt.MakeRedisClient().(redis.UniversalClient)
	defer rdb.Close()
	if err := waitForHosts(ctx, rdb, len(workers), 30*time.Second); err != nil {
		return m, err
	}
	client := asynq.NewClient(r.redisOpt)
	defer client.Close()
	store := job.NewStore(rdb)
	var starts, loads, answers []float64
	for i, w := range workers {
		rec, err := r.runJob(ctx, client, store, w.host, fmt.Sprintf("bench-share-%s-%d-%d", label, i+1, time.Now().UnixNano()), i)
		if err != nil {
			return m, fmt.Errorf("worker %s: %w", w.host, err)
		}
		start, ok := w.log.startMS()
		if !ok {
			return m, fmt.Errorf("worker %s ran its job but logged no engine server start", w.host)
		}
		starts, loads, answers = append(starts, start), append(loads, rec.Timings["engine_load"]), append(answers, rec.Timings["generate"])
		fmt.Fprintf(r.progress, "%s: %s: engine started in %.0f ms, loaded its weights in %.0f ms (its log), first image after %.0f ms\n",
			modeName(mmap), w.host, start, rec.Timings["engine_load"], rec.Timings["generate"])
	}
	var cpus []float64
	for _, w := range workers {
		pids, err := descendants(w.cmd.Process.Pid)
		if err != nil {
			return m, err
		}
		if len(pids) == 0 {
			return m, fmt.Errorf("worker %s has no engine process after its job", w.host)
		}
		var cpu float64
		for _, pid := range pids {
			if engines[pid], err = procStart(pid); err != nil {
				return m, fmt.Errorf("engine process %d of worker %s: %w", pid, w.host, err)
			}
			ms, err := procCPUMS(pid)
			if err != nil {
				return m, fmt.Errorf("engine process %d of worker %s: %w", pid, w.host, err)
			}
			cpu += ms
			pss, rss, err := smapsRollup(pid)
			if err != nil {
				return m, fmt.Errorf("engine process %d of worker %s: %w", pid, w.host, err)
			}
			model, err := mappedPSS(pid, r.blob)
			if err != nil {
				return m, fmt.Errorf("engine process %d of worker %s: %w", pid, w.host, err)
			}
			m.pss, m.rss, m.modelPSS = m.pss+pss, m.rss+rss, m.modelPSS+model
			fmt.Fprintf(r.progress, "%s: %s: engine process %d: PSS %s, of which the model file %s; CPU %.0f ms\n",
				modeName(mmap), w.host, pid, units.FormatSize(pss), units.FormatSize(model), ms)
		}
		cpus = append(cpus, cpu)
		pss, _, err := smapsRollup(w.cmd.Process.Pid)
		if err != nil {
			return m, fmt.Errorf("worker %s: %w", w.host, err)
		}
		m.workerPSS += pss
	}
	m.own = (m.pss - m.modelPSS) / int64(len(engines))
	m.startMS, m.loadMS, m.firstAnswerMS = round1(median(starts)), round1(median(loads)), round1(median(answers))
	m.cpuMS = round1(median(cpus))
	return m, nil
}

// runJob enqueues one job for the bench's model on host's queue and waits
// for it to succeed there.
func (r *shareEngineRun) runJob(ctx context.Context, client *asynq.Client, store *job.Store, host, id string, seed int) (*job.Record, error) {
	task, opts, err := job.NewTask(id, job.Request{
		Model: "bench-share", Prompt: "a lovely cat", Seed: int64(seed),
		Width: shareEngineWidth, Height: shareEngineHeight, Steps: shareEngineSteps,
	}, "sdcpp", asynq.Queue(job.HostQueue(host)))
	if err != nil {
		return nil, err
	}
	if _, err := client.EnqueueContext(ctx, task, opts...); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(r.o.JobTimeout)
	for {
		rec, err := store.Get(ctx, id)
		if err == nil && rec.Status.Terminal() {
			switch {
			case rec.Status != job.StatusSucceeded:
				return nil, fmt.Errorf("job %s ended %s: %s", id, rec.Status, rec.Error)
			case rec.Worker == nil || rec.Worker.Host != host:
				return nil, fmt.Errorf("job %s ran on %+v, not on %s", id, rec.Worker, host)
			}
			return rec, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s not done after %v", id, r.o.JobTimeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitForHosts waits until n hosts send heartbeats.
func waitForHosts(ctx context.Context, rdb redis.UniversalClient, n int, timeout time.Duration) error {
	fleet := job.NewFleet(rdb)
	for deadline := time.Now().Add(timeout); ; {
		hbs, err := fleet.Heartbeats(ctx)
		if err == nil && len(scheduler.MergeHeartbeats(hbs)) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d workers did not all start heartbeating within %v", n, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// engineStartLog is a worker's stderr: it keeps the start time of the
// first engine server the worker logged ("engine server ready …
// start_ms=N") and copies every line to copy when that is set.
type engineStartLog struct {
	copy io.Writer

	mu      sync.Mutex
	partial []byte
	start   float64
	started bool
}

var engineReadyRE = regexp.MustCompile(`msg="engine server ready".* start_ms=(\d+)`)

func (l *engineStartLog) Write(b []byte) (int, error) {
	if l.copy != nil {
		l.copy.Write(b)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		if m := engineReadyRE.FindSubmatch(l.partial[:i]); m != nil && !l.started {
			l.start, _ = strconv.ParseFloat(string(m[1]), 64)
			l.started = true
		}
		l.partial = l.partial[i+1:]
	}
	return len(b), nil
}

// startMS returns the first engine server's start time in milliseconds and
// whether the worker logged one.
func (l *engineStartLog) startMS() (float64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.start, l.started
}

// readAll reads the file at path once, so that its pages are in the page
// cache.
func readAll(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}

// descendants returns the process ids of pid's children, their children
// and so on, from /proc.
func descendants(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fs, err := procStat(child)
		if err != nil || len(fs) < 2 {
			continue // it exited
		}
		if ppid, err := strconv.Atoi(fs[1]); err == nil {
			children[ppid] = append(children[ppid], child)
		}
	}
	var out []int
	for queue := children[pid]; len(queue) > 0; queue = queue[1:] {
		out = append(out, queue[0])
		queue = append(queue, children[queue[0]]...)
	}
	return out, nil
}

// mappedPSS returns the Pss of pid's mappings of the file at path, from
// /proc/PID/smaps; mappings are matched by the file's inode and name.
func mappedPSS(pid int, path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	ino := strconv.FormatUint(st.Ino, 10)
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var pss int64
	in := false // the current mapping is of the file
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		if !strings.HasSuffix(fs[0], ":") { // a mapping's header: range perms offset dev inode [path]
			in = len(fs) >= 6 && fs[4] == ino && filepath.Base(fs[5]) == filepath.Base(path)
			continue
		}
		if in && fs[0] == "Pss:" && len(fs) == 3 {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			pss += kb << 10
		}
	}
	return pss, sc.Err()
}

// procStart returns process pid's start time (field 22 of
// /proc/PID/stat, in clock ticks since boot).
func procStart(pid int) (string, error) {
	fs, err := procStat(pid)
	if err != nil {
		return "", err
	}
	if len(fs) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fs))
	}
	return fs[19], nil
}

// clockTicks is the unit of the CPU times in /proc/PID/stat, USER_HZ,
// which Linux fixes at 100 for user space on every architecture it runs on.
const clockTicks = 100

// procCPUMS returns the CPU time, user and system, of process pid (all its
// threads, those that ended included) in milliseconds.
func procCPUMS(pid int) (float64, error) {
	fs, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(fs) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fs))
	}
	utime, err1 := strconv.ParseInt(fs[11], 10, 64) // fields 14 and 15
	stime, err2 := strconv.ParseInt(fs[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return float64(utime+stime) * 1000 / clockTicks, nil
}

// procStat returns the fields of /proc/PID/stat after the command name
// (state, ppid, …), which may hold spaces and parentheses.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])), nil
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
