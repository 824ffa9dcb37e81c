package modelcache

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VerityStatus is what the file system holding a cache says about
// fs-verity (FS_IOC_ENABLE_VERITY): a kernel feature that keeps a Merkle
// tree beside a read-only file and checks every page against it as it is
// read, so corruption at rest shows as an I/O error rather than other
// bytes.
//
// genfleet detects it and reports it (the worker logs it at start-up); it
// does not enable it on blobs yet. With it, verification would cost nothing
// at first use and leave no window between scrubs, but a corrupt page would
// fault a mapped blob with SIGBUS inside a running engine instead of being
// found before the job, and few file systems have it on (ext4 needs the
// verity feature set at mkfs or with tune2fs, and a kernel with
// CONFIG_FS_VERITY). See docs/architecture.md.
type VerityStatus struct {
	// Supported is true when the file system would enable fs-verity on a
	// file in the cache.
	Supported bool
	// Reason says why not (or, when supported, what answered).
	Reason string
}

func (v VerityStatus) String() string {
	if v.Supported {
		return "supported"
	}
	return "unsupported: " + v.Reason
}

// FSVerity reports whether the cache's file system supports fs-verity, as
// probed when the Cache was opened.
func (c *Cache) FSVerity() VerityStatus { return c.verity }

// probeVerity asks the file system holding dir whether it supports
// fs-verity, without changing anything: FS_IOC_MEASURE_VERITY on the
// directory answers ENODATA (no verity on this inode) where the file system
// supports it, EOPNOTSUPP where the kernel or the file system lacks the
// feature, and ENOTTY where the file system does not know the call.
func probeVerity(dir string) VerityStatus {
	f, err := os.Open(dir)
	if err != nil {
		return VerityStatus{Reason: fmt.Sprintf("cannot probe: %v", err)}
	}
	defer f.Close()
	// struct fsverity_digest with room for no digest: a verity file would
	// answer EOVERFLOW, which still means supported.
	var d unix.FsverityDigest
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_MEASURE_VERITY, uintptr(unsafe.Pointer(&d)))
	switch {
	case errno == 0, errors.Is(errno, unix.ENODATA), errors.Is(errno, unix.EOVERFLOW):
		return VerityStatus{Supported: true, Reason: "the file system answers FS_IOC_MEASURE_VERITY"}
	case errors.Is(errno, unix.EOPNOTSUPP):
		return VerityStatus{Reason: "the kernel or the file system has the fs-verity feature off (ext4: tune2fs -O verity; kernel: CONFIG_FS_VERITY)"}
	case errors.Is(errno, unix.ENOTTY), errors.Is(errno, unix.EINVAL):
		return VerityStatus{Reason: "the file system does not implement fs-verity"}
	}
	return VerityStatus{Reason: fmt.Sprintf("probe failed: %v", errno)}
}
