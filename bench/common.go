package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/modelcache"
)

// startRedis returns the Redis to benchmark on: opt when not nil, else a
// redis-server started for the run. stop stops what it started.
func startRedis(opt asynq.RedisConnOpt) (_ asynq.RedisConnOpt, stop func(), _ error) {
	if opt != nil {
		return opt, func() {}, nil
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

// startWorkerRedis is startRedis for a benchmark whose worker processes
// need a --redis: workerAddr when set, else the address of the Redis
// started or given (which must then be a plain address). bench names the
// benchmark in the error.
func startWorkerRedis(opt asynq.RedisConnOpt, workerAddr, bench string) (_ asynq.RedisConnOpt, addr string, stop func(), _ error) {
	opt, stop, err := startRedis(opt)
	if err != nil {
		return nil, "", nil, err
	}
	if workerAddr != "" {
		return opt, workerAddr, stop, nil
	}
	ro, ok := opt.(asynq.RedisClientOpt)
	if !ok {
		stop()
		return nil, "", nil, fmt.Errorf("bench %s: worker processes need a Redis address for a %T", bench, opt)
	}
	return opt, ro.Addr, stop, nil
}

// startS3 returns an S3 client for a benchmark, with the given buckets,
// and the settings to reach the same server from another process: the
// server cfg names when its Endpoint is set, else a versitygw started from
// PATH on a free loopback port with its data in a temporary directory (dir,
// when not empty, chooses the parent so a benchmark can put it on the disk
// it measures). stop stops what it started and removes its files.
func startS3(ctx context.Context, cfg s3x.Config, dir string, buckets ...string) (_ *s3.Client, _ s3x.Config, stop func(), _ error) {
	if cfg.Endpoint != "" {
		cl, err := s3x.NewClient(ctx, cfg)
		if err != nil {
			return nil, cfg, nil, err
		}
		for _, b := range buckets {
			if err := s3x.EnsureBucket(ctx, cl, b); err != nil {
				return nil, cfg, nil, err
			}
		}
		return cl, cfg, func() {}, nil
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

// writeModel writes a reference model (refgen) of size bytes to path and
// syncs it. The benchmarks write into temporary directories of their own,
// so there is no reader to protect from a partial file.
func writeModel(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 4<<20)
	err = refgen.Make(bw, size, seed)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write reference model %s: %w", path, err)
	}
	return nil
}

// scratchCache writes a reference model of size bytes and imports it into
// a fresh cache under dir (the system temp dir when empty). It returns the
// cache root, a manifest for the blob and a function that removes both.
func scratchCache(ctx context.Context, dir string, size int64, progress io.Writer) (root string, man *modelcache.Manifest, cleanup func(), err error) {
	tmp, err := os.MkdirTemp(dir, "genfleet-bench-cache-")
	if err != nil {
		return "", nil, nil, err
	}
	cleanup = func() { os.RemoveAll(tmp) }
	root = filepath.Join(tmp, "cache")
	file := filepath.Join(tmp, "model.safetensors")
	fmt.Fprintf(progress, "writing a %s reference model...\n", units.FormatSize(size))
	if err := writeModel(file, size, 1); err != nil {
		cleanup()
		return "", nil, nil, err
	}
	c, err := modelcache.Open(root, nil)
	if err != nil {
		cleanup()
		return "", nil, nil, err
	}
	digest, err := c.Import(ctx, file)
	os.Remove(file)
	if err != nil {
		cleanup()
		return "", nil, nil, err
	}
	return root, scratchManifest(digest, size), cleanup, nil
}

// scratchManifest is the manifest of scratchCache's model.
func scratchManifest(digest string, size int64) *modelcache.Manifest {
	return &modelcache.Manifest{Schema: modelcache.ManifestSchema, Name: "bench", Files: []modelcache.File{{
		Name: "model.safetensors", URL: "s3://bench/model.safetensors", Size: size, Digest: digest,
	}}}
}

// executable returns path, or this process's executable when path is "".
func executable(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	return os.Executable()
}

// orDiscard returns w, or io.Discard for nil.
func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
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

// percentile returns the p-th (0..1) percentile of sorted, the nearest
// rank; 0 for none.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }
func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }

// roundAll returns xs, each passed through round.
func roundAll(xs []float64, round func(float64) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = round(x)
	}
	return out
}

// mbps is size bytes in d, in 10^6 bytes/s.
func mbps(size int64, d time.Duration) float64 {
	return float64(size) / 1e6 / d.Seconds()
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
