package modelcache

import (
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Validate reports whether m is a LoadMode this package knows.
func (m LoadMode) Validate() error {
	switch m {
	case LoadMMap, LoadRead:
		return nil
	}
	return fmt.Errorf("load mode %q: want %q or %q", string(m), LoadMMap, LoadRead)
}

// Validate reports whether a is an Advice this package knows.
func (a Advice) Validate() error {
	switch a {
	case AdviceNone, AdviceWillNeed, AdviceSequential, AdviceRandom, AdvicePopulate:
		return nil
	}
	return fmt.Errorf("advice %q: want none, willneed, sequential, random or populate", string(a))
}

// Validate reports whether p is a VerifyPolicy this package knows.
func (p VerifyPolicy) Validate() error {
	switch p {
	case VerifyPerBoot, VerifyNever, VerifyOnOpen:
		return nil
	}
	return fmt.Errorf("verify policy %q: want %q, %q or %q", string(p), VerifyPerBoot, VerifyOnOpen, VerifyNever)
}

// load turns a freshly leased and mapped blob into what the Cache's options
// ask for, adding the time of each step to rep. It is the last step of
// acquiring a file:
//
//   - LoadMMap: madvise the shared mapping with opts.Advice (populate
//     prefaults every page before load returns), then mlock it if asked.
//   - LoadRead: pread the blob into anonymous private memory while the lease
//     is still held (so no evictor can unlink it mid-read; an unlink would be
//     harmless to a reader, but the lease keeps the rule simple), then unmap
//     the shared mapping and release the lease: a private copy needs nothing
//     of the cache any more. Advice does not apply (reading faulted every
//     page of the copy in already); mlock does.
//
// On error b is closed.
func (c *Cache) load(b *Blob, rep *Report) error {
	var err error
	switch c.opts.LoadMode {
	case LoadRead:
		err = b.readPrivate(rep)
	default:
		err = b.advise(c.opts.Advice, rep)
	}
	if err == nil && c.opts.Mlock {
		t := time.Now()
		err = b.mlock()
		rep.Prefault += time.Since(t)
	}
	if err != nil {
		b.close()
	}
	return err
}

// advise applies a to b's mapping. Populate uses MADV_POPULATE_READ (Linux
// 5.14+), which faults every page in with one system call; on older
// kernels (EINVAL) it reads one byte of every page instead.
func (b *Blob) advise(a Advice, rep *Report) error {
	t := time.Now()
	defer func() { rep.Prefault += time.Since(t) }()
	var how int
	switch a {
	case AdviceNone, "":
		return nil
	case AdviceWillNeed:
		how = unix.MADV_WILLNEED
	case AdviceSequential:
		how = unix.MADV_SEQUENTIAL
	case AdviceRandom:
		how = unix.MADV_RANDOM
	case AdvicePopulate:
		err := unix.Madvise(b.Data, unix.MADV_POPULATE_READ)
		if errors.Is(err, unix.EINVAL) {
			touchPages(b.Data)
			return nil
		}
		if err != nil {
			return fmt.Errorf("prefault blob %s (%d bytes): %w", b.Digest, b.Size, err)
		}
		return nil
	default:
		return a.Validate()
	}
	if err := unix.Madvise(b.Data, how); err != nil {
		return fmt.Errorf("madvise %s blob %s: %w", a, b.Digest, err)
	}
	return nil
}

// touchSink keeps touchPages's reads from being optimised away.
var touchSink byte

// touchPages reads one byte of every page of data, faulting each page in.
func touchPages(data []byte) {
	ps := os.Getpagesize()
	var s byte
	for i := 0; i < len(data); i += ps {
		s += data[i]
	}
	touchSink = s
}

// readPrivate replaces b's shared mapping with a private copy of the blob
// in anonymous memory (allocated with mmap, not the Go heap, so that Close
// returns it to the kernel at once rather than at the next GC), then drops
// the mapping and the lease.
func (b *Blob) readPrivate(rep *Report) error {
	t := time.Now()
	defer func() { rep.Read += time.Since(t) }()
	if b.Size > math.MaxInt {
		return fmt.Errorf("blob %s: %d bytes do not fit this platform's address space", b.Digest, b.Size)
	}
	buf, err := unix.Mmap(-1, 0, int(b.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("allocate %d bytes to read blob %s: %w", b.Size, b.Digest, err)
	}
	if n, err := b.f.ReadAt(buf, 0); err != nil || int64(n) != b.Size {
		unix.Munmap(buf)
		if err == nil {
			err = fmt.Errorf("short read: %d of %d bytes", n, b.Size)
		}
		return fmt.Errorf("read blob %s: %w", b.Digest, err)
	}
	// The copy is complete: the shared mapping and the lease can go.
	shared := b.Data
	b.Data, b.private = buf, true
	var errs []error
	if err := unix.Munmap(shared); err != nil {
		errs = append(errs, fmt.Errorf("unmap blob %s: %w", b.Digest, err))
	}
	if err := b.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("release blob %s: %w", b.Digest, err))
	}
	b.f = nil
	if err := unix.Mprotect(buf, unix.PROT_READ); err != nil {
		errs = append(errs, fmt.Errorf("protect copy of blob %s: %w", b.Digest, err))
	}
	return errors.Join(errs...)
}

// mlock locks b's memory into RAM. The usual failure is RLIMIT_MEMLOCK, and
// the error says so with the current limits, since "cannot allocate memory"
// alone sends people looking in the wrong place.
func (b *Blob) mlock() error {
	err := unix.Mlock(b.Data)
	if err == nil {
		return nil
	}
	var lim unix.Rlimit
	limits := "unknown"
	if gerr := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); gerr == nil {
		limits = fmt.Sprintf("soft %s, hard %s", rlimitString(lim.Cur), rlimitString(lim.Max))
	}
	return fmt.Errorf("mlock blob %s (%d bytes): %w; RLIMIT_MEMLOCK is %s: raise it "+
		"(ulimit -l, LimitMEMLOCK= in systemd, --ulimit memlock= in docker) or load without mlock",
		b.Digest, b.Size, err, limits)
}

func rlimitString(v uint64) string {
	if v == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return fmt.Sprintf("%d bytes", v)
}
