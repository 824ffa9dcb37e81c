package modelcache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Resident reports how many bytes of b are in RAM now, from mincore(2) on
// its memory: for a shared mapping that is the blob's pages in the page
// cache (shared with every process on the host), for a private copy the
// copy's pages. It is what "warm" means to the router.
func (b *Blob) Resident() (int64, error) {
	if b.Data == nil {
		return 0, fmt.Errorf("resident bytes of blob %s: the model is closed", b.Digest)
	}
	n, err := residentBytes(b.Data)
	if err != nil {
		return 0, fmt.Errorf("resident bytes of blob %s: %w", b.Digest, err)
	}
	return n, nil
}

// Resident sums Resident over the model's blobs.
func (m *Model) Resident() (int64, error) {
	var sum int64
	for _, b := range m.Blobs {
		n, err := b.Resident()
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// Residency reports how many bytes of a cached blob are in the page cache,
// for a blob this process need not have mapped: it takes a lease, maps the
// blob, asks mincore, and unmaps. Mapping without touching faults nothing
// in, so asking does not change the answer. hexOrDigest is "sha256:<hex>"
// or the bare hex. A blob that is not in the cache yields an error wrapping
// ErrNotCached.
func (c *Cache) Residency(hexOrDigest string) (int64, error) {
	hex, err := parseHexOrDigest(hexOrDigest)
	if err != nil {
		return 0, fmt.Errorf("residency: %w", err)
	}
	f, err := os.Open(c.blobPath(hex))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, &kindError{kind: ErrNotCached, msg: fmt.Sprintf("residency: sha256:%s is not in the cache at %s", hex, c.root)}
	}
	if err != nil {
		return 0, fmt.Errorf("residency: %w", err)
	}
	defer f.Close()
	return fileResidency(f)
}

// fileResidency maps f briefly under a shared lease and counts its resident
// bytes. If an evictor holds the exclusive lock right now, the blob is
// about to be gone: it reports 0.
func fileResidency(f *os.File) (int64, error) {
	ok, err := tryFlock(f, unix.LOCK_SH)
	if err != nil || !ok {
		return 0, err
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Size() == 0 {
		return 0, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("map %s for mincore: %w", f.Name(), err)
	}
	defer unix.Munmap(data)
	return residentBytes(data)
}

// residentBytes counts the bytes of data (which must start on a page
// boundary, as every mapping does) whose pages are resident.
func residentBytes(data []byte) (int64, error) {
	if len(data) == 0 {
		return 0, nil
	}
	ps := os.Getpagesize()
	pages := (len(data) + ps - 1) / ps
	vec := make([]byte, pages)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE,
		uintptr(unsafe.Pointer(&data[0])), uintptr(len(data)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return 0, fmt.Errorf("mincore: %w", errno)
	}
	var n int64
	for i, v := range vec {
		if v&1 == 0 {
			continue
		}
		if i == pages-1 {
			n += int64(len(data) - i*ps)
		} else {
			n += int64(ps)
		}
	}
	return n, nil
}

// parseHexOrDigest accepts "sha256:<hex>", "sha256-<hex>" (a blob's file
// name) or a bare hex digest.
func parseHexOrDigest(s string) (string, error) {
	h := s
	for _, p := range []string{"sha256:", "sha256-"} {
		if rest, ok := strings.CutPrefix(s, p); ok {
			h = rest
			break
		}
	}
	if len(h) != 64 || !isLowerHex(h) {
		return "", fmt.Errorf("%q is not a sha256 digest (want sha256:<64 lowercase hex digits>)", s)
	}
	return h, nil
}
