package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/genfleet/genfleet/backends"
)

// libName is the CUDA driver library, installed with the NVIDIA driver
// (not with the CUDA toolkit).
const libName = "libcuda.so.1"

// Driver API types, as the C headers define them on 64-bit Linux.
type (
	cuResult    int32
	cuDevice    int32
	cuDevicePtr uint64
	cuHandle    uintptr // CUcontext, CUmodule, CUfunction, CUstream, CUevent
)

// Driver API constants used here.
const (
	cuMemHostRegisterReadOnly = 0x08 // CU_MEMHOSTREGISTER_READ_ONLY (CUDA 11.1+)
	cuStreamNonBlocking       = 0x01 // CU_STREAM_NON_BLOCKING
	cuEventDisableTiming      = 0x02 // CU_EVENT_DISABLE_TIMING
	cuErrorNotSupported       = 801  // CUDA_ERROR_NOT_SUPPORTED
)

// driver is the table of libcuda entry points this package calls. Every
// call must run on the device thread (see deviceThread), where the
// context is current.
type driver struct {
	handle uintptr

	cuInit                    func(flags uint32) cuResult
	cuDriverGetVersion        func(v *int32) cuResult
	cuGetErrorName            func(r cuResult, s *uintptr) cuResult
	cuGetErrorString          func(r cuResult, s *uintptr) cuResult
	cuDeviceGetCount          func(n *int32) cuResult
	cuDeviceGet               func(d *cuDevice, ordinal int32) cuResult
	cuDeviceGetName           func(name *byte, n int32, d cuDevice) cuResult
	cuDeviceTotalMem          func(bytes *uint64, d cuDevice) cuResult
	cuDevicePrimaryCtxRetain  func(ctx *cuHandle, d cuDevice) cuResult
	cuDevicePrimaryCtxRelease func(d cuDevice) cuResult
	cuCtxSetCurrent           func(ctx cuHandle) cuResult
	cuCtxSynchronize          func() cuResult
	cuMemGetInfo              func(free, total *uint64) cuResult
	cuMemAlloc                func(p *cuDevicePtr, n uint64) cuResult
	cuMemFree                 func(p cuDevicePtr) cuResult
	cuMemAllocHost            func(p *unsafe.Pointer, n uint64) cuResult
	cuMemFreeHost             func(p unsafe.Pointer) cuResult
	cuMemHostRegister         func(p unsafe.Pointer, n uint64, flags uint32) cuResult
	cuMemHostUnregister       func(p unsafe.Pointer) cuResult
	cuMemcpyHtoD              func(dst cuDevicePtr, src unsafe.Pointer, n uint64) cuResult
	cuMemcpyHtoDAsync         func(dst cuDevicePtr, src unsafe.Pointer, n uint64, s cuHandle) cuResult
	cuMemcpyDtoH              func(dst unsafe.Pointer, src cuDevicePtr, n uint64) cuResult
	cuStreamCreate            func(s *cuHandle, flags uint32) cuResult
	cuStreamDestroy           func(s cuHandle) cuResult
	cuStreamSynchronize       func(s cuHandle) cuResult
	cuEventCreate             func(e *cuHandle, flags uint32) cuResult
	cuEventRecord             func(e cuHandle, s cuHandle) cuResult
	cuEventSynchronize        func(e cuHandle) cuResult
	cuEventDestroy            func(e cuHandle) cuResult
	cuModuleLoadData          func(m *cuHandle, image unsafe.Pointer) cuResult
	cuModuleUnload            func(m cuHandle) cuResult
	cuModuleGetFunction       func(f *cuHandle, m cuHandle, name *byte) cuResult
	cuLaunchKernel            func(f cuHandle, gx, gy, gz, bx, by, bz, shared uint32, s cuHandle, params unsafe.Pointer, extra unsafe.Pointer) cuResult
}

// symbols maps each field of driver to its exported name. The _v2 names
// are the ones the CUDA headers bind since CUDA 3.2/4.0.
func (d *driver) symbols() []struct {
	fn   any
	name string
} {
	return []struct {
		fn   any
		name string
	}{
		{&d.cuInit, "cuInit"},
		{&d.cuDriverGetVersion, "cuDriverGetVersion"},
		{&d.cuGetErrorName, "cuGetErrorName"},
		{&d.cuGetErrorString, "cuGetErrorString"},
		{&d.cuDeviceGetCount, "cuDeviceGetCount"},
		{&d.cuDeviceGet, "cuDeviceGet"},
		{&d.cuDeviceGetName, "cuDeviceGetName"},
		{&d.cuDeviceTotalMem, "cuDeviceTotalMem_v2"},
		{&d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"},
		{&d.cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"},
		{&d.cuCtxSetCurrent, "cuCtxSetCurrent"},
		{&d.cuCtxSynchronize, "cuCtxSynchronize"},
		{&d.cuMemGetInfo, "cuMemGetInfo_v2"},
		{&d.cuMemAlloc, "cuMemAlloc_v2"},
		{&d.cuMemFree, "cuMemFree_v2"},
		{&d.cuMemAllocHost, "cuMemAllocHost_v2"},
		{&d.cuMemFreeHost, "cuMemFreeHost"},
		{&d.cuMemHostRegister, "cuMemHostRegister_v2"},
		{&d.cuMemHostUnregister, "cuMemHostUnregister"},
		{&d.cuMemcpyHtoD, "cuMemcpyHtoD_v2"},
		{&d.cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"},
		{&d.cuMemcpyDtoH, "cuMemcpyDtoH_v2"},
		{&d.cuStreamCreate, "cuStreamCreate"},
		{&d.cuStreamDestroy, "cuStreamDestroy_v2"},
		{&d.cuStreamSynchronize, "cuStreamSynchronize"},
		{&d.cuEventCreate, "cuEventCreate"},
		{&d.cuEventRecord, "cuEventRecord"},
		{&d.cuEventSynchronize, "cuEventSynchronize"},
		{&d.cuEventDestroy, "cuEventDestroy_v2"},
		{&d.cuModuleLoadData, "cuModuleLoadData"},
		{&d.cuModuleUnload, "cuModuleUnload"},
		{&d.cuModuleGetFunction, "cuModuleGetFunction"},
		{&d.cuLaunchKernel, "cuLaunchKernel"},
	}
}

var (
	loadOnce  sync.Once
	loadedDrv *driver
	loadErr   error
)

// dlopenFunc opens a shared library; tests replace it to exercise the
// error paths of loadDriver.
var dlopenFunc = func(name string) (uintptr, error) {
	return purego.Dlopen(name, purego.RTLD_NOW|purego.RTLD_LOCAL)
}

// dlsymFunc looks up a symbol; tests replace it.
var dlsymFunc = purego.Dlsym

// loadDriver opens libcuda once per process and binds every entry point.
// On failure the error wraps backends.ErrUnavailable and says why.
func loadDriver() (*driver, error) {
	loadOnce.Do(func() { loadedDrv, loadErr = openDriver(libName) })
	return loadedDrv, loadErr
}

// openDriver is loadDriver without the once: dlopen name, bind symbols.
func openDriver(name string) (*driver, error) {
	h, err := dlopenFunc(name)
	if err != nil {
		return nil, fmt.Errorf("cuda: %s not found (no NVIDIA driver): %v: %w", name, err, backends.ErrUnavailable)
	}
	d := &driver{handle: h}
	var missing []string
	for _, s := range d.symbols() {
		p, err := dlsymFunc(h, s.name)
		if err != nil || p == 0 {
			missing = append(missing, s.name)
			continue
		}
		purego.RegisterFunc(s.fn, p)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("cuda: %s lacks %v (driver too old? CUDA 11.1 or newer is needed): %w", name, missing, backends.ErrUnavailable)
	}
	return d, nil
}

// cuError is a failed driver call: which call, and the driver's code,
// name and description.
type cuError struct {
	call string
	code cuResult
	name string
	desc string
}

func (e *cuError) Error() string {
	if e.name == "" {
		return fmt.Sprintf("cuda: %s failed with CUresult %d", e.call, e.code)
	}
	return fmt.Sprintf("cuda: %s: %s (%d): %s", e.call, e.name, e.code, e.desc)
}

// check turns a CUresult into nil or a *cuError naming call.
func (d *driver) check(call string, r cuResult) error {
	if r == 0 {
		return nil
	}
	e := &cuError{call: call, code: r}
	if d != nil && d.cuGetErrorName != nil {
		var p uintptr
		if d.cuGetErrorName(r, &p) == 0 {
			e.name = cString(p)
		}
		if d.cuGetErrorString(r, &p) == 0 {
			e.desc = cString(p)
		}
	}
	return e
}

// isCode reports whether err is a driver error with code c.
func isCode(err error, c cuResult) bool {
	var e *cuError
	return errors.As(err, &e) && e.code == c
}

// cString copies the NUL-terminated string at p (owned by the driver).
func cString(p uintptr) string {
	if p == 0 {
		return ""
	}
	// Converting through memory keeps vet's unsafeptr check quiet: p is
	// C memory the Go collector does not manage.
	base := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	var b []byte
	for i := range 4096 {
		c := *(*byte)(unsafe.Add(base, i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}
