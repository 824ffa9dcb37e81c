package cuda

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// uploadStats describes one upload.
type uploadStats struct {
	Strategy Strategy
	Bytes    int64
	// Setup is time spent before copying (registration); Copy the rest.
	Setup, Copy time.Duration
}

// Seconds returns the upload's total time.
func (s uploadStats) Seconds() float64 { return (s.Setup + s.Copy).Seconds() }

// GBps returns the upload's rate over its total time, in 10^9 bytes/s.
func (s uploadStats) GBps() float64 {
	if t := s.Seconds(); t > 0 {
		return float64(s.Bytes) / t / 1e9
	}
	return 0
}

// upload copies mapping[off:off+n] to device memory dst with strategy s
// (not Auto). mapping is the whole read-only file mapping; Registered
// registers the pages of the range it copies and unregisters them before
// returning. If the driver refuses a read-only registration, Registered
// falls back to Staged and says so in the stats.
func (d *device) upload(ctx context.Context, dst cuDevicePtr, mapping []byte, off, n int64, s Strategy) (uploadStats, error) {
	st := uploadStats{Strategy: s, Bytes: n}
	if n == 0 {
		return st, nil
	}
	if off < 0 || n < 0 || off+n > int64(len(mapping)) {
		return st, fmt.Errorf("cuda: upload of [%d, %d) from a %d-byte mapping", off, off+n, len(mapping))
	}
	src := mapping[off : off+n]
	start := time.Now()
	switch s {
	case Naive:
		err := d.do(func() error {
			return d.drv.check("cuMemcpyHtoD", d.drv.cuMemcpyHtoD(dst, unsafe.Pointer(&src[0]), uint64(n)))
		})
		st.Copy = time.Since(start)
		return st, err
	case Registered:
		err := d.uploadRegistered(dst, mapping, off, n, &st)
		if isCode(err, cuErrorNotSupported) {
			st.Strategy = Staged
			err = d.uploadStaged(ctx, dst, src)
			st.Copy = time.Since(start)
		}
		return st, err
	case Staged:
		err := d.uploadStaged(ctx, dst, src)
		st.Copy = time.Since(start)
		return st, err
	default:
		return st, fmt.Errorf("cuda: upload strategy %q", s)
	}
}

// uploadRegistered page-locks the pages of mapping[off:off+n] read-only,
// copies them in one cuMemcpyHtoD, and unregisters them.
func (d *device) uploadRegistered(dst cuDevicePtr, mapping []byte, off, n int64, st *uploadStats) error {
	base := uintptr(unsafe.Pointer(unsafe.SliceData(mapping)))
	lo, hi := pageRange(int64(base), off, n, int64(len(mapping)), pageSize)
	return d.do(func() error {
		t0 := time.Now()
		reg := unsafe.Pointer(&mapping[lo])
		if err := d.drv.check("cuMemHostRegister", d.drv.cuMemHostRegister(reg, uint64(hi-lo), cuMemHostRegisterReadOnly)); err != nil {
			return err
		}
		t1 := time.Now()
		st.Setup = t1.Sub(t0)
		err := d.drv.check("cuMemcpyHtoD", d.drv.cuMemcpyHtoD(dst, unsafe.Pointer(&mapping[off]), uint64(n)))
		st.Copy = time.Since(t1)
		if uerr := d.drv.check("cuMemHostUnregister", d.drv.cuMemHostUnregister(reg)); err == nil {
			err = uerr
		}
		return err
	})
}

// filled is a staging buffer ready to copy.
type filled struct{ c chunk }

// uploadStaged copies src to dst through the pinned staging ring: a
// filler goroutine copies each chunk into its buffer with
// staging.Threads goroutines (this is also what faults in the pages of
// a cold mapping, so disk reads overlap the device copies), and the
// device thread issues cuMemcpyHtoDAsync for each filled buffer,
// recording an event after it; a buffer goes back to the filler once its
// event has completed.
func (d *device) uploadStaged(ctx context.Context, dst cuDevicePtr, src []byte) error {
	sc := d.staging
	plan, err := planChunks(int64(len(src)), sc.BufferBytes, sc.Buffers, sc.Streams)
	if err != nil {
		return err
	}
	if err := d.do(d.ensureStaging); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	free := make([]chan struct{}, sc.Buffers)
	for i := range free {
		free[i] = make(chan struct{}, 1)
		free[i] <- struct{}{}
	}
	ready := make(chan chunk, sc.Buffers)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ready)
		for _, c := range plan {
			select {
			case <-free[c.Buf]:
			case <-ctx.Done():
				return
			}
			fill(d.bufs[c.Buf][:c.Len], src[c.Off:c.Off+c.Len], sc.Threads)
			select {
			case ready <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	err = d.do(func() error {
		type flight struct{ buf int }
		var inflight []flight
		retire := func() error {
			f := inflight[0]
			inflight = inflight[1:]
			if err := d.drv.check("cuEventSynchronize", d.drv.cuEventSynchronize(d.events[f.buf])); err != nil {
				return err
			}
			free[f.buf] <- struct{}{}
			return nil
		}
		drain := func() error {
			var first error
			for len(inflight) > 0 {
				if err := retire(); err != nil && first == nil {
					first = err
				}
			}
			return first
		}
		for issued := 0; issued < len(plan); {
			var c chunk
			var ok bool
			if len(inflight) == 0 {
				select {
				case c, ok = <-ready:
				case <-ctx.Done():
					return ctx.Err()
				}
			} else {
				select {
				case c, ok = <-ready:
				default:
					// Nothing filled yet: retire the oldest copy so its buffer
					// can be refilled.
					if err := retire(); err != nil {
						return err
					}
					continue
				}
			}
			if !ok {
				return drainThen(drain(), ctx.Err())
			}
			buf := d.bufs[c.Buf][:c.Len]
			if err := d.drv.check("cuMemcpyHtoDAsync", d.drv.cuMemcpyHtoDAsync(dst+cuDevicePtr(c.Off), unsafe.Pointer(&buf[0]), uint64(c.Len), d.streams[c.Stream])); err != nil {
				return drainThen(drain(), err)
			}
			if err := d.drv.check("cuEventRecord", d.drv.cuEventRecord(d.events[c.Buf], d.streams[c.Stream])); err != nil {
				return drainThen(drain(), err)
			}
			inflight = append(inflight, flight{c.Buf})
			issued++
		}
		return drain()
	})
	cancel()
	wg.Wait()
	return err
}

// drainThen returns the first non-nil of a drain error and err.
func drainThen(drainErr, err error) error {
	if err != nil {
		return err
	}
	return drainErr
}

// fill copies src into dst (same length) with up to threads goroutines,
// each taking a page-aligned span.
func fill(dst, src []byte, threads int) {
	spans := splitSpans(int64(len(src)), threads, pageSize)
	if len(spans) <= 1 {
		copy(dst, src)
		return
	}
	var wg sync.WaitGroup
	for _, sp := range spans[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			copy(dst[sp.Off:sp.Off+sp.Len], src[sp.Off:sp.Off+sp.Len])
		}()
	}
	sp := spans[0]
	copy(dst[sp.Off:sp.Off+sp.Len], src[sp.Off:sp.Off+sp.Len])
	wg.Wait()
}
