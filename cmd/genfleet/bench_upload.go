package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/backends/cuda"
)

func init() {
	registerBench("upload", "weights from a warm file mapping to the GPU: naive, genfleet's upload, the pinned ceiling (needs a CUDA driver)", benchUpload)
}

// benchUpload writes a reference model, maps it read-only and shared as
// a worker does, warms it, and measures in one run cuMemcpyHtoD straight
// from the mapping (naive), genfleet's upload, and cuMemcpyHtoD from
// pinned memory (the anchor). Without a CUDA driver it fails at once
// with the reason.
func benchUpload(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := newFlags("bench upload", stderr)
	sizeStr := f.String("size", "4GiB", "model size")
	dir := f.String("dir", "", "directory for the model file (default: the system temp directory)")
	strategy := f.String("strategy", "auto", "genfleet's upload strategy: auto, staged, registered or naive")
	reps := f.Int("reps", 3, "timed repetitions of each copy; the best is reported")
	threads := f.Int("threads", 0, "staging workers of genfleet's upload (default: GENFLEET_CUDA_UPLOAD_THREADS, else min(CPUs, 8))")
	sweep := f.String("sweep-threads", "", "also time the staged upload with each of these worker counts, e.g. 1,2,4,8,16")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	size, err := parseSize(*sizeStr)
	if err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	strat, err := cuda.ParseStrategy(*strategy)
	if err != nil {
		return nil, fmt.Errorf("--strategy: %w", err)
	}
	if *threads < 0 || *threads > 256 {
		return nil, fmt.Errorf("--threads %d: want 1..256 (0 for the default)", *threads)
	}
	sweepCounts, err := parseCounts(*sweep)
	if err != nil {
		return nil, fmt.Errorf("--sweep-threads: %w", err)
	}
	if err := cuda.Available(); err != nil {
		return nil, err
	}
	cfg, err := cuda.ConfigFromEnv(nil)
	if err != nil {
		return nil, err
	}
	cfg.Upload = strat
	if *threads > 0 {
		cfg.UploadThreads = *threads
	}

	tmp, err := os.MkdirTemp(*dir, "genfleet-bench-upload-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	path := filepath.Join(tmp, "model.safetensors")
	fmt.Fprintf(stderr, "writing a %s reference model...\n", humanBytes(size))
	if err := writeModel(path, size, 1); err != nil {
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

	fmt.Fprintf(stderr, "measuring uploads (%d repetitions each)...\n", *reps)
	rep, err := cuda.MeasureUpload(ctx, mapping, cfg, *reps)
	if err != nil {
		return nil, err
	}
	per := map[string]float64{}
	for s, v := range rep.PerStrategy {
		per[string(s)] = v
	}
	used := rep.Config
	byWorkers := map[string]float64{}
	for _, k := range sweepCounts {
		fmt.Fprintf(stderr, "staged upload with %d workers...\n", k)
		c := cfg
		c.UploadThreads = k
		if byWorkers[strconv.Itoa(k)], err = cuda.MeasureStaged(ctx, mapping, c, *reps); err != nil {
			return nil, fmt.Errorf("staged upload with %d workers: %w", k, err)
		}
	}
	res := map[string]any{
		"size_bytes":       size,
		"device":           rep.Device,
		"strategy":         string(rep.Strategy),
		"naive_gbps":       rep.Naive,
		"genfleet_gbps":    rep.Genfleet,
		"pinned_gbps":      rep.Pinned,
		"strategies_gbps":  per,
		"register_seconds": rep.RegisterSeconds,
		"reps":             *reps,
		"upload_threads":   used.UploadThreads,
		"staging":          fmt.Sprintf("%dx%s", used.StagingBuffers, humanBytes(used.StagingBufferBytes)),
	}
	if len(byWorkers) > 0 {
		res["staged_gbps_by_workers"] = byWorkers
	}
	if rep.Pinned > 0 {
		res["ratio_vs_pinned"] = rep.Genfleet / rep.Pinned
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
