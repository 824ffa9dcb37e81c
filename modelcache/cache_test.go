package modelcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAcquireMissThenHit(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "tiny", 3<<20+17)
	src := &testSource{Source: e.src}
	root := t.TempDir()
	c := openCache(t, root, src)

	mod, err := c.Acquire(t.Context(), m)
	if err != nil {
		t.Fatal(err)
	}
	b := mod.Blobs[0]
	if !bytes.Equal(b.Data, data) {
		t.Fatal("mapped bytes differ from the pushed file")
	}
	r := mod.Report
	if r.Hit || r.FetchedBytes != int64(len(data)) || r.Fetch <= 0 || r.Verify <= 0 {
		t.Errorf("miss report = %+v", r)
	}
	wantPath := filepath.Join(root, "blobs", "sha256-"+sha256Hex(data))
	if b.Path != wantPath || b.Digest != m.Files[0].Digest || b.Size != int64(len(data)) {
		t.Errorf("blob = %s %s %d, want %s %s %d", b.Path, b.Digest, b.Size, wantPath, m.Files[0].Digest, len(data))
	}
	st, err := os.Stat(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o444 {
		t.Errorf("blob mode = %v, want 0444", st.Mode().Perm())
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ after install = %v", names)
	}
	if err := mod.Close(); err != nil {
		t.Fatal(err)
	}
	if err := mod.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if b.Data != nil {
		t.Error("Data still set after Close")
	}

	mod = acquire(t, c, m)
	if !mod.Report.Hit || mod.Report.FetchedBytes != 0 || mod.Report.Map <= 0 {
		t.Errorf("hit report = %+v", mod.Report)
	}
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("hit: mapped bytes differ")
	}
	if got := src.gets.Load(); got != 1 {
		t.Errorf("Gets = %d, want 1", got)
	}
	if got := src.heads.Load(); got != 1 {
		t.Errorf("Heads = %d, want 1 (a hit on a known digest asks S3 nothing)", got)
	}
}

func TestAcquireSeveralFiles(t *testing.T) {
	e := newEnv(t)
	a, da := e.push(t, "part-a", 1000)
	b, db := e.push(t, "part-b", 2000)
	m := &Manifest{Schema: 1, Name: "two", Format: "safetensors", Files: []File{a.Files[0], b.Files[0]}}
	c := openCache(t, t.TempDir(), e.src)
	mod := acquire(t, c, m)
	if len(mod.Blobs) != 2 || !bytes.Equal(mod.Blobs[0].Data, da) || !bytes.Equal(mod.Blobs[1].Data, db) {
		t.Fatal("blobs do not match the files in manifest order")
	}
	if mod.Report.FetchedBytes != 3000 {
		t.Errorf("FetchedBytes = %d, want 3000", mod.Report.FetchedBytes)
	}
}

// Each goroutine opens its own Cache on the same root: flock locks belong to
// open file descriptions, so this is how separate processes behave.
func TestAcquireConcurrentFetchesOnce(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "shared", 2<<20)
	src := &testSource{Source: e.src}
	root := t.TempDir()
	const n = 8
	var wg sync.WaitGroup
	start := make(chan struct{})
	models := make([]*Model, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			c, err := Open(root, src)
			if err != nil {
				errs[i] = err
				return
			}
			<-start
			models[i], errs[i] = c.Acquire(t.Context(), m)
		})
	}
	close(start)
	wg.Wait()
	fetchers := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("acquirer %d: %v", i, errs[i])
		}
		defer models[i].Close()
		if !bytes.Equal(models[i].Blobs[0].Data, data) {
			t.Errorf("acquirer %d mapped different bytes", i)
		}
		if models[i].Report.FetchedBytes > 0 {
			fetchers++
		}
	}
	if got := src.gets.Load(); got != 1 {
		t.Errorf("Source.Get called %d times, want 1", got)
	}
	if fetchers != 1 {
		t.Errorf("%d acquirers report fetched bytes, want 1", fetchers)
	}
}

func TestAcquireDigestMismatch(t *testing.T) {
	e := newEnv(t)
	m, _ := e.push(t, "tiny", 5000)
	bad := *m
	bad.Files = []File{m.Files[0]}
	wrong := "sha256:" + sha256Hex([]byte("something else"))
	bad.Files[0].Digest = wrong
	root := t.TempDir()
	c := openCache(t, root, e.src)
	_, err := c.Acquire(t.Context(), &bad)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	for _, s := range []string{wrong, m.Files[0].Digest, m.Files[0].URL} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("message %q does not name %s", err, s)
		}
	}
	if names := dirNames(t, filepath.Join(root, "blobs")); len(names) != 0 {
		t.Errorf("blobs/ = %v, want empty", names)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ = %v, want empty", names)
	}
}

func TestAcquireFailsMidStreamThenSucceeds(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "flaky", 3<<20)
	src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
		if n == 1 {
			return &breakingBody{ReadCloser: rc, left: 1 << 20}
		}
		return rc
	}}
	root := t.TempDir()
	// No retries: the fault must reach the caller (retries are tested in
	// fetch_test.go).
	c, err := OpenWith(root, src, Options{FetchRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Acquire(t.Context(), m)
	if !errors.Is(err, errInjected) {
		t.Fatalf("err = %v, want the injected fault", err)
	}
	if !strings.Contains(err.Error(), m.Files[0].URL) || !strings.Contains(err.Error(), `"flaky"`) {
		t.Errorf("message %q does not name the model and URL", err)
	}
	if names := dirNames(t, filepath.Join(root, "blobs")); len(names) != 0 {
		t.Errorf("blobs/ after a failed fetch = %v", names)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ after a failed fetch = %v", names)
	}

	mod := acquire(t, c, m)
	if !bytes.Equal(mod.Blobs[0].Data, data) || mod.Report.Hit {
		t.Errorf("retry: equal=%v report=%+v", bytes.Equal(mod.Blobs[0].Data, data), mod.Report)
	}
}

func TestTryEvict(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "evictme", 100_000)
	src := &testSource{Source: e.src}
	root := t.TempDir()
	c := openCache(t, root, src)
	digest := m.Files[0].Digest

	mod, err := c.Acquire(t.Context(), m)
	if err != nil {
		t.Fatal(err)
	}
	// Another process's cache must see the lease too.
	other := openCache(t, root, nil)
	if ok, err := other.TryEvict(digest); ok || err != nil {
		t.Fatalf("TryEvict while leased = %v, %v; want false, nil", ok, err)
	}
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("mapping damaged by a refused eviction")
	}
	mod.Close()
	if ok, err := other.TryEvict(digest); !ok || err != nil {
		t.Fatalf("TryEvict after Close = %v, %v; want true, nil", ok, err)
	}
	if _, err := os.Stat(filepath.Join(root, "blobs", "sha256-"+sha256Hex(data))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("blob still there after eviction: %v", err)
	}
	if ok, err := other.TryEvict(digest); ok || err != nil {
		t.Errorf("TryEvict of an absent blob = %v, %v; want false, nil", ok, err)
	}
	if _, err := other.TryEvict("sha256:xyz"); err == nil {
		t.Error("TryEvict accepted a malformed digest")
	}

	mod = acquire(t, c, m)
	if mod.Report.Hit || src.gets.Load() != 2 {
		t.Errorf("after eviction: report %+v, gets %d; want a fresh fetch", mod.Report, src.gets.Load())
	}
}

// Eviction is unlink only: pages mapped before stay readable.
func TestMappingSurvivesUnlink(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "unlinked", 1<<20)
	c := openCache(t, t.TempDir(), e.src)
	mod := acquire(t, c, m)
	if err := os.Remove(mod.Blobs[0].Path); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("mapping changed after unlink")
	}
	if err := mod.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAcquireCancelWhileWaiting(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "slow", 200_000)
	entered := make(chan struct{})
	release := make(chan struct{})
	src := &testSource{Source: e.src, beforeGet: func(ctx context.Context, n int64) error {
		if n == 1 {
			close(entered)
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}}
	root := t.TempDir()

	type result struct {
		mod *Model
		err error
	}
	first := make(chan result, 1)
	go func() {
		c, err := Open(root, src)
		if err != nil {
			first <- result{nil, err}
			return
		}
		mod, err := c.Acquire(t.Context(), m)
		first <- result{mod, err}
	}()
	<-entered // the first fetcher holds the lock and is stuck in Get

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := openCache(t, root, src).Acquire(ctx, m)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancelled wait returned after %v", d)
	}

	close(release)
	r := <-first
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.mod.Close()
	if !bytes.Equal(r.mod.Blobs[0].Data, data) {
		t.Error("first fetcher mapped different bytes")
	}
}

// A fetcher that dies holding the lock does not wedge the others: the kernel
// drops the lock of a killed process.
func TestLockHolderCrash(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "orphan", 50_000)
	root := t.TempDir()
	h, _ := parseDigest(m.Files[0].Digest)
	kill := startLockHolder(t, root, blobKey(h))

	done := make(chan *Model, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := Open(root, e.src)
		if err != nil {
			errc <- err
			return
		}
		mod, err := c.Acquire(t.Context(), m)
		if err != nil {
			errc <- err
			return
		}
		done <- mod
	}()
	select {
	case <-done:
		t.Fatal("Acquire did not wait for the lock holder")
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(300 * time.Millisecond):
	}
	kill()
	select {
	case mod := <-done:
		defer mod.Close()
		if !bytes.Equal(mod.Blobs[0].Data, data) || mod.Report.Wait < 300*time.Millisecond {
			t.Errorf("after the holder died: equal=%v report=%+v", bytes.Equal(mod.Blobs[0].Data, data), mod.Report)
		}
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire still waiting 10s after the lock holder was killed")
	}
}

func TestRawRef(t *testing.T) {
	e := newEnv(t)
	const key = "raw/model.safetensors"
	const url = "s3://models/" + key
	data := randomBytes(1<<20, 7)
	e.putObject(t, key, data)
	m, err := e.reg.Resolve(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	src := &testSource{Source: e.src}
	mod := acquire(t, openCache(t, root, src), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) || mod.Report.Hit || mod.Report.FetchedBytes != int64(len(data)) {
		t.Fatalf("first acquire: report %+v", mod.Report)
	}
	wantDigest := "sha256:" + sha256Hex(data)
	if mod.Blobs[0].Digest != wantDigest {
		t.Errorf("digest = %s, want %s", mod.Blobs[0].Digest, wantDigest)
	}
	rec, ok := openCache(t, root, nil).readRef(sha256Hex([]byte(url)))
	if !ok || rec.URL != url || rec.Digest != wantDigest || rec.Size != int64(len(data)) || rec.ETag == "" {
		t.Errorf("ref record = %+v, %v", rec, ok)
	}
	mod.Close()

	// A new Cache on the same root (another process) downloads nothing.
	src2 := &testSource{Source: e.src}
	mod = acquire(t, openCache(t, root, src2), m)
	if !mod.Report.Hit || src2.gets.Load() != 0 || !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Errorf("second acquire: report %+v, gets %d", mod.Report, src2.gets.Load())
	}
	mod.Close()

	// The object is replaced: same URL, new ETag, so it is fetched again.
	data2 := randomBytes(1<<20, 8)
	e.putObject(t, key, data2)
	mod = acquire(t, openCache(t, root, src2), m)
	if mod.Report.Hit || src2.gets.Load() != 1 || !bytes.Equal(mod.Blobs[0].Data, data2) {
		t.Errorf("after replacement: report %+v, gets %d", mod.Report, src2.gets.Load())
	}
}

// The same bytes cached under a name and as a raw ref share one blob.
func TestRawRefReusesBlob(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "named", 10_000)
	root := t.TempDir()
	c := openCache(t, root, e.src)
	named := acquire(t, c, m)
	raw, err := e.reg.Resolve(t.Context(), m.Files[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	mod := acquire(t, c, raw)
	if mod.Blobs[0].Path != named.Blobs[0].Path || !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Errorf("raw ref blob %s, named blob %s", mod.Blobs[0].Path, named.Blobs[0].Path)
	}
	if names := dirNames(t, filepath.Join(root, "blobs")); len(names) != 1 {
		t.Errorf("blobs/ = %v, want one blob", names)
	}
}

// The GET is pinned to the ETag seen by Head: an object replaced in between
// (same size, other bytes) is refused, never mixed.
func TestAcquireETagPin(t *testing.T) {
	e := newEnv(t)
	const key = "raw/swapped.safetensors"
	e.putObject(t, key, randomBytes(64<<10, 9))
	m, err := e.reg.Resolve(t.Context(), "s3://models/"+key)
	if err != nil {
		t.Fatal(err)
	}
	data2 := randomBytes(64<<10, 10)
	src := &testSource{Source: e.src, beforeGet: func(ctx context.Context, n int64) error {
		if n == 1 {
			e.putObject(t, key, data2) // after the cache's Head, before its GET
		}
		return nil
	}}
	root := t.TempDir()
	c := openCache(t, root, src)
	if _, err := c.Acquire(t.Context(), m); !errors.Is(err, ErrChanged) {
		t.Fatalf("err = %v, want ErrChanged", err)
	}
	if names := dirNames(t, filepath.Join(root, "blobs")); len(names) != 0 {
		t.Errorf("blobs/ = %v, want empty", names)
	}
	mod := acquire(t, c, m)
	if !bytes.Equal(mod.Blobs[0].Data, data2) {
		t.Error("retry did not map the new object")
	}
}

func TestAcquireEmptyObject(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "raw/empty.bin", nil)
	m, err := e.reg.Resolve(t.Context(), "s3://models/raw/empty.bin")
	if err != nil {
		t.Fatal(err)
	}
	_, err = openCache(t, t.TempDir(), e.src).Acquire(t.Context(), m)
	if err == nil || !strings.Contains(err.Error(), "cannot be mapped") {
		t.Errorf("err = %v, want a clear error about mapping an empty file", err)
	}
}

func TestOpenCleansStaleTmp(t *testing.T) {
	root := t.TempDir()
	c := openCache(t, root, nil)
	stale := blobKey(strings.Repeat("1", 64))
	live := refKey(strings.Repeat("2", 64))
	lk, _, err := c.lock(t.Context(), live) // a fetch in progress elsewhere
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	tmp := filepath.Join(root, "tmp")
	for _, name := range []string{stale + ".part", live + ".part", "unknown.file"} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	openCache(t, root, nil)
	got := strings.Join(dirNames(t, tmp), " ")
	if want := live + ".part unknown.file"; got != want {
		t.Errorf("tmp/ after Open = %q, want %q", got, want)
	}
}

// The cache directory removed under a running process (an operator wiping
// it): a model still mapped stays readable, and the next Acquire recreates
// the layout and fetches again instead of failing until a restart.
func TestCacheDirRemovedUnderRunningProcess(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "wiped", 1<<20+5)
	root := filepath.Join(t.TempDir(), "cache")
	c := openCache(t, root, e.src)
	held, err := c.Acquire(t.Context(), m)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(held.Blobs[0].Data, data) {
		t.Fatal("a mapping of a removed blob changed")
	}
	again, err := c.Acquire(t.Context(), m)
	if err != nil {
		t.Fatalf("acquire after the cache dir was removed: %v", err)
	}
	defer again.Close()
	if again.Report.Hit || !bytes.Equal(again.Blobs[0].Data, data) {
		t.Fatalf("after removal: hit=%v, bytes equal=%v; want a verified re-fetch", again.Report.Hit, bytes.Equal(again.Blobs[0].Data, data))
	}
	if _, err := os.Stat(again.Blobs[0].Path); err != nil {
		t.Fatalf("re-fetched blob not in place: %v", err)
	}
}

// A cached blob truncated on disk is caught on the next acquire by its size,
// confirmed by its hash, quarantined, and fetched again: never served.
func TestTruncatedBlobIsRefetched(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "cut", 2<<20+3)
	root := t.TempDir()
	c := openCache(t, root, e.src)
	mod := acquire(t, c, m)
	path := mod.Blobs[0].Path
	mod.Close()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<20); err != nil { // disk corruption, simulated
		t.Fatal(err)
	}
	again, err := c.Acquire(t.Context(), m)
	if err != nil {
		t.Fatalf("acquire after truncation: %v", err)
	}
	defer again.Close()
	if again.Report.Hit || !bytes.Equal(again.Blobs[0].Data, data) {
		t.Fatalf("hit=%v equal=%v: want a verified re-fetch", again.Report.Hit, bytes.Equal(again.Blobs[0].Data, data))
	}
	if q := dirNames(t, filepath.Join(root, "quarantine")); len(q) != 1 {
		t.Fatalf("quarantine holds %v, want the truncated blob", q)
	}
}
