package modelcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// flip16 inverts 16 bytes of a cached blob in place at off, as a careless
// operator or failing media would (the cache never writes a blob; the test
// makes it writable for the moment).
func flip16(t *testing.T, path string, off int64) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 16)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xff
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
}

// counters gathers reg's counters and gauges as "name{label=value}" keys.
func counters(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[key] = m.Gauge.GetValue()
			}
		}
	}
	return got
}

// rebootTo makes the cache see another boot id, as after a reboot.
func rebootTo(t *testing.T, id string) {
	t.Helper()
	p := writeFile(t, "boot_id", []byte(id+"\n"))
	old := bootIDFile
	bootIDFile = p
	t.Cleanup(func() { bootIDFile = old })
}

// With the default policy a blob is hashed once per boot for every process
// on the host, and again when its stamp changes.
func TestPerBootVerification(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(3<<20+1, 21)
	d := importBlob(t, openCache(t, root, nil), data) // hashed as it was copied
	man := importedManifest(d, int64(len(data)))
	path := filepath.Join(root, blobsDir, strings.Replace(d, ":", "-", 1))
	size := float64(len(data))
	reg := prometheus.NewRegistry()
	hashed := func() float64 { return counters(t, reg)["genfleet_cache_verified_bytes_total{by=acquire}"] }
	open := func() *Cache { return openOpts(t, root, nil, Options{Metrics: reg}) }

	long := open() // a worker that lives through what follows
	if m := acquire(t, long, man); hashed() != 0 || !m.Report.Hit || m.Report.Origin != OriginDisk {
		t.Fatalf("first use after an import: hashed %v bytes, report %+v; want no re-hash (the import hashed it)", hashed(), m.Report)
	}
	if acquire(t, open(), man); hashed() != 0 {
		t.Fatalf("a second process re-hashed %v bytes; want the record shared", hashed())
	}

	// A write through the file system (here only its times) moves the
	// stamp: the next use anywhere hashes it once.
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, past, past); err != nil {
		t.Fatal(err)
	}
	if m := acquire(t, open(), man); hashed() != size || !m.Report.Hit || m.Report.Corrupt != 0 || m.Report.Verify <= 0 {
		t.Fatalf("after the blob's mtime changed: hashed %v bytes, report %+v; want one re-hash of %v", hashed(), m.Report, size)
	}
	if acquire(t, open(), man); hashed() != size {
		t.Fatalf("hashed %v bytes; want the new record shared", hashed())
	}
	if acquire(t, long, man); hashed() != size {
		t.Fatalf("the long-lived Cache hashed %v bytes; want it to take the record another process wrote", hashed())
	}

	rebootTo(t, "another-boot")
	if acquire(t, open(), man); hashed() != 2*size {
		t.Fatalf("after a reboot: hashed %v bytes, want %v", hashed(), 2*size)
	}
}

// Processes that start together on a blob nobody verified this boot hash
// it once between them: the first holds the blob's lock while it hashes,
// the others wait and take its record.
func TestPerBootConcurrentProcessesHashOnce(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(8<<20, 22)
	d := importBlob(t, openCache(t, root, nil), data)
	man := importedManifest(d, int64(len(data)))
	rebootTo(t, "fresh-boot")
	reg := prometheus.NewRegistry()
	const n = 4
	caches := make([]*Cache, n)
	for i := range caches {
		caches[i] = openOpts(t, root, nil, Options{Metrics: reg})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, c := range caches {
		wg.Go(func() {
			m, err := c.Acquire(t.Context(), man)
			if err == nil {
				if !bytes.Equal(m.Blobs[0].Data, data) {
					err = errors.New("wrong bytes")
				}
				m.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("acquirer %d: %v", i, err)
		}
	}
	if got := counters(t, reg)["genfleet_cache_verified_bytes_total{by=acquire}"]; got != float64(len(data)) {
		t.Fatalf("%d processes hashed %v bytes together; want %d (once)", n, got, len(data))
	}
}

// The scenario in the cache: a blob damaged on disk after a job
// used it. With the default options the next Acquire, in the same
// long-lived Cache, quarantines it, fetches it again and returns the right
// bytes; it never maps the damaged bytes under the digest.
func TestCorruptBlobRefetchedWithDefaults(t *testing.T) {
	e := newEnv(t)
	root := t.TempDir()
	man, data := e.push(t, "rot16", 3<<20)
	src := &testSource{Source: e.src}
	c := openCache(t, root, src)
	acquire(t, c, man).Close()
	path := filepath.Join(root, blobsDir, strings.Replace(man.Files[0].Digest, ":", "-", 1))
	flip16(t, path, 1<<20+7)

	m := acquire(t, c, man)
	if !bytes.Equal(m.Blobs[0].Data, data) {
		t.Fatal("the damaged bytes were mapped under the manifest's digest")
	}
	r := m.Report
	if r.Corrupt != 1 || r.Hit || r.Origin != OriginFetched || r.FetchedBytes != int64(len(data)) || src.gets.Load() != 2 {
		t.Fatalf("report %+v after %d GETs; want the blob quarantined and fetched again", r, src.gets.Load())
	}
	q, err := c.Quarantined()
	if err != nil || len(q) != 1 || q[0].Size != int64(len(data)) || q[0].Digest != man.Files[0].Digest {
		t.Fatalf("quarantine %+v, %v; want the damaged blob", q, err)
	}
}

// flipReader inverts byte at of the stream it wraps.
type flipReader struct {
	io.ReadCloser
	pos, at int64
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if f.at >= f.pos && f.at < f.pos+int64(n) {
		p[f.at-f.pos] ^= 0xff
	}
	f.pos += int64(n)
	return n, err
}

// A download that does not hash to the manifest's digest is discarded and
// fetched once more from scratch within the same Acquire; a second
// mismatch fails with the message it always gave.
func TestDigestMismatchFetchesOnceMore(t *testing.T) {
	e := newEnv(t)

	t.Run("damaged in transit, then right", func(t *testing.T) {
		man, data := e.push(t, "transit", 2<<20)
		src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
			if n == 1 {
				return &flipReader{ReadCloser: rc, at: 12345}
			}
			return rc
		}}
		root := t.TempDir()
		m := acquire(t, openCache(t, root, src), man)
		if !bytes.Equal(m.Blobs[0].Data, data) || src.gets.Load() != 2 || m.Report.FetchedBytes != 2*int64(len(data)) {
			t.Fatalf("equal %v after %d GETs, report %+v; want the right bytes after a second fetch",
				bytes.Equal(m.Blobs[0].Data, data), src.gets.Load(), m.Report)
		}
		if names := dirNames(t, filepath.Join(root, tmpDir)); len(names) != 0 {
			t.Errorf("tmp/ = %v", names)
		}
	})

	t.Run("S3 holds other bytes", func(t *testing.T) {
		man, _ := e.push(t, "other", 5000)
		bad := *man
		bad.Files = []File{man.Files[0]}
		wrong := "sha256:" + sha256Hex([]byte("something else"))
		bad.Files[0].Digest = wrong
		src := &testSource{Source: e.src}
		root := t.TempDir()
		_, err := openCache(t, root, src).Acquire(t.Context(), &bad)
		if !errors.Is(err, ErrDigestMismatch) || src.gets.Load() != 2 {
			t.Fatalf("err %v after %d GETs; want ErrDigestMismatch after exactly 2", err, src.gets.Load())
		}
		want := man.Files[0].URL + ": content hashes to " + man.Files[0].Digest + " but the manifest says " + wrong + "; nothing was cached"
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
		for _, d := range []string{blobsDir, tmpDir} {
			if names := dirNames(t, filepath.Join(root, d)); len(names) != 0 {
				t.Errorf("%s/ = %v, want empty", d, names)
			}
		}
	})

	t.Run("resumed partial damaged on disk", func(t *testing.T) {
		const size = 4 << 20
		man, data := e.push(t, "resumed", size)
		root := t.TempDir()
		opts := Options{PartSize: 1 << 20, FetchConcurrency: 1, FetchRetries: -1}
		cut := &testSource{Source: e.src, beforeGet: func(_ context.Context, n int64) error {
			if n == 3 {
				return errInjected
			}
			return nil
		}}
		if _, err := openOpts(t, root, cut, opts).Acquire(t.Context(), man); !errors.Is(err, errInjected) {
			t.Fatalf("first acquire: %v, want the injected fault", err)
		}
		key := strings.Replace(man.Files[0].Digest, ":", "-", 1)
		part := filepath.Join(root, tmpDir, key+".part")
		if _, err := os.Stat(filepath.Join(root, tmpDir, key+".progress")); err != nil {
			t.Fatalf("no progress saved: %v", err)
		}
		f, err := os.OpenFile(part, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 16), 100); err != nil { // inside finished part 0
			t.Fatal(err)
		}
		f.Close()

		src := &testSource{Source: e.src}
		opts.FetchRetries = 0
		m := acquire(t, openOpts(t, root, src, opts), man)
		// Resume fetched parts 2 and 3; the fresh fetch all four.
		if !bytes.Equal(m.Blobs[0].Data, data) || m.Report.FetchedBytes != 2<<20+size || src.gets.Load() != 6 {
			t.Fatalf("equal %v, fetched %d bytes in %d GETs; want the right bytes after a resume and a fresh fetch (%d bytes, 6 GETs)",
				bytes.Equal(m.Blobs[0].Data, data), m.Report.FetchedBytes, src.gets.Load(), 2<<20+size)
		}
		if names := dirNames(t, filepath.Join(root, tmpDir)); len(names) != 0 {
			t.Errorf("tmp/ = %v", names)
		}
	})
}

// openCount is how many descriptors of this process have path open.
func openCount(t *testing.T, path string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && l == path {
			n++
		}
	}
	return n
}

// An Acquire that waited for another process's download reports that it
// waited, how long, and that it fetched nothing; it is not a cache hit.
func TestWaitedAndFetchedReports(t *testing.T) {
	e := newEnv(t)
	man, data := e.push(t, "waited", 2<<20)
	root := t.TempDir()
	inGet, release := make(chan struct{}), make(chan struct{})
	src := &testSource{Source: e.src, beforeGet: func(ctx context.Context, n int64) error {
		if n == 1 {
			close(inGet)
			<-release
		}
		return nil
	}}
	fetcher, waiter := openCache(t, root, src), openCache(t, root, src)
	type result struct {
		m   *Model
		err error
	}
	fetched, waited := make(chan result, 1), make(chan result, 1)
	go func() { m, err := fetcher.Acquire(t.Context(), man); fetched <- result{m, err} }()
	<-inGet // the fetcher holds the lock; the blob cannot appear until release
	go func() { m, err := waiter.Acquire(t.Context(), man); waited <- result{m, err} }()
	// The waiter opens the lock file only after its first look found no
	// blob: once two descriptors have it open, the waiter is waiting.
	lockPath := fetcher.lockPath(blobKey(man.Files[0].Digest[len("sha256:"):]))
	for openCount(t, lockPath) < 2 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	f, w := <-fetched, <-waited
	if f.err != nil || w.err != nil {
		t.Fatalf("fetcher: %v; waiter: %v", f.err, w.err)
	}
	defer f.m.Close()
	defer w.m.Close()
	if r := f.m.Report; r.Origin != OriginFetched || r.Hit || r.FetchedBytes != int64(len(data)) {
		t.Errorf("fetcher report %+v; want fetched, %d bytes", r, len(data))
	}
	if r := w.m.Report; r.Origin != OriginWaited || r.Hit || r.FetchedBytes != 0 || r.Wait < 20*time.Millisecond {
		t.Errorf("waiter report %+v; want waited (not a hit), nothing fetched, the wait measured", r)
	}
	if !bytes.Equal(w.m.Blobs[0].Data, data) {
		t.Error("waiter mapped other bytes")
	}
}

// Quarantined files are listed with their bytes, count against the budget,
// go first when an Acquire's GC needs room, and GC deletes them.
func TestQuarantineAccounting(t *testing.T) {
	e := newEnv(t)
	const unit = 1 << 20
	root := t.TempDir()
	c := openOpts(t, root, e.src, Options{Budget: 2 * unit})
	keep := importBlob(t, c, randomBytes(unit, 31))
	bad := importBlob(t, c, randomBytes(unit, 32))
	flip16(t, filepath.Join(root, blobsDir, strings.Replace(bad, ":", "-", 1)), 4096)
	if err := c.Verify(t.Context(), bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("verify: %v", err)
	}
	q, err := c.Quarantined()
	if err != nil || len(q) != 1 || q[0].Size != unit || q[0].Digest != bad || time.Since(q[0].QuarantinedAt) > time.Minute {
		t.Fatalf("Quarantined() = %+v, %v", q, err)
	}
	if infos, _ := c.List(); len(infos) != 1 || infos[0].Digest != keep {
		t.Fatalf("List() = %+v; want only the intact blob", infos)
	}
	if used, _, err := c.Usage(); err != nil || used != 2*unit {
		t.Fatalf("Usage() = %d, %v; want the quarantined bytes counted (%d)", used, err, 2*unit)
	}

	// A fetch takes the cache over budget: the quarantined file goes, the
	// idle blob stays.
	man, _ := e.push(t, "third", unit)
	acquire(t, c, man).Close()
	if q, _ := c.Quarantined(); len(q) != 0 {
		t.Fatalf("quarantine after an over-budget fetch: %+v; want it deleted first", q)
	}
	if infos, _ := c.List(); len(infos) != 2 {
		t.Fatalf("blobs after the fetch: %+v; want both (the quarantine made the room)", infos)
	}

	// Without a budget, GC still deletes quarantined files.
	flip16(t, filepath.Join(root, blobsDir, strings.Replace(keep, ":", "-", 1)), 99)
	if err := c.Verify(t.Context(), keep); !errors.Is(err, ErrCorrupt) {
		t.Fatal(err)
	}
	res, err := openCache(t, root, nil).GC(t.Context())
	if err != nil || len(res.QuarantineRemoved) != 1 || res.QuarantineFreed != unit || res.Freed != unit || res.Used != unit || len(res.Evicted) != 0 {
		t.Fatalf("GC without a budget: %+v, %v; want the quarantined file deleted and reported", res, err)
	}
	if names := dirNames(t, filepath.Join(root, quarantineDir)); len(names) != 0 {
		t.Fatalf("quarantine/ after GC: %v", names)
	}
}

// snapshot lists every path under root with its size and mtime.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = fmt.Sprint(info.Mode(), info.ModTime(), info.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestOpenExistingCreatesNothing(t *testing.T) {
	parent := t.TempDir()
	missing := filepath.Join(parent, "no", "cache")
	for _, open := range []func() (*Cache, error){
		func() (*Cache, error) { return OpenExisting(missing, nil, Options{}) },
		func() (*Cache, error) { return OpenWith(missing, nil, Options{ReadOnly: true}) },
	} {
		_, err := open()
		if !errors.Is(err, ErrNoCache) || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing+" does not exist") {
			t.Fatalf("open of a missing cache: %v", err)
		}
	}
	if names := dirNames(t, parent); len(names) != 0 {
		t.Fatalf("opening a missing cache created %v", names)
	}
	if _, err := OpenExisting(parent, nil, Options{ReadOnly: true}); !errors.Is(err, ErrNoCache) || !strings.Contains(err.Error(), "no blobs/") {
		t.Fatalf("open of a directory that is no cache: %v", err)
	}
	if names := dirNames(t, parent); len(names) != 0 {
		t.Fatalf("opening a directory that is no cache created %v", names)
	}

	root := t.TempDir()
	data := randomBytes(1<<20, 33)
	good := importBlob(t, openCache(t, root, nil), data)
	bad := importBlob(t, openCache(t, root, nil), randomBytes(1<<20, 34))
	before := snapshot(t, root)
	ro, err := OpenWith(root, nil, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if infos, err := ro.List(); err != nil || len(infos) != 2 {
		t.Fatalf("read-only List: %v, %v", infos, err)
	}
	if _, _, err := ro.Usage(); err != nil {
		t.Fatal(err)
	}
	if err := ro.Verify(t.Context(), good); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"Acquire": func() error { _, err := ro.Acquire(t.Context(), importedManifest(good, 1<<20)); return err }(),
		"GC":      func() error { _, err := ro.GC(t.Context()); return err }(),
		"Remove":  ro.Remove(good),
		"Import":  func() error { _, err := ro.Import(t.Context(), writeFile(t, "x", data)); return err }(),
		"Scrub": func() error {
			_, err := ro.NewScrubber(ScrubConfig{Rate: 1 << 30, Interval: time.Hour}).Pass(t.Context())
			return err
		}(),
	} {
		if !errors.Is(err, ErrReadOnly) {
			t.Errorf("read-only %s: %v, want ErrReadOnly", name, err)
		}
	}
	after := snapshot(t, root)
	if len(after) != len(before) {
		t.Fatalf("read-only use changed the cache: %d paths before, %d after", len(before), len(after))
	}
	for p, s := range before {
		if after[p] != s {
			t.Fatalf("read-only use changed %s: %q → %q", p, s, after[p])
		}
	}

	// Verify's one change: moving a corrupt blob into quarantine/.
	badPath := filepath.Join(root, blobsDir, strings.Replace(bad, ":", "-", 1))
	flip16(t, badPath, 0)
	before = snapshot(t, root)
	if err := ro.Verify(t.Context(), bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read-only Verify of a corrupt blob: %v", err)
	}
	after = snapshot(t, root)
	var added []string
	for p := range after {
		if _, ok := before[p]; !ok {
			added = append(added, p)
		}
	}
	if len(added) != 1 || !strings.HasPrefix(added[0], filepath.Join(root, quarantineDir)+"/") {
		t.Fatalf("read-only Verify created %v; want only the quarantined blob", added)
	}
}

func TestScrubber(t *testing.T) {
	root := t.TempDir()
	c := openCache(t, root, nil)
	var ds []string
	for i := range 3 {
		ds = append(ds, importBlob(t, c, randomBytes(2<<20+i, uint64(40+i))))
	}
	cfg := ScrubConfig{Rate: 1 << 30, Interval: time.Hour}
	res, err := c.NewScrubber(cfg).Pass(t.Context())
	if err != nil || res.Scrubbed != 0 || res.Fresh != 3 {
		t.Fatalf("pass over blobs hashed at import: %+v, %v; want all fresh", res, err)
	}

	// After a reboot every blob is due; two processes scrub each blob once
	// between them.
	rebootTo(t, "scrub-boot")
	a, b := openCache(t, root, nil), openCache(t, root, nil)
	var wg sync.WaitGroup
	var ra, rb ScrubResult
	var ea, eb error
	wg.Go(func() { ra, ea = a.NewScrubber(cfg).Pass(t.Context()) })
	wg.Go(func() { rb, eb = b.NewScrubber(cfg).Pass(t.Context()) })
	wg.Wait()
	if ea != nil || eb != nil || ra.Scrubbed+rb.Scrubbed != 3 || len(ra.Corrupt)+len(rb.Corrupt) != 0 {
		t.Fatalf("two scrubbers: %+v (%v) and %+v (%v); want 3 blobs hashed once in all", ra, ea, rb, eb)
	}
	t.Logf("read with O_DIRECT: %d of 3 blobs", ra.Direct+rb.Direct)
	if res, _ := openCache(t, root, nil).NewScrubber(cfg).Pass(t.Context()); res.Scrubbed != 0 || res.Fresh != 3 {
		t.Fatalf("pass right after: %+v; want all fresh", res)
	}

	// Damage at rest, found on the next boot's scrub, at the set rate.
	flip16(t, filepath.Join(root, blobsDir, strings.Replace(ds[1], ":", "-", 1)), 777)
	rebootTo(t, "scrub-boot-2")
	slow := ScrubConfig{Rate: 16 << 20, Interval: time.Hour}
	start := time.Now()
	res, err = openCache(t, root, nil).NewScrubber(slow).Pass(t.Context())
	took := time.Since(start)
	if err != nil || res.Scrubbed != 3 || len(res.Corrupt) != 1 || res.Corrupt[0] != ds[1] {
		t.Fatalf("scrub of a damaged blob: %+v, %v", res, err)
	}
	if min := time.Duration(float64(res.Bytes) / float64(slow.Rate) * float64(time.Second)); took < min*9/10 {
		t.Fatalf("%d bytes scrubbed in %v at a cap of %d B/s; want at least %v", res.Bytes, took, slow.Rate, min)
	}
	if q, _ := c.Quarantined(); len(q) != 1 || q[0].Digest != ds[1] {
		t.Fatalf("quarantine = %+v", q)
	}
	if _, err := os.Stat(filepath.Join(root, blobsDir, strings.Replace(ds[1], ":", "-", 1))); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("damaged blob still in blobs/: %v", err)
	}
}

// The loop finds damage on its own, and Shutdown stops a rate-limited
// hash at once, leaving the blob as it was.
func TestScrubberLoop(t *testing.T) {
	root := t.TempDir()
	c := openCache(t, root, nil)
	small := importBlob(t, c, randomBytes(1<<20, 51))
	flip16(t, filepath.Join(root, blobsDir, strings.Replace(small, ":", "-", 1)), 5)
	s := c.NewScrubber(ScrubConfig{Rate: 1 << 30, Interval: time.Hour, Check: 10 * time.Millisecond})
	s.Start()
	deadline := time.Now().Add(20 * time.Second)
	for q, _ := c.Quarantined(); len(q) == 0; q, _ = c.Quarantined() {
		if time.Now().After(deadline) {
			t.Fatal("the scrub loop did not quarantine the damaged blob")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.Shutdown()
	s.Shutdown() // idempotent

	big := importBlob(t, c, randomBytes(8<<20, 52))
	rebootTo(t, "loop-boot")
	s = openCache(t, root, nil).NewScrubber(ScrubConfig{Rate: 1 << 20, Interval: time.Hour})
	s.Start()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	s.Shutdown()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Shutdown took %v during an 8-second scrub; want it prompt", took)
	}
	if _, ok := c.readVerified(big[len("sha256:"):]); !ok {
		t.Fatal("the import's record is gone")
	}
	if rec, _ := c.readVerified(big[len("sha256:"):]); rec.Boot == "loop-boot" {
		t.Fatal("an interrupted scrub wrote a record")
	}

	off := c.NewScrubber(ScrubConfig{})
	if off.Enabled() {
		t.Fatal("a zero config enables the scrubber")
	}
	off.Start()
	off.Shutdown()
}
