package cuda

import (
	"context"
	"fmt"
	"time"
	"unsafe"
)

// UploadReport is what MeasureUpload found; rates are in 10^9 bytes/s,
// each the best of the repetitions.
type UploadReport struct {
	Device string
	Bytes  int64
	// Naive is cuMemcpyHtoD straight from the mapping.
	Naive float64
	// Genfleet is the backend's own upload with the strategy its policy
	// picks for this size (Strategy), registration included.
	Genfleet float64
	Strategy Strategy
	// Pinned is cuMemcpyHtoD from a cuMemAllocHost buffer: the ceiling.
	Pinned float64
	// PerStrategy has every strategy's rate, for the record.
	PerStrategy map[Strategy]float64
	// RegisterSeconds is the best cuMemHostRegister time seen.
	RegisterSeconds float64
	// Config is the configuration measured, defaults filled in.
	Config Config
}

// MeasureUpload opens the backend with cfg and times, reps times each,
// copies of the whole mapping to device memory: naive, every strategy,
// genfleet's choice, and the pinned-memory ceiling. The mapping should be
// warm (in the page cache) for the figures to compare copies, not disks.
func MeasureUpload(ctx context.Context, mapping []byte, cfg Config, reps int) (UploadReport, error) {
	n := int64(len(mapping))
	rep := UploadReport{Bytes: n, PerStrategy: map[Strategy]float64{}}
	if n == 0 {
		return rep, fmt.Errorf("cuda: nothing to upload")
	}
	reps = max(reps, 1)
	b, dst, done, err := openForMeasure(cfg, n)
	if err != nil {
		return rep, err
	}
	defer done()
	rep.Config = b.cfg
	rep.Device = b.DeviceName()
	rep.Strategy = b.pol.choose(n)

	best := func(s Strategy) (float64, error) {
		top, setup, err := bestUpload(ctx, b, dst, mapping, s, reps)
		if s == Registered && setup > 0 {
			rep.RegisterSeconds = setup
		}
		return top, err
	}
	for _, s := range []Strategy{Naive, Staged, Registered} {
		if rep.PerStrategy[s], err = best(s); err != nil {
			return rep, err
		}
	}
	rep.Naive = rep.PerStrategy[Naive]
	// Genfleet's upload, timed on its own after the others.
	if rep.Genfleet, err = best(rep.Strategy); err != nil {
		return rep, err
	}

	err = b.dev.do(func() error {
		host, err := b.dev.allocHost(n)
		if err != nil {
			return fmt.Errorf("pinned buffer of %d bytes: %w", n, err)
		}
		defer b.dev.drv.cuMemFreeHost(unsafe.Pointer(unsafe.SliceData(host)))
		copy(host, mapping)
		for range reps {
			t0 := time.Now()
			if err := b.dev.drv.check("cuMemcpyHtoD", b.dev.drv.cuMemcpyHtoD(dst, unsafe.Pointer(&host[0]), uint64(n))); err != nil {
				return err
			}
			rep.Pinned = max(rep.Pinned, float64(n)/time.Since(t0).Seconds()/1e9)
		}
		return nil
	})
	return rep, err
}

// bestUpload uploads the whole mapping to dst reps times with s and
// returns the best rate and the shortest setup time seen.
func bestUpload(ctx context.Context, b *Backend, dst cuDevicePtr, mapping []byte, s Strategy, reps int) (gbps, setup float64, err error) {
	for range max(reps, 1) {
		st, err := b.dev.upload(ctx, dst, mapping, 0, int64(len(mapping)), s)
		if err != nil {
			return 0, 0, fmt.Errorf("%s upload: %w", s, err)
		}
		gbps = max(gbps, st.GBps())
		if st.Setup > 0 && (setup == 0 || st.Setup.Seconds() < setup) {
			setup = st.Setup.Seconds()
		}
	}
	return gbps, setup, nil
}

// MeasureStaged opens the backend with cfg, its upload strategy set to
// Staged (so the staging workers start with it, as in a worker), and
// returns the best rate of reps staged uploads of the whole mapping, in
// 10^9 bytes/s.
func MeasureStaged(ctx context.Context, mapping []byte, cfg Config, reps int) (float64, error) {
	n := int64(len(mapping))
	if n == 0 {
		return 0, fmt.Errorf("cuda: nothing to upload")
	}
	cfg.Upload = Staged
	b, dst, done, err := openForMeasure(cfg, n)
	if err != nil {
		return 0, err
	}
	defer done()
	gbps, _, err := bestUpload(ctx, b, dst, mapping, Staged, reps)
	return gbps, err
}

// openForMeasure opens the backend with cfg and allocates n bytes of device
// memory to upload into; done frees both.
func openForMeasure(cfg Config, n int64) (b *Backend, dst cuDevicePtr, done func(), err error) {
	if b, err = Open(cfg); err != nil {
		return nil, 0, nil, err
	}
	if dst, err = b.dev.alloc(n); err != nil {
		b.Close()
		return nil, 0, nil, fmt.Errorf("cuda: allocate %d bytes on %s: %w", n, b.DeviceName(), err)
	}
	return b, dst, func() { b.dev.free(dst); b.Close() }, nil
}
