package cuda

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"
)

// device is one GPU with its primary context current on a device thread,
// the kernels loaded, and (once a staged upload needs them) pinned
// staging buffers and streams.
type device struct {
	drv  *driver
	th   *deviceThread
	dev  cuDevice
	ctx  cuHandle
	name string
	// totalMem is the device's memory in bytes.
	totalMem int64

	module  cuHandle
	sumsFn  cuHandle
	staging stagingConfig

	// stagingMu serialises staged uploads, which share the stagers, and
	// guards stagers (made on first use).
	stagingMu sync.Mutex
	stagers   []*stager
}

// stagingConfig shapes the Staged strategy.
type stagingConfig struct {
	// Workers is the number of staging workers.
	Workers int
	// Buffers is the number of pinned buffers of each worker, BufferBytes
	// each; BufferBytes is also the size of the chunks the upload is
	// split into.
	Buffers     int
	BufferBytes int64
}

// openDevice loads the driver, initialises it, and makes device ordinal's
// primary context current on a new device thread. Errors that mean "no
// usable GPU here" wrap backends.ErrUnavailable.
func openDevice(ordinal int, sc stagingConfig) (*device, error) {
	drv, err := loadDriver()
	if err != nil {
		return nil, err
	}
	d := &device{drv: drv, staging: sc}
	d.th, err = startDeviceThread(func() error { return d.setup(ordinal) })
	if err != nil {
		return nil, err
	}
	return d, nil
}

// setup runs on the device thread.
func (d *device) setup(ordinal int) error {
	drv := d.drv
	if err := drv.check("cuInit", drv.cuInit(0)); err != nil {
		return unavailable(err)
	}
	var n int32
	if err := drv.check("cuDeviceGetCount", drv.cuDeviceGetCount(&n)); err != nil {
		return unavailable(err)
	}
	if int(n) <= ordinal {
		return unavailable(fmt.Errorf("cuda: device %d asked for, the driver sees %d", ordinal, n))
	}
	if err := drv.check("cuDeviceGet", drv.cuDeviceGet(&d.dev, int32(ordinal))); err != nil {
		return unavailable(err)
	}
	name := make([]byte, 256)
	if err := drv.check("cuDeviceGetName", drv.cuDeviceGetName(&name[0], int32(len(name)), d.dev)); err != nil {
		return err
	}
	d.name = string(name[:max(bytes.IndexByte(name, 0), 0)])
	var total uint64
	if err := drv.check("cuDeviceTotalMem", drv.cuDeviceTotalMem(&total, d.dev)); err != nil {
		return err
	}
	d.totalMem = int64(total)
	if err := drv.check("cuDevicePrimaryCtxRetain", drv.cuDevicePrimaryCtxRetain(&d.ctx, d.dev)); err != nil {
		return unavailable(err)
	}
	if err := drv.check("cuCtxSetCurrent", drv.cuCtxSetCurrent(d.ctx)); err != nil {
		drv.cuDevicePrimaryCtxRelease(d.dev)
		return err
	}
	ptx := append(append([]byte(nil), kernelsPTX...), 0)
	if err := drv.check("cuModuleLoadData", drv.cuModuleLoadData(&d.module, unsafe.Pointer(&ptx[0]))); err != nil {
		drv.cuDevicePrimaryCtxRelease(d.dev)
		return fmt.Errorf("load kernels (PTX for sm_80; the driver must support PTX ISA 7.0): %w", err)
	}
	fn := append([]byte(kernelChunkSums), 0)
	if err := drv.check("cuModuleGetFunction", drv.cuModuleGetFunction(&d.sumsFn, d.module, &fn[0])); err != nil {
		drv.cuModuleUnload(d.module)
		drv.cuDevicePrimaryCtxRelease(d.dev)
		return err
	}
	return nil
}

// close stops the staging workers, unloads the kernels, releases the context
// and stops the device thread. Device allocations must be freed first.
func (d *device) close() {
	d.stagingMu.Lock()
	d.freeStagers()
	d.stagingMu.Unlock()
	d.th.close(func() {
		d.drv.cuModuleUnload(d.module)
		d.drv.cuDevicePrimaryCtxRelease(d.dev)
	})
}

// do runs f on the device thread.
func (d *device) do(f func() error) error { return d.th.do(f) }

// memInfo returns free and total device memory.
func (d *device) memInfo() (free, total int64, err error) {
	err = d.do(func() error {
		var f, t uint64
		if err := d.drv.check("cuMemGetInfo", d.drv.cuMemGetInfo(&f, &t)); err != nil {
			return err
		}
		free, total = int64(f), int64(t)
		return nil
	})
	return free, total, err
}

// alloc allocates n bytes of device memory.
func (d *device) alloc(n int64) (cuDevicePtr, error) {
	var p cuDevicePtr
	err := d.do(func() error { return d.drv.check("cuMemAlloc", d.drv.cuMemAlloc(&p, uint64(max(n, 1)))) })
	return p, err
}

// free frees device memory from alloc; 0 is ignored.
func (d *device) free(p cuDevicePtr) error {
	if p == 0 {
		return nil
	}
	return d.do(func() error { return d.drv.check("cuMemFree", d.drv.cuMemFree(p)) })
}

// allocHost allocates n bytes of pinned host memory (a thread with the
// context current only).
func (d *device) allocHost(n int64) ([]byte, error) {
	var p unsafe.Pointer
	if err := d.drv.check("cuMemAllocHost", d.drv.cuMemAllocHost(&p, uint64(n))); err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), n), nil
}

// chunkSums runs the sweep kernel over the n F32 weights at w and copies
// the per-chunk lane sums into out (len(out) = chunks of chunkParams).
// partial is device scratch of at least 8·len(out) doubles.
func (d *device) chunkSums(w cuDevicePtr, n int64, chunkParams int64, c *[8]float64, partial cuDevicePtr, out []float64) error {
	threads := uint64(len(out))
	if threads == 0 {
		return nil
	}
	const block = 256
	grid := uint32((threads + block - 1) / block)
	return d.do(func() error {
		args := struct {
			w       cuDevicePtr
			n       uint64
			chunk   uint64
			c       [8]float64
			partial cuDevicePtr
			threads uint64
		}{w, uint64(n), uint64(chunkParams), *c, partial, threads}
		params := [6]unsafe.Pointer{
			unsafe.Pointer(&args.w), unsafe.Pointer(&args.n), unsafe.Pointer(&args.chunk),
			unsafe.Pointer(&args.c), unsafe.Pointer(&args.partial), unsafe.Pointer(&args.threads),
		}
		// params holds Go pointers and goes to C: pin both.
		var pin runtime.Pinner
		pin.Pin(&args)
		pin.Pin(&params)
		defer pin.Unpin()
		if err := d.drv.check("cuLaunchKernel", d.drv.cuLaunchKernel(d.sumsFn, grid, 1, 1, block, 1, 1, 0, 0, unsafe.Pointer(&params[0]), nil)); err != nil {
			return err
		}
		return d.drv.check("cuMemcpyDtoH", d.drv.cuMemcpyDtoH(unsafe.Pointer(&out[0]), partial, uint64(8*len(out))))
	})
}

// pageSize is the host's page size.
var pageSize = int64(os.Getpagesize())
