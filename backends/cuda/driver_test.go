package cuda

import (
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ebitengine/purego"

	"github.com/genfleet/genfleet/backends"
)

// driverPresent returns nil when a CUDA driver and device are usable
// here, or the reason they are not.
func driverPresent() error { return Available() }

func TestAvailableWithoutDriver(t *testing.T) {
	err := Available()
	if err == nil {
		t.Skip("a CUDA driver and device are present; the fallback path is not reachable here")
	}
	t.Logf("cuda unavailable here: %v", err)
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("Available: %v does not wrap backends.ErrUnavailable", err)
	}
	// Whatever is missing, the registry gives the same reason.
	_, nerr := backends.New("cuda")
	if !errors.Is(nerr, backends.ErrUnavailable) {
		t.Errorf(`backends.New("cuda"): %v does not wrap backends.ErrUnavailable`, nerr)
	}
	if _, lerr := loadDriver(); lerr != nil && !strings.Contains(lerr.Error(), libName) {
		t.Errorf("load error %q does not name %s", lerr, libName)
	}
}

func TestOpenDriverErrors(t *testing.T) {
	oldOpen, oldSym := dlopenFunc, dlsymFunc
	t.Cleanup(func() { dlopenFunc, dlsymFunc = oldOpen, oldSym })

	dlopenFunc = func(string) (uintptr, error) {
		return 0, errors.New("libcuda.so.1: cannot open shared object file: No such file or directory")
	}
	_, err := openDriver(libName)
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("missing library: %v does not wrap ErrUnavailable", err)
	}
	want := "cuda: libcuda.so.1 not found (no NVIDIA driver): libcuda.so.1: cannot open shared object file"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("missing library: %q, want prefix %q", err, want)
	}

	dlopenFunc = func(string) (uintptr, error) { return 1, nil }
	dlsymFunc = func(_ uintptr, name string) (uintptr, error) {
		if name == "cuMemHostRegister_v2" || name == "cuLaunchKernel" {
			return 0, errors.New("undefined symbol")
		}
		return 0, nil // 0 counts as missing too
	}
	_, err = openDriver(libName)
	if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "cuMemHostRegister_v2") {
		t.Errorf("missing symbols: %v", err)
	}
}

func TestCUError(t *testing.T) {
	var d *driver
	if err := d.check("cuInit", 0); err != nil {
		t.Errorf("CUDA_SUCCESS gave %v", err)
	}
	err := d.check("cuMemHostRegister", cuErrorNotSupported)
	if err == nil || !isCode(err, cuErrorNotSupported) || isCode(err, 2) {
		t.Fatalf("check: %v", err)
	}
	if got := err.Error(); got != "cuda: cuMemHostRegister failed with CUresult 801" {
		t.Errorf("message %q", got)
	}
	e := &cuError{call: "cuMemAlloc", code: 2, name: "CUDA_ERROR_OUT_OF_MEMORY", desc: "out of memory"}
	if got := e.Error(); got != "cuda: cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory" {
		t.Errorf("message %q", got)
	}
	if !errors.Is(unavailable(e), backends.ErrUnavailable) || !isCode(unavailable(e), 2) {
		t.Error("unavailable() loses the wrapped errors")
	}
}

func TestCString(t *testing.T) {
	b := []byte("CUDA_ERROR_INVALID_VALUE\x00junk")
	if got := cString(uintptr(unsafePointer(&b[0]))); got != "CUDA_ERROR_INVALID_VALUE" {
		t.Errorf("cString = %q", got)
	}
	if cString(0) != "" {
		t.Error("cString(0) not empty")
	}
}

func TestDeviceThreadRunsOnOneThread(t *testing.T) {
	var setupTID int
	th, err := startDeviceThread(func() error { setupTID = syscall.Gettid(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	tids := map[int]bool{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				_ = th.do(func() error {
					mu.Lock()
					tids[syscall.Gettid()] = true
					mu.Unlock()
					return nil
				})
			}
		}()
	}
	wg.Wait()
	if len(tids) != 1 || !tids[setupTID] {
		t.Errorf("closures ran on threads %v, setup on %d", tids, setupTID)
	}
	boom := errors.New("boom")
	if err := th.do(func() error { return boom }); err != boom {
		t.Errorf("do returned %v", err)
	}
	ranLast := false
	th.close(func() { ranLast = true })
	th.close(nil) // idempotent
	if !ranLast {
		t.Error("close did not run its last function")
	}
	if err := th.do(func() error { return nil }); !errors.Is(err, errThreadClosed) {
		t.Errorf("do after close: %v", err)
	}
	if _, err := startDeviceThread(func() error { return boom }); err != boom {
		t.Errorf("failed setup: %v", err)
	}
}

// TestDlopenWorksInThisBuild checks that purego can open a library and
// call into it in this build mode (CGO_ENABLED=0 included), using libc,
// which every Linux machine has: the same path libcuda takes.
func TestDlopenWorksInThisBuild(t *testing.T) {
	h, err := dlopenFunc("libc.so.6")
	if err != nil {
		t.Fatalf("dlopen libc.so.6: %v", err)
	}
	p, err := dlsymFunc(h, "getpid")
	if err != nil {
		t.Fatal(err)
	}
	var getpid func() int32
	purego.RegisterFunc(&getpid, p)
	if got := int(getpid()); got != os.Getpid() {
		t.Errorf("getpid through purego = %d, want %d", got, os.Getpid())
	}
}
