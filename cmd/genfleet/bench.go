package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/bench"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
)

// benchFunc runs one benchmark. It prints progress to stderr and returns
// the result object, which cmdBench prints as the last line of stdout.
type benchFunc func(ctx context.Context, args []string, stderr io.Writer) (map[string]any, error)

type benchEntry struct {
	summary string
	fn      benchFunc
}

// benches is filled by each bench_*.go file's init.
var benches = map[string]benchEntry{}

func registerBench(name, summary string, fn benchFunc) {
	if _, dup := benches[name]; dup {
		panic("bench registered twice: " + name)
	}
	benches[name] = benchEntry{summary, fn}
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

// cmdBench runs a benchmark. With --json the last line of stdout is one
// JSON object; without it the result is printed as "key: value" lines.
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		benchUsage(stderr)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	b, ok := benches[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "unknown benchmark %q\n\n", args[0])
		benchUsage(stderr)
		return errUsage
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
	res, err := b.fn(ctx, rest, stderr)
	if err != nil {
		return err
	}
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

func init() {
	registerBench("verify", "first use of a cached model after boot (--verify per-boot re-hash) vs read() into private memory (anchor)", benchVerify)
}

// benchVerify runs bench.Verify: genfleet bench verify [--size 2GiB] [--runs 3] [--dir DIR].
func benchVerify(ctx context.Context, args []string, stderr io.Writer) (map[string]any, error) {
	f := newFlags("bench verify", stderr)
	sizeStr := f.String("size", "2GiB", "model size")
	runs := f.Int("runs", 3, "measurements of each kind (the median counts)")
	dir := f.String("dir", "", "parent directory of the temporary cache (default: the system temp dir)")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	size, err := parseSize(*sizeStr)
	if err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	res, err := bench.Verify(ctx, bench.VerifyOptions{Size: size, Runs: *runs, Dir: *dir}, stderr)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(res)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	return out, json.Unmarshal(b, &out)
}

// benchS3 returns an S3 client for a benchmark: see benchS3Config.
func benchS3(ctx context.Context, c *common, dir string, buckets ...string) (cl *s3.Client, stop func(), err error) {
	cl, _, stop, err = benchS3Config(ctx, c, dir, buckets...)
	return cl, stop, err
}

// benchS3Config returns an S3 client for a benchmark and the settings to
// reach the same server from another process: the server at c.s3Endpoint
// when one was given, else a versitygw started from PATH on a free loopback
// port with its data in a temporary directory (dir, when not empty, chooses
// the parent so the bench can put it on the disk it measures). stop stops
// what it started and removes its files.
func benchS3Config(ctx context.Context, c *common, dir string, buckets ...string) (cl *s3.Client, cfg s3x.Config, stop func(), err error) {
	if *c.s3Endpoint != "" {
		cl, err := c.s3Client(ctx)
		if err != nil {
			return nil, cfg, nil, err
		}
		for _, b := range buckets {
			if err := s3x.EnsureBucket(ctx, cl, b); err != nil {
				return nil, cfg, nil, err
			}
		}
		return cl, c.s3Config(), func() {}, nil
	}
	tmp, err := os.MkdirTemp(dir, "genfleet-bench-s3-")
	if err != nil {
		return nil, cfg, nil, err
	}
	srv, err := testenv.StartS3(ctx, tmp, buckets...)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, cfg, nil, fmt.Errorf("start versitygw for the benchmark (or pass --s3-endpoint): %w", err)
	}
	return srv.Client, srv.Config, func() { srv.Stop(); os.RemoveAll(tmp) }, nil
}

// median returns the median of xs (the mean of the middle two for an even
// count; 0 for none).
func median[T ~int64 | ~float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
