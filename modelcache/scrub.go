package modelcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of the scrubber, written where the worker's flags declare them.
const (
	// DefaultScrubRate is 32 MiB/s: about 1.5% of one core for sha256 with
	// SHA extensions, and little of any disk's bandwidth; it scrubs 1 TiB
	// in about 9 hours.
	DefaultScrubRate = 32 << 20
	// DefaultScrubInterval is how long a blob's last hash stays good.
	DefaultScrubInterval = 7 * 24 * time.Hour
)

// ScrubConfig configures a Scrubber.
type ScrubConfig struct {
	// Rate caps the bytes per second the scrubber reads and hashes; 0
	// disables scrubbing. (The worker's --scrub-rate defaults to
	// DefaultScrubRate.)
	Rate int64
	// Interval is how long a blob's last hash (by any process on the host:
	// at fetch, at first use, or by a scrubber) stays good before a
	// scrubber hashes it again; 0 disables scrubbing. (The worker's
	// --scrub-interval defaults to DefaultScrubInterval.)
	Interval time.Duration
	// Check is how often the scrubber looks for blobs that are due.
	// Default min(Interval, 10m).
	Check time.Duration
}

// ScrubResult is what one scrub pass did.
type ScrubResult struct {
	// Scrubbed counts the blobs hashed, and Bytes their bytes.
	Scrubbed int
	Bytes    int64
	// Direct counts the blobs read with O_DIRECT, from the media rather
	// than the page cache (file systems without O_DIRECT are read through
	// the page cache).
	Direct int
	// Corrupt lists the digests found corrupt and quarantined.
	Corrupt []string
	// Fresh counts blobs skipped because they were hashed within Interval
	// in this boot; Busy those skipped because another scrubber held them
	// or an eviction was removing them.
	Fresh, Busy int
}

// Scrubber re-hashes cached blobs in the background at a bounded rate and
// quarantines corrupt ones, so that damage at rest is found before a job
// maps it. Each blob is hashed at most once per Interval by all the
// processes of a host together: a blob is due when its verification
// record (see VerifyPerBoot) is older than Interval or from another boot,
// and a process scrubs a blob only while it holds the blob's scrub lock
// (locks/scrub-sha256-<hex>.lock, taken without waiting: a busy blob is
// someone else's). After a reboot every record is stale, so the scrubber
// also verifies blobs ahead of their first use.
//
// Reads bypass the page cache (O_DIRECT) where the file system allows it:
// the point is to check the copy at rest, which pages cached since the
// blob was fetched would hide, and it leaves the page cache, the warmth
// the router relies on, alone. The scrubber holds a lease on the blob it
// reads (eviction skips it meanwhile) but not its fetch lock; it takes
// that lock only to write the record or to quarantine.
//
// Start runs the loop; Shutdown stops it and waits. A read-only Cache, or
// a zero Rate or Interval, makes a Scrubber whose loop does nothing.
type Scrubber struct {
	c   *Cache
	cfg ScrubConfig

	once    sync.Once
	cancel  context.CancelFunc
	stopped chan struct{}
}

// NewScrubber returns a scrubber of c's blobs; it does nothing until
// Start.
func (c *Cache) NewScrubber(cfg ScrubConfig) *Scrubber {
	if cfg.Check <= 0 {
		cfg.Check = min(cfg.Interval, 10*time.Minute)
	}
	return &Scrubber{c: c, cfg: cfg, stopped: make(chan struct{})}
}

// Enabled reports whether Start would scrub anything: a rate and an
// interval, a writable cache, and a boot id (the records that share the
// work between processes need one).
func (s *Scrubber) Enabled() bool {
	return s.cfg.Rate > 0 && s.cfg.Interval > 0 && !s.c.opts.ReadOnly && s.c.bootID != ""
}

// Start starts the scrub loop in a goroutine: a pass at once, then one
// every Check. Call it at most once.
func (s *Scrubber) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if !s.Enabled() {
		close(s.stopped)
		return
	}
	s.c.opts.Logger.Info("model cache scrubber started", "rate_bytes_per_s", s.cfg.Rate, "interval", s.cfg.Interval)
	go func() {
		defer close(s.stopped)
		for {
			res, err := s.Pass(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				s.c.opts.Logger.Warn("model cache scrub", "err", err)
			}
			if res.Scrubbed > 0 {
				s.c.opts.Logger.Info("model cache scrub pass", "blobs", res.Scrubbed, "bytes", res.Bytes,
					"corrupt", len(res.Corrupt), "fresh", res.Fresh, "busy", res.Busy)
			}
			t := time.NewTimer(s.cfg.Check)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()
}

// Shutdown stops the loop and waits for it. A blob being hashed is left as
// it was (no record, nothing quarantined). It is idempotent; Start must
// have been called.
func (s *Scrubber) Shutdown() {
	s.once.Do(s.cancel)
	<-s.stopped
}

// Pass scrubs every blob that is due, oldest verification first, at the
// configured rate. It stops early when ctx is done, returning ctx's error.
func (s *Scrubber) Pass(ctx context.Context) (ScrubResult, error) {
	var res ScrubResult
	if err := s.c.writable("scrub"); err != nil {
		return res, err
	}
	if s.cfg.Rate <= 0 || s.cfg.Interval <= 0 {
		return res, errors.New("scrub: rate and interval must be positive")
	}
	infos, err := s.c.list(false)
	if err != nil {
		return res, err
	}
	type due struct {
		hex  string
		last time.Time
	}
	var todo []due
	now := time.Now()
	for _, bi := range infos {
		hex := bi.Digest[len("sha256:"):]
		st, err := s.c.stampPath(bi.Path)
		if err != nil {
			continue // evicted while we looked
		}
		rec, ok := s.c.verifiedAs(hex, st)
		if ok && now.Sub(rec.VerifiedAt) < s.cfg.Interval {
			res.Fresh++
			continue
		}
		todo = append(todo, due{hex, rec.VerifiedAt})
	}
	slices.SortFunc(todo, func(a, b due) int { return a.last.Compare(b.last) })
	var errs []error
	for _, d := range todo {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := s.scrubBlob(ctx, d.hex, &res); err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// scrubBlob hashes one due blob under its scrub lock and records or
// quarantines it.
func (s *Scrubber) scrubBlob(ctx context.Context, hex string, res *ScrubResult) error {
	c := s.c
	lk, err := c.tryLock("scrub-" + blobKey(hex))
	if err != nil {
		return fmt.Errorf("scrub sha256:%s: %w", hex, err)
	}
	if lk == nil {
		res.Busy++
		return nil
	}
	defer lk.Close()

	path := c.blobPath(hex)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // evicted
	}
	if err != nil {
		return fmt.Errorf("scrub sha256:%s: %w", hex, err)
	}
	defer f.Close()
	if ok, err := tryFlock(f, unix.LOCK_SH); err != nil || !ok {
		if err == nil {
			res.Busy++ // being evicted
		}
		return err
	}
	if same, err := sameFile(f, path); err != nil || !same {
		return err
	}
	st, err := c.stamp(f)
	if err != nil {
		return err
	}
	// Another scrubber may have finished this blob since Pass looked.
	if rec, ok := c.verifiedAs(hex, st); ok && time.Since(rec.VerifiedAt) < s.cfg.Interval {
		res.Fresh++
		return nil
	}
	start := time.Now()
	got, direct, err := s.hash(ctx, f, st.Size)
	if err != nil {
		return fmt.Errorf("scrub sha256:%s: %w", hex, err)
	}
	c.metrics.verified("scrub", st.Size)
	res.Scrubbed++
	res.Bytes += st.Size
	if direct {
		res.Direct++
	}
	if got != hex {
		res.Corrupt = append(res.Corrupt, "sha256:"+hex)
		cerr := c.corruptBlob(ctx, f, hex, got, false)
		c.opts.Logger.Warn("model cache scrub found a corrupt blob", "digest", "sha256:"+hex, "err", cerr)
		return nil
	}
	flk, _, err := c.lock(ctx, blobKey(hex))
	if err != nil {
		return fmt.Errorf("scrub sha256:%s: %w", hex, err)
	}
	defer flk.Close()
	if same, _ := sameFile(f, path); same {
		if after, err := c.stamp(f); err == nil && after == st {
			c.recordVerified(hex, st, start)
		}
	}
	return nil
}

// scrubChunk is the unit of a scrub read: a multiple of any block size, so
// that O_DIRECT reads stay aligned.
const scrubChunk = 1 << 20

// hash returns the sha256 of f's first size bytes, read at no more than
// the configured rate. It switches f to O_DIRECT for the read when the file
// system allows it (reporting direct) and back afterwards.
func (s *Scrubber) hash(ctx context.Context, f *os.File, size int64) (sum string, direct bool, err error) {
	buf, err := unix.Mmap(-1, 0, scrubChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return "", false, err
	}
	defer unix.Munmap(buf) // page-aligned, as O_DIRECT wants
	fd := int(f.Fd())
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_DIRECT); err == nil {
			direct = true
			defer unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl)
		}
	}
	h := sha256.New()
	start := time.Now()
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return "", direct, err
		}
		n, err := unix.Pread(fd, buf, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EINVAL) && direct {
			// The file system took the flag but not the read: go on through
			// the page cache.
			if !clearDirect(fd) {
				return "", direct, err
			}
			direct = false
			continue
		}
		if err != nil {
			return "", direct, err
		}
		if n == 0 {
			return "", direct, fmt.Errorf("file ends at %d bytes, want %d", off, size)
		}
		n = int(min(int64(n), size-off))
		h.Write(buf[:n])
		off += int64(n)
		if n < scrubChunk && off < size && direct {
			// A short read mid-file would leave the next one unaligned.
			direct = !clearDirect(fd)
		}
		// Throttle: off bytes may take no less than off/Rate seconds.
		ahead := time.Duration(float64(off)/float64(s.cfg.Rate)*float64(time.Second)) - time.Since(start)
		if ahead > 0 {
			if err := sleepCtx(ctx, ahead); err != nil {
				return "", direct, err
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), direct, nil
}

// clearDirect turns O_DIRECT off on fd and reports whether it did.
func clearDirect(fd int) bool {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_DIRECT)
	}
	return err == nil
}
