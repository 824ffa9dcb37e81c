package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/backends/cuda"
	"github.com/genfleet/genfleet/internal/units"
)

// UploadOptions is one run of Upload.
type UploadOptions struct {
	// Size is the model's size in bytes.
	Size int64
	// Dir is the directory for the model file; "" is the system temp
	// directory.
	Dir string
	// Strategy is genfleet's upload strategy; "" is cuda.Auto, which picks
	// by size (GENFLEET_CUDA_UPLOAD does not apply).
	Strategy cuda.Strategy
	// Reps is the number of timed repetitions of each copy; the best is
	// reported.
	Reps int
	// Threads is the number of staging workers of genfleet's upload,
	// 1..256; 0 is the backend's default (GENFLEET_CUDA_UPLOAD_THREADS,
	// else min(CPUs, 8)).
	Threads int
	// SweepThreads, when not empty, also times the staged upload with each
	// of these worker counts.
	SweepThreads []int
}

// UploadResult is what Upload measured. Rates are in 10^9 bytes/s.
type UploadResult struct {
	SizeBytes int64  `json:"size_bytes"`
	Device    string `json:"device"`
	// Strategy is the one genfleet's upload used for this size.
	Strategy     string  `json:"strategy"`
	NaiveGBps    float64 `json:"naive_gbps"`    // cuMemcpyHtoD straight from the mapping
	GenfleetGBps float64 `json:"genfleet_gbps"` // genfleet's upload
	PinnedGBps   float64 `json:"pinned_gbps"`   // cuMemcpyHtoD from pinned memory: the anchor
	// StrategiesGBps has every strategy's rate, for the record.
	StrategiesGBps  map[string]float64 `json:"strategies_gbps"`
	RegisterSeconds float64            `json:"register_seconds"`
	Reps            int                `json:"reps"`
	UploadThreads   int                `json:"upload_threads"`
	// Staging is the staging buffers per worker, as count×size.
	Staging string `json:"staging"`
	// StagedGBpsByWorkers has the staged upload's rate per worker count of
	// UploadOptions.SweepThreads; absent without a sweep.
	StagedGBpsByWorkers map[string]float64 `json:"staged_gbps_by_workers,omitempty"`
	// RatioVsPinned is GenfleetGBps over PinnedGBps; absent when the
	// pinned copy could not be measured.
	RatioVsPinned float64 `json:"ratio_vs_pinned,omitempty"`
}

// Upload writes a reference model, maps it read-only and shared as a
// worker does, warms it, and measures in one run cuMemcpyHtoD straight
// from the mapping (naive), genfleet's upload, and cuMemcpyHtoD from
// pinned memory (the anchor). Without a CUDA driver it fails at once with
// the reason.
func Upload(ctx context.Context, o UploadOptions, progress io.Writer) (*UploadResult, error) {
	progress = orDiscard(progress)
	if o.Threads < 0 || o.Threads > 256 {
		return nil, fmt.Errorf("--threads %d: want 1..256 (0 for the default)", o.Threads)
	}
	if err := cuda.Available(); err != nil {
		return nil, err
	}
	cfg, err := cuda.ConfigFromEnv(nil)
	if err != nil {
		return nil, err
	}
	cfg.Upload = o.Strategy
	if cfg.Upload == "" {
		cfg.Upload = cuda.Auto
	}
	if o.Threads > 0 {
		cfg.UploadThreads = o.Threads
	}

	tmp, err := os.MkdirTemp(o.Dir, "genfleet-bench-upload-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	path := filepath.Join(tmp, "model.safetensors")
	fmt.Fprintf(progress, "writing a %s reference model...\n", units.FormatSize(o.Size))
	if err := writeModel(path, o.Size, 1); err != nil {
		return nil, err
	}
	mapping, err := mapReadOnly(path)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(mapping)
	// Warm: touch every page so the copies measure memory, not the disk.
	var sink byte
	for i := 0; i < len(mapping); i += os.Getpagesize() {
		sink ^= mapping[i]
	}
	_ = sink

	fmt.Fprintf(progress, "measuring uploads (%d repetitions each)...\n", o.Reps)
	rep, err := cuda.MeasureUpload(ctx, mapping, cfg, o.Reps)
	if err != nil {
		return nil, err
	}
	per := map[string]float64{}
	for s, v := range rep.PerStrategy {
		per[string(s)] = v
	}
	used := rep.Config
	byWorkers := map[string]float64{}
	for _, k := range o.SweepThreads {
		fmt.Fprintf(progress, "staged upload with %d workers...\n", k)
		c := cfg
		c.UploadThreads = k
		if byWorkers[strconv.Itoa(k)], err = cuda.MeasureStaged(ctx, mapping, c, o.Reps); err != nil {
			return nil, fmt.Errorf("staged upload with %d workers: %w", k, err)
		}
	}
	res := &UploadResult{
		SizeBytes:           o.Size,
		Device:              rep.Device,
		Strategy:            string(rep.Strategy),
		NaiveGBps:           rep.Naive,
		GenfleetGBps:        rep.Genfleet,
		PinnedGBps:          rep.Pinned,
		StrategiesGBps:      per,
		RegisterSeconds:     rep.RegisterSeconds,
		Reps:                o.Reps,
		UploadThreads:       used.UploadThreads,
		Staging:             fmt.Sprintf("%dx%s", used.StagingBuffers, units.FormatSize(used.StagingBufferBytes)),
		StagedGBpsByWorkers: byWorkers,
	}
	if rep.Pinned > 0 {
		res.RatioVsPinned = rep.Genfleet / rep.Pinned
	}
	return res, nil
}

// mapReadOnly maps the whole file at path read-only and shared.
func mapReadOnly(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	return m, nil
}
