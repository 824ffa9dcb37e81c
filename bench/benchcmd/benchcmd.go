// Package benchcmd is genfleet's bench command: each benchmark of package
// bench with its flags, and the printing of its result.
package benchcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/backends/cuda"
	"github.com/genfleet/genfleet/backends/sdcpp/sd1"
	"github.com/genfleet/genfleet/bench"
	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/internal/envflag"
)

// benchFunc parses one benchmark's flags from args into its options (the
// benchX functions below, one per benchmark) and runs it with progress to
// stderr. It returns the benchmark's result struct, which cmdBench prints:
// with --json as one JSON object, the last line of stdout.
type benchFunc func(ctx context.Context, args []string, stderr io.Writer) (any, error)

type benchEntry struct {
	summary string
	fn      benchFunc
}

// benches are the benchmarks of package bench, each with the function
// that parses its flags and runs it.
var benches = map[string]benchEntry{
	"batch":   {"one job of n images vs n jobs of one image on one worker (anchor): what a shared acquire and job saves per image", benchBatch},
	"chaos":   {"jobs through the API to worker processes of one host, one SIGKILLed and restarted every few seconds: every job ends once, with the right image", benchChaos},
	"fetch":   {"cold fetch S3 → verified blob vs the SDK transfer manager and fsync'ed disk writes (anchors)", benchFetch},
	"load":    {"warm acquire: shared mmap vs read() into private memory (anchor)", benchLoad},
	"queue":   {"no-op jobs through the API and genfleet workers vs raw asynq on the same Redis; the batch endpoint vs asynq's Enqueue loop; idle start latency", benchQueue},
	"routing": {"2 hosts, 2 models, cache budget for one: model loads with routing vs plain asynq", benchRouting},
	"share":   {"N processes on one model: summed PSS with mmap vs read mode; --backend sdcpp: N stable-diffusion.cpp servers, --mmap vs without, and their warm start", benchShare},
	"sim":     {"trace-driven simulation of 1,000 hosts and 100 models: S3 bytes, time to warm and cold starts with S3 only (anchor), peers, peers + warmth-aware scaling (and S3 only + warmth-aware scaling)", benchSim},
	"spread":  {"N hosts cold-start one model against throttled S3: S3 bytes and time until all warm with peers vs S3 only and one host alone (anchors)", benchSpread},
	"upload":  {"weights from a warm file mapping to the GPU: naive, genfleet's upload, the pinned ceiling (needs a CUDA driver)", benchUpload},
	"verify":  {"first use of a cached model after boot (--verify per-boot re-hash) vs read() into private memory (anchor)", benchVerify},
}

// A holder process of genfleet bench share, and a host of genfleet bench
// spread, is this binary started again.
func init() {
	bench.ShareChild()
	bench.SpreadChild()
}

func benchUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: genfleet bench NAME [flags] [--json]")
	fmt.Fprintln(w, "\nBenchmarks (each compares against its anchor in the same run):")
	names := make([]string, 0, len(benches))
	for n := range benches {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, benches[n].summary)
	}
}

// Run runs genfleet bench with args (the benchmark's name and flags). With --json the last line of stdout is one
// JSON object; without it the result is printed as "key: value" lines.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		benchUsage(stderr)
		if len(args) == 0 {
			return cli.ErrUsage
		}
		return nil
	}
	b, ok := benches[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "unknown benchmark %q\n\n", args[0])
		benchUsage(stderr)
		return cli.ErrUsage
	}
	asJSON := false
	rest := make([]string, 0, len(args))
	for _, a := range args[1:] {
		if a == "--json" || a == "-json" {
			asJSON = true
			continue
		}
		rest = append(rest, a)
	}
	start := time.Now()
	out, err := b.fn(ctx, rest, stderr)
	if err != nil {
		return err
	}
	res := resultFields(out)
	res["bench"] = args[0]
	res["wall_s"] = time.Since(start).Seconds()
	res["cpus"] = runtime.NumCPU()
	res["goos"], res["goarch"] = runtime.GOOS, runtime.GOARCH
	if asJSON {
		line, err := json.Marshal(res)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, string(line))
		return err
	}
	keys := make([]string, 0, len(res))
	for k := range res {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(stdout, "%s: %v\n", k, res[k])
	}
	return nil
}

// resultFields returns the fields of a benchmark's result struct by the
// names, and with the values, that encoding/json gives them: a field
// tagged "-" is left out, an omitempty one when it is empty, a pointer
// stands for its value. The Go values are kept, so the text output prints
// each as %v always has.
func resultFields(res any) map[string]any {
	v := reflect.Indirect(reflect.ValueOf(res))
	t := v.Type()
	out := make(map[string]any, t.NumField())
	for i := range t.NumField() {
		name, opts, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "-" || !t.Field(i).IsExported() {
			continue
		}
		if name == "" {
			name = t.Field(i).Name
		}
		fv := v.Field(i)
		if slices.Contains(strings.Split(opts, ","), "omitempty") && emptyValue(fv) {
			continue
		}
		if fv.Kind() == reflect.Pointer {
			if fv.IsNil() {
				out[name] = nil
				continue
			}
			fv = fv.Elem()
		}
		out[name] = fv.Interface()
	}
	return out
}

// emptyValue is encoding/json's test for omitempty.
func emptyValue(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Interface, reflect.Pointer:
		return v.IsNil()
	}
	return v.IsZero()
}

func benchChaos(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench chaos", stderr)
	c := cli.AddCommon(f)
	var o bench.ChaosOptions
	f.IntVar(&o.Jobs, "jobs", 300, "jobs to submit through the API (64×64, distinct seeds)")
	f.IntVar(&o.Workers, "workers", 3, "worker processes sharing one cache directory (one host)")
	f.IntVar(&o.Steps, "steps", 200, "steps per job (each sweeps the whole model: enough that kills land mid-job)")
	size := f.String("size", "4MiB", "model size")
	f.DurationVar(&o.KillEvery, "kill-every", 2*time.Second, "SIGKILL one worker (a busy one when any is busy) and restart it this often")
	f.IntVar(&o.MaxKills, "max-kills", 0, "stop killing after this many kills (0: kill until every job has left its queue once)")
	f.DurationVar(&o.Deadline, "deadline", 5*time.Minute, "a job not terminal this long after the last submit is lost (a killed job comes back only after asynq's lease recovery: 60–120s)")
	f.BoolVar(&o.Verbose, "v", false, "copy worker logs to stderr")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.ModelSize, err = cli.ParseSize(*size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	if o.Redis, err = benchRedisOpt(f, c); err != nil {
		return nil, err
	}
	o.S3 = c.S3Config()
	return bench.Chaos(ctx, o, stderr)
}

func benchFetch(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench fetch", stderr)
	c := cli.AddCommon(f)
	var o bench.FetchOptions
	size := f.String("size", "2GiB", "model size")
	f.IntVar(&o.Runs, "runs", 5, "timed runs of each contender (the median counts)")
	f.StringVar(&o.Dir, "dir", "", "parent directory of the temporary files, on the disk to measure (default: the system temp dir)")
	partSize := f.String("part-size", "", "genfleet part size (default: modelcache's default)")
	f.IntVar(&o.Concurrency, "concurrency", 0, "genfleet GETs in flight (default: modelcache's default)")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.Size, err = cli.ParseSize(*size); err != nil || o.Size <= 0 {
		return nil, fmt.Errorf("--size: bad size %q", *size)
	}
	if *partSize != "" {
		if o.PartSize, err = cli.ParseSize(*partSize); err != nil {
			return nil, fmt.Errorf("--part-size: %w", err)
		}
	}
	o.S3 = c.S3Config()
	return bench.Fetch(ctx, o, stderr)
}

func benchLoad(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench load", stderr)
	var o bench.LoadOptions
	size := f.String("size", "2GiB", "model size")
	f.IntVar(&o.Runs, "runs", 5, "timed acquisitions per mode (the best counts)")
	f.StringVar(&o.Dir, "dir", "", "parent directory of the temporary cache (default: the system temp dir)")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.Size, err = cli.ParseSize(*size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	return bench.Load(ctx, o, stderr)
}

func benchQueue(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench queue", stderr)
	c := cli.AddCommon(f)
	var o bench.QueueOptions
	f.IntVar(&o.Jobs, "jobs", 10000, "no-op jobs per side and round")
	f.IntVar(&o.Rounds, "rounds", 5, "rounds, each raw asynq then genfleet; the figures are medians over rounds")
	f.IntVar(&o.Concurrency, "concurrency", 4, "worker concurrency (both sides)")
	f.IntVar(&o.Clients, "clients", 8, "concurrent submitters (both sides)")
	f.IntVar(&o.IdleJobs, "idle-jobs", 50, "jobs submitted one at a time to an idle fleet for the start-latency figures (cycling through the priorities)")
	f.IntVar(&o.BatchJobs, "batch-jobs", 30000, "jobs per round through POST /v1/jobs:batch against raw asynq's Client.Enqueue loop (enqueue only); 0 skips that phase")
	f.IntVar(&o.BatchSize, "batch-size", 1000, "jobs per POST /v1/jobs:batch (at most 1000)")
	f.StringVar(&o.Client, "client", bench.QueueClientLean, "how the submitters talk to the API: lean (one keep-alive HTTP/1.1 connection each, like wrk) or net/http (Go's http.Client)")
	cpuProfile := f.String("cpuprofile", "", "write a CPU profile of the first round's genfleet phase (API, worker and submitters) to this file")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.Redis, err = benchRedisOpt(f, c); err != nil {
		return nil, err
	}
	o.S3 = c.S3Config()
	if *cpuProfile != "" {
		profile, err := os.Create(*cpuProfile)
		if err != nil {
			return nil, err
		}
		defer profile.Close()
		o.CPUProfile = profile
	}
	return bench.Queue(ctx, o, stderr)
}

func benchBatch(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench batch", stderr)
	c := cli.AddCommon(f)
	var o bench.BatchOptions
	size := f.String("size", "16MiB", "size of the reference model")
	f.IntVar(&o.Images, "images", 8, "n: images in the batch job, and one-image jobs in the anchor")
	f.IntVar(&o.Width, "width", 256, "image width")
	f.IntVar(&o.Height, "height", 256, "image height")
	f.IntVar(&o.Steps, "steps", 2, "steps per image")
	f.IntVar(&o.Rounds, "rounds", 3, "rounds, each one batch job and n single jobs; the figures are medians over rounds")
	backend := f.String("backend", "cpu", "cpu (the built-in engine) or sdcpp (stable-diffusion.cpp, with the --sdcpp-… flags and --model)")
	sf := cli.AddSdcppFlags(f)
	f.StringVar(&o.SdcppModel, "model", "", "model file for --backend sdcpp, e.g. one `genfleet models make --arch sd1` wrote")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.ModelSize, err = cli.ParseSize(*size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	switch *backend {
	case "cpu":
	case "sdcpp":
		cfg := sf.Config(nil)
		cfg.DeviceClass = "sdcpp" // the pool the benchmark's scheduler sends sdcpp jobs to
		o.Sdcpp = &cfg
	default:
		return nil, fmt.Errorf("--backend %q: want cpu or sdcpp", *backend)
	}
	if o.Redis, err = benchRedisOpt(f, c); err != nil {
		return nil, err
	}
	o.S3 = c.S3Config()
	return bench.Batch(ctx, o, stderr)
}

func benchRouting(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench routing", stderr)
	c := cli.AddCommon(f)
	var o bench.RoutingOptions
	size := f.String("size", "64MiB", "size of each of the two models")
	f.IntVar(&o.Jobs, "jobs", 40, "jobs, alternating between the two models")
	f.IntVar(&o.InFlight, "inflight", 2, "jobs in flight at once")
	f.IntVar(&o.Steps, "steps", 2, "steps per job")
	f.BoolVar(&o.Verbose, "v", false, "print each job: model, cache hit, host that ran it, route reason")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.ModelSize, err = cli.ParseSize(*size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	if o.Redis, err = benchRedisOpt(f, c); err != nil {
		return nil, err
	}
	if o.Redis != nil {
		o.WorkerRedis = *c.Redis
	}
	o.S3 = c.S3Config()
	return bench.Routing(ctx, o, stderr)
}

func benchShare(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench share", stderr)
	backend := f.String("backend", "builtin", "whose processes share the model: builtin (holder processes of genfleet's model cache, mmap vs read mode) "+
		"or sdcpp (worker processes, each with a stable-diffusion.cpp server on one cached model, the engine's --mmap vs without)")
	procs := f.Int("procs", 4, "processes per mode (with --backend sdcpp the default is 3)")
	dir := f.String("dir", "", "parent directory of the temporary files (default: the system temp dir)")
	size := f.String("size", "1GiB", "model size (--backend builtin)")
	c := cli.AddCommon(f)
	var eo bench.ShareEngineOptions
	f.StringVar(&eo.Server, "sdcpp-server", envflag.Or("GENFLEET_SDCPP_SERVER", "sd-server"), "stable-diffusion.cpp server program, path or name in PATH (--backend sdcpp) (env GENFLEET_SDCPP_SERVER)")
	f.StringVar(&eo.EngineArgs, "sdcpp-args", envflag.Or("GENFLEET_SDCPP_ARGS", ""), "extra engine flags, e.g. \"--threads 2\" (--backend sdcpp) (env GENFLEET_SDCPP_ARGS)")
	f.StringVar(&eo.ModelFile, "model-file", "", "model file the engines load as --model (--backend sdcpp; default: a random-weight SD 1.x checkpoint written for the run)")
	dtype := f.String("dtype", string(sd1.F16), "type of the SD 1.x checkpoint written when there is no --model-file: f16, q8_0 or q4_0 (--backend sdcpp)")
	f.DurationVar(&eo.JobTimeout, "job-timeout", 10*time.Minute, "longest one job may take, submit to finished (--backend sdcpp)")
	f.BoolVar(&eo.Verbose, "v", false, "copy the workers' logs to stderr (--backend sdcpp)")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	set := f.Visited()
	switch *backend {
	case "builtin":
		for _, name := range []string{"sdcpp-server", "sdcpp-args", "model-file", "dtype", "job-timeout", "v", "redis", "s3-endpoint"} {
			if set[name] {
				return nil, fmt.Errorf("--%s applies to --backend sdcpp only", name)
			}
		}
		o := bench.ShareOptions{Procs: *procs, Dir: *dir}
		var err error
		if o.Size, err = cli.ParseSize(*size); err != nil {
			return nil, fmt.Errorf("--size: %w", err)
		}
		return bench.Share(ctx, o, stderr)
	case "sdcpp":
		if set["size"] {
			return nil, errors.New("--size applies to --backend builtin only: the engine runs the model of --model-file, or an SD 1.x checkpoint whose size follows from --dtype")
		}
		eo.Procs, eo.Dir = *procs, *dir
		if !set["procs"] {
			eo.Procs = 3
		}
		var err error
		if eo.DType, err = sd1.ParseDType(*dtype); err != nil {
			return nil, fmt.Errorf("--dtype: %w", err)
		}
		if eo.Redis, err = benchRedisOpt(f, c); err != nil {
			return nil, err
		}
		if eo.Redis != nil {
			eo.WorkerRedis = *c.Redis
		}
		eo.S3 = c.S3Config()
		return bench.ShareEngine(ctx, eo, stderr)
	}
	return nil, fmt.Errorf("--backend %q: want builtin or sdcpp", *backend)
}

func benchSpread(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench spread", stderr)
	var o bench.SpreadOptions
	f.IntVar(&o.Hosts, "hosts", 8, "hosts (processes with their own cache and blob server) that cold-start the model at once")
	size := f.String("size", "2GiB", "model size")
	partSize := f.String("part-size", "", "part size of the model's part digests (default: models push's, 16MiB)")
	s3bw := f.String("s3-bandwidth", "200MB", "what the S3 server may send to all hosts together, per second (a throttling proxy in front of it)")
	peerbw := f.String("peer-bandwidth", "250MB", "what each host's blob server may send, per second; 0: no cap")
	f.BoolVar(&o.Faults, "faults", false, "also run the faults: the host pulling from S3 SIGKILLed mid-transfer, and a peer serving corrupt parts")
	f.BoolVar(&o.Verbose, "v", false, "copy the hosts' logs to stderr")
	f.StringVar(&o.Dir, "dir", "", "parent directory of the temporary files: S3's data and every host's cache, about (hosts + 1) × size (default: the system temp dir)")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.Size, err = cli.ParseSize(*size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	if *partSize != "" {
		if o.PartSize, err = cli.ParseSize(*partSize); err != nil {
			return nil, fmt.Errorf("--part-size: %w", err)
		}
	}
	bw, err := cli.ParseSize(*s3bw)
	if err != nil || bw <= 0 {
		return nil, fmt.Errorf("--s3-bandwidth %q: want bytes per second, e.g. 200MB", *s3bw)
	}
	o.S3Bandwidth = float64(bw)
	o.PeerBandwidth = -1
	if *peerbw != "0" {
		bw, err := cli.ParseSize(*peerbw)
		if err != nil || bw <= 0 {
			return nil, fmt.Errorf("--peer-bandwidth %q: want bytes per second, e.g. 250MB, or 0", *peerbw)
		}
		o.PeerBandwidth = float64(bw)
	}
	return bench.Spread(ctx, o, stderr)
}

func benchSim(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench sim", stderr)
	var o bench.SimOptions
	f.IntVar(&o.Hosts, "hosts", 1000, "most hosts the simulated fleet may have")
	f.IntVar(&o.Models, "models", 100, "models in the trace (three launched models are added)")
	f.Float64Var(&o.Duration, "duration", 3600, "trace length, seconds")
	s3bw := f.String("s3-bandwidth", "25GB", "S3's bandwidth to the whole fleet, per second")
	peerbw := f.String("peer-bandwidth", "1GB", "what each host serves its peers, per second")
	f.Uint64Var(&o.Seed, "seed", 1, "trace seed")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	for _, bw := range []struct {
		flag, v string
		to      *float64
	}{{"--s3-bandwidth", *s3bw, &o.S3Bandwidth}, {"--peer-bandwidth", *peerbw, &o.PeerBandwidth}} {
		n, err := cli.ParseSize(bw.v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s %q: want bytes per second, e.g. 25GB", bw.flag, bw.v)
		}
		*bw.to = float64(n)
	}
	return bench.Sim(ctx, o, stderr)
}

func benchUpload(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench upload", stderr)
	var o bench.UploadOptions
	size := f.String("size", "4GiB", "model size")
	f.StringVar(&o.Dir, "dir", "", "directory for the model file (default: the system temp directory)")
	strategy := f.String("strategy", "auto", "genfleet's upload strategy: auto, staged, registered or naive")
	f.IntVar(&o.Reps, "reps", 3, "timed repetitions of each copy; the best is reported")
	f.IntVar(&o.Threads, "threads", 0, "staging workers of genfleet's upload (default: GENFLEET_CUDA_UPLOAD_THREADS, else min(CPUs, 8))")
	sweep := f.String("sweep-threads", "", "also time the staged upload with each of these worker counts, e.g. 1,2,4,8,16")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.Size, err = cli.ParseSize(*size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	if o.Strategy, err = cuda.ParseStrategy(*strategy); err != nil {
		return nil, fmt.Errorf("--strategy: %w", err)
	}
	if o.SweepThreads, err = parseCounts(*sweep); err != nil {
		return nil, fmt.Errorf("--sweep-threads: %w", err)
	}
	return bench.Upload(ctx, o, stderr)
}

func benchVerify(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := cli.NewFlags("bench verify", stderr)
	var o bench.VerifyOptions
	size := f.String("size", "2GiB", "model size")
	f.IntVar(&o.Runs, "runs", 3, "measurements of each kind (the median counts)")
	f.StringVar(&o.Dir, "dir", "", "parent directory of the temporary cache (default: the system temp dir)")
	if err := f.ParseArgs(args, 0); err != nil {
		return nil, err
	}
	var err error
	if o.Size, err = cli.ParseSize(*size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	return bench.Verify(ctx, o, stderr)
}

// parseCounts parses a comma-separated list of counts in 1..256; "" is
// none.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 256 {
			return nil, fmt.Errorf("%q: want counts in 1..256, comma-separated", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchRedisOpt is the Redis a benchmark runs on: --redis when given on
// the command line, else nil, and the benchmark starts a redis-server of
// its own. Only the command line counts, not GENFLEET_REDIS.
func benchRedisOpt(f cli.Flags, c *cli.Common) (asynq.RedisConnOpt, error) {
	if !f.Visited()["redis"] {
		return nil, nil
	}
	return c.RedisOpt()
}
