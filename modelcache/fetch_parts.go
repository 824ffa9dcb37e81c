package modelcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/internal/s3x"
)

// Tuning of the download path, chosen by measurement (genfleet bench fetch)
// on a 2-core machine; see docs/benchmarks.md.
const (
	// partBufSize is each part worker's buffer between the S3 body and
	// pwrite. Larger buffers mean fewer syscalls; the hasher can only run
	// as far as whole writes have landed.
	partBufSize = 1 << 20
	// hashBufSize is the hasher's read size.
	hashBufSize = 4 << 20
	// commitEvery is how long finished parts may wait to be made durable
	// and recorded in the progress log.
	commitEvery = 500 * time.Millisecond
	// progressEvery is the most often Options.Progress is called per fetch.
	progressEvery = 250 * time.Millisecond
)

// Retry backoff between attempts of one part: exponential from
// fetchBackoffMin, capped at fetchBackoffMax, with jitter. Variables so that
// tests can shorten or lengthen them.
var (
	fetchBackoffMin = 200 * time.Millisecond
	fetchBackoffMax = 10 * time.Second
)

// errStalled is the cause of a part cancelled by the stall watchdog.
var errStalled = errors.New("stalled: no bytes received")

// fetchPart is one byte range of the object.
type fetchPart struct {
	off, n int64
	// written is how many bytes from off are in the file, contiguous. Only
	// the part's worker stores it; the hasher and the progress reporter load
	// it. A retry resumes from it: the ETag pin guarantees the same bytes
	// (and with part digests, the part's hash checks them).
	written atomic.Int64
	// verified is set, with part digests, once the part's bytes matched
	// its digest; the hasher reads a part only then.
	verified atomic.Bool
}

// hashable is how many bytes of p the whole-file hasher may read: with
// part digests only a verified part counts, else whatever is written.
func (ft *fetcher) hashable(p *fetchPart) int64 {
	if ft.sums == nil {
		return p.written.Load()
	}
	if p.verified.Load() {
		return p.n
	}
	return 0
}

// fetcher downloads one object version into a preallocated file with
// parallel ranged GETs, hashing the finished prefix as it grows.
//
// Goroutines: up to concurrency part workers, one committer (multi-part
// only) that makes finished parts durable and records them in the progress
// log, one hasher, and optionally one progress reporter. run owns them all
// and returns only after every one has exited.
type fetcher struct {
	src    Source
	u      s3x.URL
	etag   string
	size   int64
	digest string // "sha256:<hex>" when known, for Progress
	opts   Options
	f      *os.File
	parts  []fetchPart
	todo   []int        // indices of parts not finished before this run
	log    *progressLog // nil for a single-part fetch: nothing to resume
	// single means one plain GET of the whole object (size <= part size).
	single bool
	// sums, when set, are the part digests ("sha256:<hex>", one per part):
	// each part is hashed as it lands and must match before it counts.
	sums []string
	// pf, when set, delivers the parts (a PartSource's download); else
	// they come from src with ranged GETs.
	pf PartFetch

	fetched atomic.Int64  // bytes received from S3 by this run
	landed  chan struct{} // capacity 1: some part's written grew
}

// run downloads the missing parts and returns the sha256 of the whole
// file. On error every goroutine has stopped and the parts recorded in the
// progress log are durable and intact.
func (ft *fetcher) run(ctx context.Context) (string, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ft.landed = make(chan struct{}, 1)

	type hashResult struct {
		hex string
		err error
	}
	hashed := make(chan hashResult, 1)
	go func() {
		h, err := ft.hash(ctx)
		hashed <- hashResult{h, err}
	}()

	stopReport := ft.startReporter()

	var finished chan int
	commitDone := make(chan error, 1)
	if ft.log != nil {
		finished = make(chan int, len(ft.parts))
		go func() { commitDone <- ft.commit(finished) }()
	} else {
		commitDone <- nil
	}

	queue := make(chan int, len(ft.todo))
	for _, i := range ft.todo {
		queue <- i
	}
	close(queue)
	var wg sync.WaitGroup
	for range min(ft.opts.FetchConcurrency, len(ft.todo)) {
		wg.Go(func() {
			for i := range queue {
				if ctx.Err() != nil {
					return
				}
				if err := ft.fetchPart(ctx, i); err != nil {
					cancel(err)
					return
				}
				startWriteback(ft.f, ft.parts[i].off, ft.parts[i].n)
				if finished != nil {
					finished <- i
				}
			}
		})
	}
	wg.Wait()
	if finished != nil {
		close(finished)
	}
	if err := <-commitDone; err != nil {
		cancel(err)
	}
	if ctx.Err() != nil {
		<-hashed // the hasher stops on ctx
		stopReport()
		return "", context.Cause(ctx)
	}
	r := <-hashed
	stopReport()
	return r.hex, r.err
}

// commit makes finished parts durable and records them. It collects what
// has finished for up to commitEvery, fdatasyncs the file once for the whole
// batch, then appends the batch to the progress log; a resumed fetch so
// loses at most about commitEvery of work. Workers start the writeback of
// each part as it lands (startWriteback), so these syncs and the final one
// mostly wait for writes already under way instead of flushing gigabytes of
// dirty pages at the end.
func (ft *fetcher) commit(finished <-chan int) error {
	var batch []int
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := fdatasync(ft.f); err != nil {
			return fmt.Errorf("download %s: %w", ft.u, err)
		}
		if err := ft.log.record(batch); err != nil {
			return fmt.Errorf("download %s: %w", ft.u, err)
		}
		batch = batch[:0]
		return nil
	}
	var tick <-chan time.Time
	for {
		select {
		case i, ok := <-finished:
			if !ok {
				return flush()
			}
			batch = append(batch, i)
			if tick == nil {
				tick = time.After(commitEvery)
			}
		case <-tick:
			tick = nil
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

// startWriteback asks the kernel to start writing a finished part to disk
// without waiting for it (sync_file_range SYNC_FILE_RANGE_WRITE). It is a
// hint: durability still comes from fdatasync.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// hash reads the file in order as its prefix lands and returns its sha256.
// It never waits for more than the part after the hashed prefix, so when the
// last part lands only the not-yet-hashed tail remains. On resume the parts
// finished earlier are read back from the file.
func (ft *fetcher) hash(ctx context.Context) (string, error) {
	h := sha256.New()
	buf := make([]byte, min(int64(hashBufSize), ft.size))
	var off int64
	for i := range ft.parts {
		p := &ft.parts[i]
		end := p.off + p.n
		for off < end {
			avail := p.off + ft.hashable(p)
			if avail <= off {
				select {
				case <-ft.landed:
				case <-ctx.Done():
					return "", context.Cause(ctx)
				}
				continue
			}
			for off < avail {
				b := buf[:min(int64(len(buf)), avail-off)]
				if _, err := ft.f.ReadAt(b, off); err != nil {
					return "", fmt.Errorf("download %s: hash: %w", ft.u, err)
				}
				h.Write(b)
				off += int64(len(b))
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// signal wakes the hasher.
func (ft *fetcher) signal() {
	select {
	case ft.landed <- struct{}{}:
	default:
	}
}

// fetchPart downloads part i, retrying with backoff. It returns nil once the
// part is entirely in the file.
func (ft *fetcher) fetchPart(ctx context.Context, i int) error {
	for attempt := 0; ; attempt++ {
		err := ft.fetchOnce(ctx, i)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if !retryable(err) || attempt >= ft.opts.FetchRetries {
			if attempt > 0 {
				return fmt.Errorf("%w (after %d attempts)", err, attempt+1)
			}
			return err
		}
		var pm *partMismatchError
		if ft.pf != nil && errors.As(err, &pm) {
			// The source has heard which bytes were bad and asks
			// elsewhere next: no reason to wait.
			ft.opts.Logger.Debug("refetching corrupt part", "url", ft.u.String(), "part", i, "attempt", attempt+1, "err", err)
			continue
		}
		d := backoff(attempt)
		ft.opts.Logger.Debug("retrying part", "url", ft.u.String(), "part", i,
			"attempt", attempt+1, "backoff", d, "err", err)
		if err := sleepCtx(ctx, d); err != nil {
			return err
		}
	}
}

// retryable reports whether another attempt at a part may succeed.
func retryable(err error) bool {
	var pm *partMismatchError
	if errors.As(err, &pm) {
		return true // fetched again, from scratch, perhaps from elsewhere
	}
	return !errors.Is(err, ErrChanged) && !errors.Is(err, ErrNotFound) &&
		!errors.Is(err, errWrite)
}

// partMismatchError is a part whose bytes did not hash to its part digest.
// It wraps ErrDigestMismatch, so that a part that keeps arriving wrong
// until the retries run out fails the fetch as a digest mismatch.
type partMismatchError struct {
	u         s3x.URL
	i         int
	off, n    int64
	got, want string
}

func (e *partMismatchError) Error() string {
	return fmt.Sprintf("download %s: part %d (bytes %d-%d) hashes to sha256:%s but the manifest says %s; the part was thrown away",
		e.u, e.i, e.off, e.off+e.n-1, e.got, e.want)
}

func (e *partMismatchError) Unwrap() error { return ErrDigestMismatch }

// errWrite marks local file-system errors: retrying the GET does not help.
var errWrite = errors.New("write to tmp file")

// backoff returns the wait before retry attempt+1: exponential with full
// jitter over its upper half, so that many fetchers do not retry in step.
func backoff(attempt int) time.Duration {
	d := fetchBackoffMax
	if attempt < 30 {
		d = min(fetchBackoffMax, fetchBackoffMin<<attempt)
	}
	return d/2 + rand.N(d/2+1)
}

// sleepCtx waits for d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// fetchOnce makes one attempt at the rest of part i: one GET of the bytes
// not yet written, under the stall watchdog. With part digests it hashes
// the part (what earlier attempts wrote, read back, then what arrives) and
// checks it when complete: a part that does not match is thrown away
// (written back to 0) and the attempt fails with a partMismatchError.
func (ft *fetcher) fetchOnce(ctx context.Context, i int) error {
	p := &ft.parts[i]
	start := p.written.Load()
	if start == p.n && (ft.sums == nil || p.verified.Load()) {
		return nil
	}
	var ph hash.Hash
	if ft.sums != nil {
		ph = sha256.New()
		if start > 0 {
			if err := readInto(ph, ft.f, p.off, start); err != nil {
				return fmt.Errorf("download %s: %w: read back part %d: %w", ft.u, errWrite, i, err)
			}
		}
	}
	pctx, pcancel := context.WithCancelCause(ctx)
	defer pcancel(nil)
	wd := &watchdog{cancel: pcancel}
	wd.t = time.AfterFunc(ft.opts.StallTimeout, wd.fire)
	defer wd.t.Stop()

	var body io.ReadCloser
	var err error
	// A whole-object GET unless a retry resumes a broken one: then the
	// rest, ranged, like any part.
	whole := ft.single && start == 0
	switch {
	case start == p.n:
		body = io.NopCloser(strings.NewReader("")) // all written: check it
	case whole:
		body, err = ft.src.Get(pctx, ft.u.Bucket, ft.u.Key, ft.etag)
	case ft.pf != nil:
		body, err = ft.pf.Get(pctx, i, start)
	default:
		body, err = ft.src.GetRange(pctx, ft.u.Bucket, ft.u.Key, ft.etag, p.off+start, p.n-start)
	}
	if err != nil {
		return stallCause(pctx, err)
	}
	if !wd.watch(body) {
		body.Close()
		return stallCause(pctx, errStalled)
	}
	defer body.Close()

	buf := make([]byte, min(int64(partBufSize), p.n))
	r := &stallReader{r: body, wd: wd, d: ft.opts.StallTimeout}
	written := start
	for written < p.n {
		n, rerr := io.ReadFull(r, buf[:min(int64(len(buf)), p.n-written)])
		if n > 0 {
			ft.fetched.Add(int64(n))
			if _, err := ft.f.WriteAt(buf[:n], p.off+written); err != nil {
				return fmt.Errorf("download %s: %w: %w", ft.u, errWrite, err)
			}
			if ph != nil {
				ph.Write(buf[:n])
			}
			written += int64(n)
			p.written.Store(written)
			ft.signal()
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
				rerr = fmt.Errorf("body ended after %d of %d bytes: %w", written-start, p.n-start, io.ErrUnexpectedEOF)
			}
			return stallCause(pctx, fmt.Errorf("download %s bytes %d-%d: %w", ft.u, p.off+start, p.off+p.n-1, rerr))
		}
	}
	if whole {
		// A whole-object GET must end exactly at the size Head reported.
		var one [1]byte
		if n, _ := io.ReadFull(body, one[:]); n > 0 {
			return &kindError{kind: ErrChanged, msg: fmt.Sprintf(
				"download %s: body is longer than the %d bytes Head reported", ft.u, ft.size)}
		}
	}
	if ph != nil {
		return ft.checkPart(i, hex.EncodeToString(ph.Sum(nil)))
	}
	return nil
}

// checkPart compares complete part i, which hashed to got, with its
// digest, tells the PartFetch the verdict and, on a match, lets the hasher
// read the part; on a mismatch the part is thrown away.
func (ft *fetcher) checkPart(i int, got string) error {
	p := &ft.parts[i]
	ok := "sha256:"+got == ft.sums[i]
	if ft.pf != nil {
		ft.pf.Done(i, ok)
	}
	if !ok {
		p.written.Store(0)
		return &partMismatchError{u: ft.u, i: i, off: p.off, n: p.n, got: got, want: ft.sums[i]}
	}
	p.verified.Store(true)
	ft.signal()
	return nil
}

// readInto writes n bytes of f from off to w.
func readInto(w io.Writer, f *os.File, off, n int64) error {
	_, err := io.Copy(w, io.NewSectionReader(f, off, n))
	return err
}

// hashRange returns the hex sha256 of n bytes of f from off, reading with
// buf and checking ctx between reads.
func hashRange(ctx context.Context, f *os.File, off, n int64, buf []byte) (string, error) {
	h := sha256.New()
	for end := off + n; off < end; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		b := buf[:min(int64(len(buf)), end-off)]
		if _, err := f.ReadAt(b, off); err != nil {
			return "", err
		}
		h.Write(b)
		off += int64(len(b))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// stallCause returns errStalled (wrapped, with the original error) when the
// watchdog cancelled the attempt, else err.
func stallCause(pctx context.Context, err error) error {
	if errors.Is(context.Cause(pctx), errStalled) && !errors.Is(err, errStalled) {
		return fmt.Errorf("%w: %w", errStalled, err)
	}
	return err
}

// watchdog cancels an attempt whose body delivers no bytes for the stall
// timeout, and closes the body too, in case a Source's body does not watch
// its context.
type watchdog struct {
	t      *time.Timer
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	body   io.Closer
	fired  bool
}

func (w *watchdog) fire() {
	w.cancel(errStalled)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fired = true
	if w.body != nil {
		w.body.Close()
	}
}

// watch registers body to close on a stall; false means the watchdog has
// fired already.
func (w *watchdog) watch(body io.Closer) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.body = body
	return !w.fired
}

// stallReader re-arms the watchdog whenever bytes arrive.
type stallReader struct {
	r  io.Reader
	wd *watchdog
	d  time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.wd.t.Reset(s.d)
	}
	return n, err
}

// startReporter calls Options.Progress every progressEvery until the
// returned stop is called, which makes the final call (Finished set).
func (ft *fetcher) startReporter() (stop func()) {
	fn := ft.opts.Progress
	if fn == nil {
		return func() {}
	}
	report := func(finished bool) {
		var done int64
		for i := range ft.parts {
			done += ft.parts[i].written.Load()
		}
		fn(FetchProgress{URL: ft.u.String(), Digest: ft.digest, Done: done, Total: ft.size, Finished: finished})
	}
	quit := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				report(false)
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
		report(true)
	}
}

// preallocate reserves size bytes for f, so that parts can be written in
// any order without fragmenting the file or running out of space half way.
// File systems without fallocate(2) get a sparse file of the right size.
func preallocate(f *os.File, size int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), 0, 0, size)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
			return f.Truncate(size)
		default:
			return fmt.Errorf("preallocate %d bytes: %w", size, err)
		}
	}
}

// fdatasync flushes f's data (and the metadata needed to read it back).
func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				return fmt.Errorf("fdatasync %s: %w", f.Name(), err)
			}
			return nil
		}
	}
}
