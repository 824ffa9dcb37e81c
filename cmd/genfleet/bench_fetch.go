package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/modelcache"
)

func init() {
	registerBench("fetch", "cold fetch S3 → verified blob vs the SDK transfer manager and fsync'ed disk writes (anchors)", benchFetch)
}

const benchFetchBucket = "genfleet-bench"

// benchFetch measures a cold fetch of one model into a fresh cache (ranged
// GETs, hashing, fsync, rename: until the blob is installed and mapped)
// against two anchors on the same disk in the same run: the AWS SDK's
// transfer manager downloading the object to a file with default options
// (then fsync, so both end with durable bytes), and a sequential write +
// fsync of the same number of bytes. Every timed step starts from a synced
// disk and removes its file afterwards; the order of the three rotates
// from run to run; the median of --runs counts for each (this machine's
// disk swings by up to 4× between runs, and a best-of would let one
// outlier decide a ratio). Every run's figure is in the output too.
func benchFetch(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := newFlags("bench fetch", stderr)
	c := addCommon(f)
	sizeStr := f.String("size", "2GiB", "model size")
	runs := f.Int("runs", 5, "timed runs of each contender (the median counts)")
	dir := f.String("dir", "", "parent directory of the temporary files, on the disk to measure (default: the system temp dir)")
	partStr := f.String("part-size", "", "genfleet part size (default: modelcache's default)")
	conc := f.Int("concurrency", 0, "genfleet GETs in flight (default: modelcache's default)")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	size, err := parseSize(*sizeStr)
	if err != nil || size <= 0 {
		return nil, fmt.Errorf("--size: bad size %q", *sizeStr)
	}
	var partSize int64
	if *partStr != "" {
		if partSize, err = parseSize(*partStr); err != nil {
			return nil, fmt.Errorf("--part-size: %w", err)
		}
	}
	if *runs < 1 {
		return nil, fmt.Errorf("--runs must be at least 1")
	}
	parent := *dir
	if parent == "" {
		parent = os.TempDir()
	}
	work, err := os.MkdirTemp(parent, "genfleet-bench-fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	cl, stopS3, err := benchS3(ctx, c, work, benchFetchBucket)
	if err != nil {
		return nil, err
	}
	defer stopS3()
	src := modelcache.NewS3Source(cl)

	// The reference model, uploaded once.
	key := fmt.Sprintf("bench/fetch-%d.safetensors", time.Now().UnixNano())
	model := filepath.Join(work, "model.safetensors")
	fmt.Fprintf(stderr, "writing a %s reference model and uploading it...\n", humanBytes(size))
	if err := writeModel(model, size, 7); err != nil {
		return nil, err
	}
	digest, err := fileSHA256(model)
	if err != nil {
		return nil, err
	}
	mf, err := os.Open(model)
	if err != nil {
		return nil, err
	}
	err = src.Put(ctx, benchFetchBucket, key, mf, size)
	mf.Close()
	os.Remove(model)
	if err != nil {
		return nil, err
	}
	man := &modelcache.Manifest{Schema: modelcache.ManifestSchema, Name: "bench-fetch", Format: "safetensors",
		Files: []modelcache.File{{Name: "model.safetensors", URL: "s3://" + benchFetchBucket + "/" + key, Size: size, Digest: digest}}}
	opts := modelcache.Options{PartSize: partSize, FetchConcurrency: *conc}

	genfleet := func(run int) (time.Duration, error) {
		root := filepath.Join(work, fmt.Sprintf("cache-%d", run))
		defer os.RemoveAll(root)
		cache, err := modelcache.OpenWith(root, src, opts)
		if err != nil {
			return 0, err
		}
		syncDisk()
		t := time.Now()
		m, err := cache.Acquire(ctx, man)
		d := time.Since(t)
		if err != nil {
			return 0, err
		}
		return d, m.Close()
	}
	tm := transfermanager.New(cl)
	anchorTM := func(run int) (time.Duration, error) {
		path := filepath.Join(work, fmt.Sprintf("tm-%d", run))
		defer os.Remove(path)
		out, err := os.Create(path)
		if err != nil {
			return 0, err
		}
		defer out.Close()
		syncDisk()
		t := time.Now()
		bucket := benchFetchBucket
		if _, err := tm.DownloadObject(ctx, &transfermanager.DownloadObjectInput{Bucket: &bucket, Key: &key, WriterAt: out}); err != nil {
			return 0, fmt.Errorf("transfer manager: %w", err)
		}
		if err := out.Sync(); err != nil {
			return 0, err
		}
		return time.Since(t), nil
	}
	buf := make([]byte, 4<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	anchorDisk := func(run int) (time.Duration, error) {
		path := filepath.Join(work, fmt.Sprintf("disk-%d", run))
		defer os.Remove(path)
		out, err := os.Create(path)
		if err != nil {
			return 0, err
		}
		defer out.Close()
		syncDisk()
		t := time.Now()
		for left := size; left > 0; {
			n, err := out.Write(buf[:min(int64(len(buf)), left)])
			if err != nil {
				return 0, err
			}
			left -= int64(n)
		}
		if err := out.Sync(); err != nil {
			return 0, err
		}
		return time.Since(t), nil
	}

	type contender struct {
		name string
		fn   func(int) (time.Duration, error)
		all  []time.Duration
	}
	cs := []*contender{{name: "genfleet", fn: genfleet}, {name: "transfermanager", fn: anchorTM}, {name: "disk_write", fn: anchorDisk}}
	for run := range *runs {
		// Rotate the order so that no contender always goes first (or
		// always follows the same one).
		for i := range cs {
			ct := cs[(i+run)%len(cs)]
			d, err := ct.fn(run)
			if err != nil {
				return nil, fmt.Errorf("%s, run %d: %w", ct.name, run+1, err)
			}
			fmt.Fprintf(stderr, "run %d %-16s %6.0f MB/s (%v)\n", run+1, ct.name, mbps(size, d), d.Round(time.Millisecond))
			ct.all = append(ct.all, d)
		}
	}
	perRun := func(ds []time.Duration) []float64 {
		out := make([]float64, len(ds))
		for i, d := range ds {
			out[i] = round1(mbps(size, d))
		}
		return out
	}
	g, t, w := mbps(size, median(cs[0].all)), mbps(size, median(cs[1].all)), mbps(size, median(cs[2].all))
	effPart, effConc := partSize, *conc
	if effPart <= 0 {
		effPart = modelcache.DefaultPartSize
	}
	if effConc <= 0 {
		effConc = modelcache.DefaultFetchConcurrency
	}
	res := map[string]any{
		"size_bytes":                    size,
		"part_size":                     effPart,
		"concurrency":                   effConc,
		"runs":                          *runs,
		"genfleet_mbps":                 g,
		"transfermanager_mbps":          t,
		"disk_write_mbps":               w,
		"ratio_vs_transfermanager":      g / t,
		"ratio_vs_disk":                 g / w,
		"targets_met":                   g/t >= 1.2 && g/w >= 0.9,
		"genfleet_measures":             "Acquire of a missing model: ranged GETs, sha256 verify, fsync, chmod, rename, fsync dir, mmap",
		"transfermanager_measures":      "feature/s3/transfermanager DownloadObject, default options, to a file, then fsync",
		"transfermanager_includes_sync": true,
		"disk_write_measures":           "sequential 4 MiB writes of the same size, then fsync",
		"mbps_unit":                     "1e6 bytes/s",
		"statistic":                     "median of runs",
		"genfleet_runs_mbps":            perRun(cs[0].all),
		"transfermanager_runs_mbps":     perRun(cs[1].all),
		"disk_write_runs_mbps":          perRun(cs[2].all),
	}
	return res, nil
}

func mbps(size int64, d time.Duration) float64 {
	return float64(size) / 1e6 / d.Seconds()
}

// syncDisk flushes every dirty page, so that a timed step does not pay for
// the writeback of the one before.
func syncDisk() { unix.Sync() }

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
