package modelcache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mountTmpfs mounts a tmpfs of size bytes at a new directory and unmounts it
// when the test ends. It skips (saying why) where mounting is not allowed:
// the test needs root, or CAP_SYS_ADMIN in a container.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small-fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+itoa(size)); err != nil {
		t.Skipf("cannot mount a tmpfs for the full-disk test (needs root or CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// A cache on a file system smaller than the model, with a budget larger
// than the file system: the fetch fails with a clear "no space" error,
// nothing half-written is ever served, no lock is left wedged, and a model
// that fits is then fetched and verified as usual.
func TestDiskFullFailsCleanly(t *testing.T) {
	e := newEnv(t)
	big, _ := e.push(t, "too-big", 12<<20)
	small, data := e.push(t, "fits", 1<<20)
	root := mountTmpfs(t, 8<<20)
	c, err := OpenWith(root, e.src, Options{Budget: 1 << 30, FetchRetries: 1})
	if err != nil {
		t.Fatal(err)
	}

	_, err = c.Acquire(t.Context(), big)
	if err == nil {
		t.Fatal("acquired a 12 MiB model on an 8 MiB file system")
	}
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "too-big") {
		t.Fatalf("error %q: want ENOSPC, naming the model", err)
	}
	if blobs := dirNames(t, filepath.Join(root, "blobs")); len(blobs) != 0 {
		t.Fatalf("blobs after a failed fetch: %v", blobs)
	}
	// The fetch preallocates, so a full disk fails before any byte is
	// downloaded and leaves no partial behind.
	if tmp := dirNames(t, filepath.Join(root, "tmp")); len(tmp) != 0 {
		t.Fatalf("tmp/ after a failed fetch: %v", tmp)
	}
	t.Logf("disk full: %v", err)

	// No lock is wedged: a model that fits is fetched and verified as usual.
	mod, err := c.Acquire(t.Context(), small)
	if err != nil {
		t.Fatalf("acquire a model that fits after the disk-full failure: %v", err)
	}
	defer mod.Close()
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("wrong bytes")
	}
}
