package modelcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Blob is one cached file, mapped read-only and leased, or (LoadRead) read
// into a private copy.
//
// In LoadMMap mode Data is a MAP_SHARED, PROT_READ mapping of the whole
// blob: every process that maps the same blob shares the same page-cache
// pages, and the Blob holds the lease for as long as Data is mapped. In
// LoadRead mode Data is a private, read-only copy in anonymous memory and
// the Blob holds no lease (the file may be evicted; the copy stays valid).
// Writing to Data faults in both modes. Data is valid until the Model that
// holds the Blob is closed.
type Blob struct {
	// Digest is "sha256:<hex>" of the content.
	Digest string
	// Path is the blob's path in the cache, for engines that map the file
	// themselves; the lease protects it only while the Model is open.
	Path string
	Size int64
	Data []byte

	// f is the read-only descriptor that holds the lease (a shared flock)
	// for as long as Data is a mapping of the file; nil for a private copy.
	f *os.File
	// private is true when Data is a private copy (LoadRead).
	private bool
	// fresh is true when the Acquire that returned the Blob installed it,
	// hashing it as it arrived: it needs no further verification.
	fresh bool
}

// Private reports whether Data is a private copy (LoadRead) rather than a
// shared mapping of the cached file.
func (b *Blob) Private() bool { return b.private }

// errNoBlob means the blob is not (or no longer) in blobs/.
var errNoBlob = errors.New("blob not in cache")

// openBlob leases and maps the blob with the given hex digest. It returns
// errNoBlob when the blob is absent, or when it was evicted between our open
// and our lease (a lease on an unlinked inode would protect nothing, and a
// fresh copy may be renamed into place later). size is what the caller
// expects; a blob of another size is an error.
func (c *Cache) openBlob(ctx context.Context, hex string, size int64) (*Blob, error) {
	path := c.blobPath(hex)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoBlob
	}
	if err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	// An evictor holds LOCK_EX only for the instant of its unlink, so this
	// waits at most that long (or until ctx is done).
	if _, err := flockCtx(ctx, f, unix.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("lease blob sha256:%s: %w", hex, err)
	}
	same, err := sameFile(f, path)
	if err != nil || !same {
		f.Close()
		if err != nil {
			return nil, err
		}
		return nil, errNoBlob
	}
	// A blob whose size is not the manifest's was truncated or grown on
	// disk (blobs are never written in place by genfleet) — or the manifest
	// is wrong. The hash decides: a corrupt blob is quarantined and counts
	// as absent, so the caller fetches it again.
	if st, err := f.Stat(); err == nil && st.Size() != size {
		cerr := c.checkBlob(ctx, f, hex, st.Size(), "acquire")
		f.Close()
		if errors.Is(cerr, ErrCorrupt) {
			c.opts.Logger.Warn("model cache blob has the wrong size; quarantined, fetching again", "digest", "sha256:"+hex, "size", st.Size(), "want", size, "err", cerr)
			return nil, errNoBlob
		}
		if cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("blob sha256:%s is intact but %d bytes, while the manifest says %d: the manifest is wrong", hex, st.Size(), size)
	}
	return mapBlob(f, hex, path, size)
}

// mapBlob maps f, whose lease the caller already holds, and takes ownership
// of f: on error f is closed.
func mapBlob(f *os.File, hex, path string, size int64) (*Blob, error) {
	digest := "sha256:" + hex
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %s: %w", digest, err)
	}
	switch {
	case st.Size() != size:
		f.Close()
		return nil, fmt.Errorf("blob %s is %d bytes, the manifest says %d", digest, st.Size(), size)
	case size == 0:
		f.Close()
		return nil, fmt.Errorf("blob %s is empty: a file of 0 bytes cannot be mapped", digest)
	case size > math.MaxInt:
		f.Close()
		return nil, fmt.Errorf("blob %s: %d bytes do not fit this platform's address space", digest, size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("map blob %s (%d bytes): %w", digest, size, err)
	}
	return &Blob{Digest: digest, Path: path, Size: size, Data: data, f: f}, nil
}

// close unmaps the blob (or frees its private copy), then releases its
// lease: the lease must outlive the mapping.
func (b *Blob) close() error {
	var errs []error
	if b.Data != nil {
		if err := unix.Munmap(b.Data); err != nil {
			errs = append(errs, fmt.Errorf("unmap blob %s: %w", b.Digest, err))
		}
		b.Data = nil
	}
	if b.f != nil {
		if err := b.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("release blob %s: %w", b.Digest, err))
		}
		b.f = nil
	}
	return errors.Join(errs...)
}

// sameFile reports whether path still names the file f has open.
func sameFile(f *os.File, path string) (bool, error) {
	fst, err := f.Stat()
	if err != nil {
		return false, err
	}
	pst, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fst, pst), nil
}

// Model is an acquired model: every file of its manifest mapped and leased.
// Close it when done; until then its blobs cannot be evicted.
type Model struct {
	Manifest *Manifest
	// Blobs are in the order of Manifest.Files.
	Blobs  []*Blob
	Report Report

	closeOnce sync.Once
	closeErr  error
}

// Close unmaps every blob and releases the leases. It is idempotent; later
// calls return the first call's result. Data of the blobs must not be used
// after Close.
func (m *Model) Close() error {
	m.closeOnce.Do(func() {
		var errs []error
		for _, b := range m.Blobs {
			errs = append(errs, b.close())
		}
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

// Hold takes a further lease on every blob of m that outlives m's Close:
// for an engine process that keeps the files mapped between jobs. The
// returned release drops those leases; it is idempotent. Hold must be
// called while m is open (m's own leases keep the blobs from being evicted
// meanwhile, so each path still names the file m leased).
func (m *Model) Hold() (func(), error) {
	var held []*os.File
	release := func() {
		for _, f := range held {
			f.Close()
		}
		held = nil
	}
	for _, b := range m.Blobs {
		f, err := os.Open(b.Path)
		if err != nil {
			release()
			return nil, fmt.Errorf("hold blob %s: %w", b.Digest, err)
		}
		if ok, err := tryFlock(f, unix.LOCK_SH); err != nil || !ok {
			f.Close()
			release()
			if err == nil {
				err = errors.New("an eviction holds it")
			}
			return nil, fmt.Errorf("hold blob %s: %w", b.Digest, err)
		}
		held = append(held, f)
	}
	var once sync.Once
	return func() { once.Do(release) }, nil
}
