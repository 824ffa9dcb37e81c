package modelcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testManifestPart = MinManifestPartSize

// flipBody flips one byte of a body, at offset at.
type flipBody struct {
	io.ReadCloser
	at, pos int64
}

func (b *flipBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.at >= b.pos && b.at < b.pos+int64(n) {
		p[b.at-b.pos] ^= 0xff
	}
	b.pos += int64(n)
	return n, err
}

// A file with part digests is fetched in the manifest's parts (whatever
// Options.PartSize says), each verified as it lands: a part damaged in
// transit is thrown away and fetched again on its own, not the whole file.
func TestFetchVerifiesEachPart(t *testing.T) {
	e := newEnv(t)
	const size = 5*testManifestPart + 77
	m, data := e.pushParts(t, "verified", size, testManifestPart)
	src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
		if n == 3 {
			return &flipBody{ReadCloser: rc, at: 100}
		}
		return rc
	}}
	root := t.TempDir()
	mod := acquire(t, openWith(t, root, src, Options{FetchConcurrency: 2, PartSize: 1 << 20}), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("mapped bytes differ from the pushed file")
	}
	if got := src.ranged.Load(); got != 7 {
		t.Errorf("ranged GETs = %d, want 7 (6 parts, one fetched again)", got)
	}
	if want := int64(size + testManifestPart); mod.Report.FetchedBytes != want {
		t.Errorf("fetched %d bytes, want %d (the file and one part again)", mod.Report.FetchedBytes, want)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ after install = %v", names)
	}
}

// A part that arrives wrong on every attempt fails the fetch with an error
// that wraps ErrDigestMismatch and names the part; nothing is cached.
func TestFetchPartAlwaysCorrupt(t *testing.T) {
	e := newEnv(t)
	m, _ := e.pushParts(t, "rotten", 3*testManifestPart, testManifestPart)
	src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
		return &flipBody{ReadCloser: rc, at: 5} // every part, every time
	}}
	short(t, &fetchBackoffMin, time.Millisecond)
	root := t.TempDir()
	_, err := openWith(t, root, src, Options{FetchRetries: 2}).Acquire(t.Context(), m)
	var pm *partMismatchError
	if !errors.Is(err, ErrDigestMismatch) || !errors.As(err, &pm) {
		t.Fatalf("err = %v, want a part mismatch wrapping ErrDigestMismatch", err)
	}
	if names := dirNames(t, filepath.Join(root, "blobs")); len(names) != 0 {
		t.Errorf("blobs/ = %v, want empty", names)
	}
}

// short sets *v to d for the test.
func short(t *testing.T, v *time.Duration, d time.Duration) {
	old := *v
	*v = d
	t.Cleanup(func() { *v = old })
}

// recordingSource is a PartSource over the real S3 Source that serves
// parts itself, optionally lying once about one part, and records what the
// cache tells it.
type recordingSource struct {
	Source
	lieOn  int // part to corrupt on its first Get; -1: none
	mu     sync.Mutex
	gets   []int
	done   map[int][]bool
	closed atomic.Int32
	opened atomic.Int32
}

func (s *recordingSource) OpenParts(ctx context.Context, f PartFile) (PartFetch, error) {
	s.opened.Add(1)
	return &recordingFetch{s: s, f: f}, nil
}

type recordingFetch struct {
	s *recordingSource
	f PartFile
}

func (r *recordingFetch) Get(ctx context.Context, i int, from int64) (io.ReadCloser, error) {
	r.s.mu.Lock()
	r.s.gets = append(r.s.gets, i)
	lie := i == r.s.lieOn && len(r.s.done[i]) == 0
	r.s.mu.Unlock()
	off := int64(i) * r.f.PartSize
	body, err := r.s.Source.GetRange(ctx, r.f.Bucket, r.f.Key, r.f.ETag, off+from, r.f.PartLen(i)-from)
	if err == nil && lie {
		body = &flipBody{ReadCloser: body, at: 0}
	}
	return body, err
}

func (r *recordingFetch) Done(i int, ok bool) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.s.done == nil {
		r.s.done = map[int][]bool{}
	}
	r.s.done[i] = append(r.s.done[i], ok)
}

func (r *recordingFetch) Close() { r.s.closed.Add(1) }

// A Source that implements PartSource delivers the parts of a file with
// part digests: the cache opens one PartFetch for the download, hears back
// a verdict on every part (a lie is refused and the part asked for again)
// and closes it. A file without part digests goes through plain GETs.
func TestFetchThroughPartSource(t *testing.T) {
	e := newEnv(t)
	m, data := e.pushParts(t, "viaparts", 4*testManifestPart+1, testManifestPart)
	src := &recordingSource{Source: e.src, lieOn: 2}
	mod := acquire(t, openWith(t, t.TempDir(), src, Options{}), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("mapped bytes differ from the pushed file")
	}
	src.mu.Lock()
	gets := slices.Sorted(slices.Values(src.gets))
	done := src.done
	src.mu.Unlock()
	if !slices.Equal(gets, []int{0, 1, 2, 2, 3, 4}) {
		t.Errorf("parts asked for: %v, want each once and part 2 twice", gets)
	}
	for i := range 5 {
		want := []bool{true}
		if i == 2 {
			want = []bool{false, true}
		}
		if !slices.Equal(done[i], want) {
			t.Errorf("verdicts on part %d: %v, want %v", i, done[i], want)
		}
	}
	if src.opened.Load() != 1 || src.closed.Load() != 1 {
		t.Errorf("OpenParts %d times, Close %d times; want 1 and 1", src.opened.Load(), src.closed.Load())
	}

	plain, _ := e.push(t, "plain", 3*testPartSize)
	src2 := &recordingSource{Source: e.src, lieOn: -1}
	acquire(t, openWith(t, t.TempDir(), src2, Options{}), plain)
	if src2.opened.Load() != 0 {
		t.Errorf("a file without part digests went through OpenParts")
	}
}

// A resumed download of a file with part digests hashes the parts an
// earlier run recorded before trusting them: a recorded part damaged on
// disk is fetched again, the others are not.
func TestFetchPartsResumeRechecks(t *testing.T) {
	e := newEnv(t)
	const size = 8 * testManifestPart
	m, data := e.pushParts(t, "recheck", size, testManifestPart)
	h, _ := parseDigest(m.Files[0].Digest)
	key := blobKey(h)
	root := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	src := &testSource{Source: e.src, beforeGet: func(_ context.Context, n int64) error {
		if n == 5 {
			cancel()
			return context.Canceled
		}
		return nil
	}}
	if _, err := openWith(t, root, src, Options{FetchConcurrency: 1}).Acquire(ctx, m); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if got := progressParts(root, key); got != 4 {
		t.Fatalf("progress records %d parts, want 4", got)
	}
	// Damage part 1 on disk.
	f, err := os.OpenFile(filepath.Join(root, tmpDir, key+".part"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("rot"), testManifestPart+10); err != nil {
		t.Fatal(err)
	}
	f.Close()

	src2 := &testSource{Source: e.src}
	mod := acquire(t, openWith(t, root, src2, Options{}), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("resumed fetch mapped the wrong bytes")
	}
	if want := int64(5 * testManifestPart); mod.Report.FetchedBytes != want {
		t.Errorf("resumed fetch downloaded %d bytes, want %d (4 parts never fetched, 1 damaged)", mod.Report.FetchedBytes, want)
	}
}

// OpenPeerBlob offers a complete blob only while it is known intact
// (verified in this boot, unchanged since), and of a download in progress
// only its verified parts; PeerInventory lists the same.
func TestPeerBlob(t *testing.T) {
	rebootTo(t, "boot-1")
	e := newEnv(t)
	const size = 6 * testManifestPart
	m, data := e.pushParts(t, "shared", size, testManifestPart)
	digest := m.Files[0].Digest
	root := t.TempDir()

	// A download held after its first three parts.
	release := make(chan struct{})
	src := &testSource{Source: e.src, beforeGet: func(ctx context.Context, n int64) error {
		if n > 3 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}}
	c := openWith(t, root, src, Options{FetchConcurrency: 1})
	got := make(chan error, 1)
	go func() {
		mod, err := c.Acquire(t.Context(), m)
		if err == nil {
			mod.Close()
		}
		got <- err
	}()
	var inv Inventory
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if inv, err = c.PeerInventory(); err != nil {
			t.Fatal(err)
		}
		if len(inv.Partials) == 1 && inv.Partials[0].Have == 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := PartialInfo{Digest: digest, Size: size, PartSize: testManifestPart, Parts: 6, Have: 3}
	if len(inv.Partials) != 1 || inv.Partials[0] != want || len(inv.Blobs) != 0 {
		t.Fatalf("inventory during the download = %+v, want partial %+v", inv, want)
	}
	other := openCache(t, root, nil) // another process on the host
	pb, err := other.OpenPeerBlob(digest)
	if err != nil {
		t.Fatal(err)
	}
	if pb.Complete() || pb.PartSize != testManifestPart || !slices.Equal(pb.Have(), []bool{true, true, true, false, false, false}) {
		t.Fatalf("partial: complete %v, part size %d, have %v", pb.Complete(), pb.PartSize, pb.Have())
	}
	buf := make([]byte, 3*testManifestPart)
	if n, err := pb.ReadAt(buf, 0); err != nil || n != len(buf) || !bytes.Equal(buf, data[:len(buf)]) {
		t.Fatalf("read verified parts: %d, %v", n, err)
	}
	if _, err := pb.ReadAt(buf[:10], 3*testManifestPart-5); !errors.Is(err, ErrNotVerified) {
		t.Fatalf("read across into an unverified part: %v, want ErrNotVerified", err)
	}
	close(release)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// The reader's descriptor outlives the install: same inode, same bytes.
	if _, err := pb.ReadAt(buf[:10], 0); err != nil || !bytes.Equal(buf[:10], data[:10]) {
		t.Errorf("read after install: %v", err)
	}
	pb.Close()

	pb, err = other.OpenPeerBlob(digest)
	if err != nil || !pb.Complete() || pb.Size != size {
		t.Fatalf("complete blob: %+v, %v", pb, err)
	}
	all := make([]byte, size)
	if _, err := pb.ReadAt(all, 0); err != nil || !bytes.Equal(all, data) {
		t.Fatalf("read complete blob: %v", err)
	}
	pb.Close()
	if inv, _ := other.PeerInventory(); !slices.Equal(inv.Blobs, []string{digest}) || len(inv.Partials) != 0 {
		t.Errorf("inventory after install = %+v", inv)
	}

	// After a reboot the blob is not offered until a use verifies it.
	rebootTo(t, "boot-2")
	fresh := openCache(t, root, e.src)
	if _, err := fresh.OpenPeerBlob(digest); !errors.Is(err, ErrNotCached) {
		t.Fatalf("unverified blob after a reboot: %v, want ErrNotCached", err)
	}
	if inv, _ := fresh.PeerInventory(); len(inv.Blobs) != 0 {
		t.Errorf("inventory lists an unverified blob: %+v", inv)
	}
	acquire(t, fresh, m) // first use in this boot: hashed, recorded
	if pb, err := fresh.OpenPeerBlob(digest); err != nil || !pb.Complete() {
		t.Fatalf("after verification: %v", err)
	} else {
		pb.Close()
	}
	if _, err := fresh.OpenPeerBlob("sha256:" + sha256Hex([]byte("nothing"))); !errors.Is(err, ErrNotCached) {
		t.Errorf("unknown digest: %v", err)
	}
	if _, err := fresh.OpenPeerBlob("sha256:XYZ"); err == nil {
		t.Error("malformed digest accepted")
	}
}
