package cuda

import (
	"context"
	"fmt"
	"time"
	"unsafe"
)

// uploadStats describes one upload.
type uploadStats struct {
	Strategy Strategy
	Bytes    int64
	// Setup is time spent before copying (registration); Copy the rest,
	// unregistration included.
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
// returning; Staged runs on the staging workers (see stager). If the driver refuses a read-only registration, Registered
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
		if uerr := d.drv.check("cuMemHostUnregister", d.drv.cuMemHostUnregister(reg)); err == nil {
			err = uerr
		}
		// The unregistration (a third of the registration's time) is part
		// of the upload's cost: it is counted with the copy.
		st.Copy = time.Since(t1)
		return err
	})
}
