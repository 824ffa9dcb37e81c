package bench

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/genfleet/genfleet/modelcache"
)

// LoadOptions is one run of Load.
type LoadOptions struct {
	// Size is the model's size in bytes.
	Size int64
	// Runs is the number of timed acquisitions per mode (the best
	// counts); below 1 times one.
	Runs int
	// Dir is the parent of the temporary cache; "" is the system temp
	// directory.
	Dir string
}

// LoadResult is what Load measured: the best Acquire+Close time of each
// mode in milliseconds.
type LoadResult struct {
	SizeBytes      int64   `json:"size_bytes"`
	Runs           int     `json:"runs"`
	MmapMS         float64 `json:"mmap_ms"`
	MmapPopulateMS float64 `json:"mmap_populate_ms"` // mmap with the populate advice
	ReadMS         float64 `json:"read_ms"`
	// Ratio is ReadMS over MmapMS: how many times faster a warm mapped
	// acquire is than reading the model into private memory.
	Ratio float64 `json:"ratio"`
	// ReadGBps is the read mode's copy rate, in 10^9 bytes/s.
	ReadGBps float64 `json:"read_gb_per_s"`
}

// Load times Acquire+Close of a warm model (every page in the page cache)
// in mmap mode, with and without populate advice, against read mode, the
// best of o.Runs each.
func Load(ctx context.Context, o LoadOptions, progress io.Writer) (*LoadResult, error) {
	progress = orDiscard(progress)
	root, man, cleanup, err := scratchCache(ctx, o.Dir, o.Size, progress)
	if err != nil {
		return nil, err
	}
	defer cleanup()

	best := func(opts modelcache.Options) (time.Duration, error) {
		c, err := modelcache.OpenWith(root, nil, opts)
		if err != nil {
			return 0, err
		}
		b := time.Duration(1<<63 - 1)
		for range max(o.Runs, 1) {
			t := time.Now()
			m, err := c.Acquire(ctx, man)
			if err != nil {
				return 0, err
			}
			if err := m.Close(); err != nil {
				return 0, err
			}
			b = min(b, time.Since(t))
		}
		return b, nil
	}
	// Warm up: every page into the page cache.
	if _, err := best(modelcache.Options{Advice: modelcache.AdvicePopulate}); err != nil {
		return nil, err
	}
	c, _ := modelcache.Open(root, nil)
	if n, err := c.Residency(man.Files[0].Digest); err == nil && n < o.Size {
		fmt.Fprintf(progress, "warning: only %d of %d bytes resident after warm-up\n", n, o.Size)
	}
	res := &LoadResult{SizeBytes: o.Size, Runs: o.Runs}
	for _, tc := range []struct {
		key  string
		ms   *float64
		opts modelcache.Options
	}{
		{"mmap_ms", &res.MmapMS, modelcache.Options{}},
		{"mmap_populate_ms", &res.MmapPopulateMS, modelcache.Options{Advice: modelcache.AdvicePopulate}},
		{"read_ms", &res.ReadMS, modelcache.Options{LoadMode: modelcache.LoadRead}},
	} {
		d, err := best(tc.opts)
		if err != nil {
			return nil, err
		}
		*tc.ms = float64(d.Microseconds()) / 1000
		fmt.Fprintf(progress, "%s: %v\n", tc.key, d)
	}
	res.Ratio = res.ReadMS / max(res.MmapMS, 0.001)
	res.ReadGBps = float64(o.Size) / 1e9 / (res.ReadMS / 1000)
	return res, nil
}
