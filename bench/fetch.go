package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/modelcache"
)

// FetchOptions is one run of Fetch.
type FetchOptions struct {
	// S3 is the server to fetch from; an empty Endpoint starts versitygw
	// for the run, its data under Dir.
	S3 s3x.Config
	// Size is the model's size in bytes; above 0.
	Size int64
	// Runs is the number of timed runs of each contender (the median
	// counts); at least 1.
	Runs int
	// Dir is the parent of the temporary files, on the disk to measure;
	// "" is the system temp directory.
	Dir string
	// PartSize and Concurrency are genfleet's ranged-GET size and GETs in
	// flight; 0 is modelcache's default.
	PartSize    int64
	Concurrency int
}

// FetchResult is what Fetch measured. Rates are in 10^6 bytes/s, each the
// median of the runs; the *_runs_mbps lists have every run's figure.
type FetchResult struct {
	SizeBytes   int64 `json:"size_bytes"`
	PartSize    int64 `json:"part_size"`   // the one used, defaults filled in
	Concurrency int   `json:"concurrency"` // likewise
	Runs        int   `json:"runs"`

	GenfleetMBps        float64 `json:"genfleet_mbps"`
	TransferManagerMBps float64 `json:"transfermanager_mbps"`
	DiskWriteMBps       float64 `json:"disk_write_mbps"`
	RatioVsTM           float64 `json:"ratio_vs_transfermanager"`
	RatioVsDisk         float64 `json:"ratio_vs_disk"`
	// TargetsMet: genfleet at least 1.2× the transfer manager and 0.9×
	// the disk's durable write rate.
	TargetsMet bool `json:"targets_met"`

	// What each contender's time covers, in words.
	GenfleetMeasures  string `json:"genfleet_measures"`
	TMMeasures        string `json:"transfermanager_measures"`
	TMIncludesSync    bool   `json:"transfermanager_includes_sync"`
	DiskWriteMeasures string `json:"disk_write_measures"`
	MBpsUnit          string `json:"mbps_unit"`
	Statistic         string `json:"statistic"`

	GenfleetRunsMBps  []float64 `json:"genfleet_runs_mbps"`
	TMRunsMBps        []float64 `json:"transfermanager_runs_mbps"`
	DiskWriteRunsMBps []float64 `json:"disk_write_runs_mbps"`
}

const fetchBucket = "genfleet-bench"

// Fetch measures a cold fetch of one model into a fresh cache (ranged
// GETs, hashing, fsync, rename: until the blob is installed and mapped)
// against two anchors on the same disk in the same run: the AWS SDK's
// transfer manager downloading the object to a file with default options
// (then fsync, so both end with durable bytes), and a sequential write +
// fsync of the same number of bytes. Every timed step starts from a synced
// disk and removes its file afterwards; the order of the three rotates
// from run to run; the median of o.Runs counts for each (a small machine's
// disk swings by up to 4× between runs, and a best-of would let one
// outlier decide a ratio).
func Fetch(ctx context.Context, o FetchOptions, progress io.Writer) (*FetchResult, error) {
	progress = orDiscard(progress)
	if o.Size <= 0 {
		return nil, fmt.Errorf("--size %d: want a size above 0", o.Size)
	}
	if o.Runs < 1 {
		return nil, errors.New("--runs must be at least 1")
	}
	parent := o.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	work, err := os.MkdirTemp(parent, "genfleet-bench-fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	cl, _, stopS3, err := startS3(ctx, o.S3, work, fetchBucket)
	if err != nil {
		return nil, err
	}
	defer stopS3()
	src := modelcache.NewS3Source(cl)

	// The reference model, uploaded once.
	size := o.Size
	key := fmt.Sprintf("bench/fetch-%d.safetensors", time.Now().UnixNano())
	model := filepath.Join(work, "model.safetensors")
	fmt.Fprintf(progress, "writing a %s reference model and uploading it...\n", units.FormatSize(size))
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
	err = src.Put(ctx, fetchBucket, key, mf, size)
	mf.Close()
	os.Remove(model)
	if err != nil {
		return nil, err
	}
	man := &modelcache.Manifest{Schema: modelcache.ManifestSchema, Name: "bench-fetch", Format: "safetensors",
		Files: []modelcache.File{{Name: "model.safetensors", URL: "s3://" + fetchBucket + "/" + key, Size: size, Digest: digest}}}
	opts := modelcache.Options{PartSize: o.PartSize, FetchConcurrency: o.Concurrency}

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
		bucket := fetchBucket
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
	for run := range o.Runs {
		// Rotate the order so that no contender always goes first (or
		// always follows the same one).
		for i := range cs {
			ct := cs[(i+run)%len(cs)]
			d, err := ct.fn(run)
			if err != nil {
				return nil, fmt.Errorf("%s, run %d: %w", ct.name, run+1, err)
			}
			fmt.Fprintf(progress, "run %d %-16s %6.0f MB/s (%v)\n", run+1, ct.name, mbps(size, d), d.Round(time.Millisecond))
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
	res := &FetchResult{
		SizeBytes: size, PartSize: o.PartSize, Concurrency: o.Concurrency, Runs: o.Runs,
		GenfleetMBps: g, TransferManagerMBps: t, DiskWriteMBps: w,
		RatioVsTM: g / t, RatioVsDisk: g / w,
		TargetsMet:        g/t >= 1.2 && g/w >= 0.9,
		GenfleetMeasures:  "Acquire of a missing model: ranged GETs, sha256 verify, fsync, chmod, rename, fsync dir, mmap",
		TMMeasures:        "feature/s3/transfermanager DownloadObject, default options, to a file, then fsync",
		TMIncludesSync:    true,
		DiskWriteMeasures: "sequential 4 MiB writes of the same size, then fsync",
		MBpsUnit:          "1e6 bytes/s",
		Statistic:         "median of runs",
		GenfleetRunsMBps:  perRun(cs[0].all),
		TMRunsMBps:        perRun(cs[1].all),
		DiskWriteRunsMBps: perRun(cs[2].all),
	}
	if res.PartSize <= 0 {
		res.PartSize = modelcache.DefaultPartSize
	}
	if res.Concurrency <= 0 {
		res.Concurrency = modelcache.DefaultFetchConcurrency
	}
	return res, nil
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
