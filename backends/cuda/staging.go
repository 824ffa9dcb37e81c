package cuda

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// stager is one staging worker of the Staged strategy: an OS thread with
// the device's context current, its own stream, its own pinned buffers
// and an event per buffer. It takes the next chunk of an upload, copies
// it from the mapping into its next free buffer, and issues that buffer's
// cuMemcpyHtoDAsync on its stream; a buffer is refilled once the event
// recorded after its last copy has completed. Workers share nothing but
// the chunk counter, so host copies and device copies overlap with no
// barrier between chunks.
type stager struct {
	th     *deviceThread
	bufs   [][]byte
	events []cuHandle
	stream cuHandle
}

// startStager starts a staging worker and allocates what it owns. On
// error nothing is left allocated.
func (d *device) startStager(buffers int, size int64) (*stager, error) {
	w := &stager{}
	th, err := startDeviceThread(func() error {
		if err := d.drv.check("cuCtxSetCurrent", d.drv.cuCtxSetCurrent(d.ctx)); err != nil {
			return err
		}
		if err := w.alloc(d, buffers, size); err != nil {
			w.free(d)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	w.th = th
	return w, nil
}

// alloc runs on the worker's thread.
func (w *stager) alloc(d *device, buffers int, size int64) error {
	for range buffers {
		b, err := d.allocHost(size)
		if err != nil {
			return err
		}
		w.bufs = append(w.bufs, b)
		var e cuHandle
		if err := d.drv.check("cuEventCreate", d.drv.cuEventCreate(&e, cuEventDisableTiming)); err != nil {
			return err
		}
		w.events = append(w.events, e)
	}
	return d.drv.check("cuStreamCreate", d.drv.cuStreamCreate(&w.stream, cuStreamNonBlocking))
}

// free runs on the worker's thread and releases what alloc made.
func (w *stager) free(d *device) {
	for _, b := range w.bufs {
		d.drv.cuMemFreeHost(unsafe.Pointer(unsafe.SliceData(b)))
	}
	for _, e := range w.events {
		d.drv.cuEventDestroy(e)
	}
	if w.stream != 0 {
		d.drv.cuStreamDestroy(w.stream)
	}
	w.bufs, w.events, w.stream = nil, nil, 0
}

// ensureStagers starts the staging workers if they are not running;
// d.stagingMu is held.
func (d *device) ensureStagers() error {
	if d.stagers != nil {
		return nil
	}
	sc := d.staging
	for range sc.Workers {
		w, err := d.startStager(sc.Buffers, sc.BufferBytes)
		if err != nil {
			d.freeStagers()
			return fmt.Errorf("staging workers (%d, each with %d pinned buffers of %d bytes): %w", sc.Workers, sc.Buffers, sc.BufferBytes, err)
		}
		d.stagers = append(d.stagers, w)
	}
	return nil
}

// prepareStaging starts the staging workers ahead of the first upload.
func (d *device) prepareStaging() error {
	d.stagingMu.Lock()
	defer d.stagingMu.Unlock()
	return d.ensureStagers()
}

// freeStagers stops the staging workers, each freeing its buffers, events
// and stream on its own thread; d.stagingMu is held.
func (d *device) freeStagers() {
	for _, w := range d.stagers {
		w.th.close(func() { w.free(d) })
	}
	d.stagers = nil
}

// uploadStaged copies src to dst through the staging workers (see
// stager). On a cold mapping the workers' host copies are what fault the
// pages in, so disk reads overlap the device copies. It returns when
// every copy has completed or, after an error or cancellation, when no
// copy is in flight.
func (d *device) uploadStaged(ctx context.Context, dst cuDevicePtr, src []byte) error {
	d.stagingMu.Lock()
	defer d.stagingMu.Unlock()
	chunks, err := planChunks(int64(len(src)), d.staging.BufferBytes)
	if err != nil {
		return err
	}
	if err := d.ensureStagers(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	errs := make([]error, len(d.stagers))
	var wg sync.WaitGroup
	for i, w := range d.stagers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.th.do(func() error { return w.run(ctx, d.drv, dst, src, chunks, &next) })
			if errs[i] != nil {
				cancel() // stop the other workers
			}
		}()
	}
	wg.Wait()
	return firstCause(errs)
}

// firstCause returns the first error that is not a cancellation caused by
// another worker's error, else the first error.
func firstCause(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// run uploads chunks taken from next until none are left, ctx is done or
// a driver call fails, then waits for its stream (on the worker's thread).
func (w *stager) run(ctx context.Context, drv *driver, dst cuDevicePtr, src []byte, chunks []chunk, next *atomic.Int64) error {
	var err error
	used := make([]bool, len(w.bufs))
	for k := 0; ; k = (k + 1) % len(w.bufs) {
		if err = ctx.Err(); err != nil {
			break
		}
		i := next.Add(1) - 1
		if i >= int64(len(chunks)) {
			break
		}
		c := chunks[i]
		if used[k] {
			if err = drv.check("cuEventSynchronize", drv.cuEventSynchronize(w.events[k])); err != nil {
				break
			}
		}
		buf := w.bufs[k][:c.Len]
		copy(buf, src[c.Off:c.Off+c.Len])
		if err = drv.check("cuMemcpyHtoDAsync", drv.cuMemcpyHtoDAsync(dst+cuDevicePtr(c.Off), unsafe.Pointer(&buf[0]), uint64(c.Len), w.stream)); err != nil {
			break
		}
		if err = drv.check("cuEventRecord", drv.cuEventRecord(w.events[k], w.stream)); err != nil {
			break
		}
		used[k] = true
	}
	// Whatever happened, no copy may still read a buffer when this
	// returns: the next upload refills them.
	if serr := drv.check("cuStreamSynchronize", drv.cuStreamSynchronize(w.stream)); err == nil {
		err = serr
	}
	return err
}
