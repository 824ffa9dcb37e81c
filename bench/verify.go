package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/modelcache"
)

// VerifyOptions configure Verify. Zero fields take their defaults.
type VerifyOptions struct {
	// Size is the model's size in bytes. Default 2 GiB.
	Size int64
	// Runs is how many times each measurement is taken; the median counts.
	// Default 3.
	Runs int
	// Dir is the parent directory of the temporary cache (put it on the
	// disk to measure). Default: the system's temporary directory.
	Dir string
}

// VerifyResult is what Verify measured. Times are per GiB of model, the
// median of the runs. "First use" is an Acquire with the cache's default
// options (modelcache.VerifyPerBoot) of a blob that has not been verified
// in this boot, which re-hashes it; "verified" is the same Acquire once
// its record says it was: a map and an fstat. The cost of the default is
// the difference; the anchor is read() of the same file into private
// memory (what a process that loads weights without mmap pays), taken in
// the same run, seconds apart, and the ratio is the median over the runs
// of each run's cost / anchor.
type VerifyResult struct {
	SizeBytes int64 `json:"size_bytes"`
	Runs      int   `json:"runs"`

	// Warm: every page of the blob in the page cache before each run.
	WarmReadMsPerGiB     float64 `json:"warm_read_ms_per_gib"`
	WarmFirstUseMsPerGiB float64 `json:"warm_first_use_ms_per_gib"`
	WarmVerifiedMsPerGiB float64 `json:"warm_verified_ms_per_gib"`
	WarmCostMsPerGiB     float64 `json:"warm_cost_ms_per_gib"`
	WarmCostVsRead       float64 `json:"warm_cost_vs_read"`

	// Cold-ish: the blob's pages dropped from the page cache
	// (posix_fadvise DONTNEED) before each run, so the bytes come from the
	// block device; under a hypervisor they may still come from the host's
	// cache. ColdResidentBefore is the largest fraction of the blob still
	// resident when a cold run started (mincore): how cold it really was.
	ColdReadMsPerGiB     float64 `json:"cold_read_ms_per_gib"`
	ColdFirstUseMsPerGiB float64 `json:"cold_first_use_ms_per_gib"`
	ColdVerifiedMsPerGiB float64 `json:"cold_verified_ms_per_gib"`
	ColdCostMsPerGiB     float64 `json:"cold_cost_ms_per_gib"`
	ColdCostVsRead       float64 `json:"cold_cost_vs_read"`
	ColdResidentBefore   float64 `json:"cold_resident_fraction_before"`

	// ReportVerifyMsPerGiB is the Verify phase the first-use Acquire
	// reported itself (warm), a cross-check of WarmCostMsPerGiB.
	ReportVerifyMsPerGiB float64 `json:"report_verify_ms_per_gib"`
	// SHA256MsPerGiB is sha256 alone over bytes already in memory (64 MiB
	// per run, next to the warm runs): the part of the cost that is CPU.
	SHA256MsPerGiB float64 `json:"sha256_ms_per_gib"`
	// FSVerity is what the cache's file system says about fs-verity.
	FSVerity string `json:"fs_verity"`
	// LoadAvgStart and LoadAvgEnd are the host's 1-minute load average
	// when the benchmark started and ended: the two cores are shared.
	LoadAvgStart float64 `json:"load_avg_start"`
	LoadAvgEnd   float64 `json:"load_avg_end"`
}

// Verify measures the first-use cost of the cache's default verification
// policy on a model of o.Size random bytes, against read() of the same file
// into private memory in the same run, with the page cache warm and then
// cold-ish. It writes progress to progress.
func Verify(ctx context.Context, o VerifyOptions, progress io.Writer) (*VerifyResult, error) {
	if o.Size <= 0 {
		o.Size = 2 << 30
	}
	if o.Runs <= 0 {
		o.Runs = 3
	}
	tmp, err := os.MkdirTemp(o.Dir, "genfleet-bench-verify-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "cache")
	src := filepath.Join(tmp, "model.bin")
	fmt.Fprintf(progress, "writing a %d-byte model and importing it into a cache...\n", o.Size)
	if err := writeRandom(src, o.Size); err != nil {
		return nil, err
	}
	c, err := modelcache.Open(root, nil)
	if err != nil {
		return nil, err
	}
	digest, err := c.Import(ctx, src)
	os.Remove(src)
	if err != nil {
		return nil, err
	}
	blob := filepath.Join(root, "blobs", "sha256-"+digest[len("sha256:"):])
	// The verification record of the blob (see modelcache.VerifyPerBoot);
	// removing it is what a reboot does to it.
	record := filepath.Join(root, "verified", "sha256-"+digest[len("sha256:"):])
	man := &modelcache.Manifest{Schema: modelcache.ManifestSchema, Name: "bench-verify", Files: []modelcache.File{{
		Name: "model.bin", URL: "s3://bench/model.bin", Size: o.Size, Digest: digest,
	}}}
	res := &VerifyResult{SizeBytes: o.Size, Runs: o.Runs, FSVerity: c.FSVerity().String(), LoadAvgStart: loadAvg()}
	defer func() { res.LoadAvgEnd = loadAvg() }()
	gib := float64(o.Size) / (1 << 30)
	perGiB := func(ds []time.Duration) float64 {
		return float64(medianDuration(ds).Microseconds()) / 1000 / gib
	}

	// acquire times one Acquire with default options in a fresh Cache (a
	// process that starts), first forgetting the blob's verification when
	// first is set.
	var reportVerify []time.Duration
	acquire := func(first bool) (time.Duration, error) {
		if first {
			if err := os.Remove(record); err != nil && !errors.Is(err, os.ErrNotExist) {
				return 0, err
			}
		}
		c, err := modelcache.Open(root, nil)
		if err != nil {
			return 0, err
		}
		t := time.Now()
		m, err := c.Acquire(ctx, man)
		d := time.Since(t)
		if err != nil {
			return 0, err
		}
		if first {
			if m.Report.Verify == 0 {
				m.Close()
				return 0, errors.New("the first-use acquire did not verify the blob")
			}
			reportVerify = append(reportVerify, m.Report.Verify)
		}
		return d, m.Close()
	}

	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		var reads, firsts, verifieds, hashes []time.Duration
		if !cold {
			if _, err := readPrivate(blob, o.Size); err != nil { // warm the page cache
				return nil, err
			}
		}
		for run := range o.Runs {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			for _, step := range []struct {
				into *[]time.Duration
				fn   func() (time.Duration, error)
			}{
				{&reads, func() (time.Duration, error) { return readPrivate(blob, o.Size) }},
				{&firsts, func() (time.Duration, error) { return acquire(true) }},
				{&verifieds, func() (time.Duration, error) { return acquire(false) }},
			} {
				if cold {
					frac, err := dropCache(root, blob)
					if err != nil {
						return nil, err
					}
					res.ColdResidentBefore = max(res.ColdResidentBefore, frac)
				}
				d, err := step.fn()
				if err != nil {
					return nil, err
				}
				*step.into = append(*step.into, d)
			}
			if !cold {
				// Scaled to the model's size, as the other figures are.
				hashes = append(hashes, time.Duration(float64(hashMemory(64<<20))*float64(o.Size)/(64<<20)))
			}
			fmt.Fprintf(progress, "%s run %d/%d: read %v, first use %v, verified %v\n", name, run+1, o.Runs,
				reads[run].Round(time.Millisecond), firsts[run].Round(time.Millisecond), verifieds[run].Round(time.Microsecond))
		}
		read, first, verified := perGiB(reads), perGiB(firsts), perGiB(verifieds)
		ratios := make([]time.Duration, o.Runs) // cost/anchor per run, in units of 1e-6
		for i := range ratios {
			ratios[i] = time.Duration(1e6 * float64(firsts[i]-verifieds[i]) / float64(reads[i]))
		}
		ratio := float64(medianDuration(ratios)) / 1e6
		if cold {
			res.ColdReadMsPerGiB, res.ColdFirstUseMsPerGiB, res.ColdVerifiedMsPerGiB = read, first, verified
			res.ColdCostMsPerGiB, res.ColdCostVsRead = first-verified, ratio
		} else {
			res.WarmReadMsPerGiB, res.WarmFirstUseMsPerGiB, res.WarmVerifiedMsPerGiB = read, first, verified
			res.WarmCostMsPerGiB, res.WarmCostVsRead = first-verified, ratio
			res.ReportVerifyMsPerGiB = perGiB(reportVerify)
			res.SHA256MsPerGiB = perGiB(hashes)
		}
	}
	return res, nil
}

// writeRandom writes size pseudo-random bytes to path and fsyncs it.
func writeRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	r := rand.NewChaCha8([32]byte{'g', 'e', 'n', 'f', 'l', 'e', 'e', 't'})
	buf := make([]byte, 4<<20)
	for left := size; left > 0; {
		b := buf[:min(int64(len(buf)), left)]
		_, _ = r.Read(b)
		if _, err := f.Write(b); err != nil {
			f.Close()
			return err
		}
		left -= int64(len(b))
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readPrivate is the anchor: read() of the whole file into private
// anonymous memory, as a loader without mmap does.
func readPrivate(path string, size int64) (time.Duration, error) {
	buf, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(buf)
	t := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := io.ReadFull(f, buf); err != nil {
		return 0, err
	}
	return time.Since(t), nil
}

// dropCache asks the kernel to drop the blob's clean, unmapped pages from
// the page cache and returns the fraction still resident afterwards, as
// the cache's own listing counts it (mincore).
func dropCache(root, blob string) (float64, error) {
	f, err := os.Open(blob)
	if err != nil {
		return 0, err
	}
	err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("fadvise DONTNEED %s: %w", blob, err)
	}
	c, err := modelcache.OpenExisting(root, nil, modelcache.Options{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	infos, err := c.List()
	if err != nil || len(infos) != 1 {
		return 0, fmt.Errorf("list the benchmark's cache: %d blobs, %v", len(infos), err)
	}
	return float64(infos[0].ResidentBytes) / float64(infos[0].Size), nil
}

// hashMemory times sha256 over n bytes already in memory.
func hashMemory(n int) time.Duration {
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	t := time.Now()
	sha256.Sum256(buf)
	return time.Since(t)
}

// loadAvg is the 1-minute load average, or 0 when unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscan(string(b), &l)
	return l
}

func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
