package modelcache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corrupt flips one byte of a cached blob in place, as failing disk would.
// (The cache itself never writes a blob; the test makes it writable.)
func corrupt(t *testing.T, path string, off int64) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
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

func TestVerifyQuarantinesCorruptBlob(t *testing.T) {
	e := newEnv(t)
	root := t.TempDir()
	man, data := e.push(t, "flip", 3<<20+5)
	c := openCache(t, root, e.src)
	acquire(t, c, man).Close()
	d := man.Files[0].Digest
	path := c.blobPath(d[len("sha256:"):])

	if err := c.Verify(t.Context(), d); err != nil {
		t.Fatalf("Verify of a good blob: %v", err)
	}
	corrupt(t, path, 2<<20+17)
	err := c.Verify(t.Context(), d)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "quarantine") {
		t.Fatalf("Verify of a flipped byte: %v; want ErrCorrupt naming the quarantine", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("corrupt blob still in blobs/: %v", err)
	}
	if q := dirNames(t, filepath.Join(root, quarantineDir)); len(q) != 1 || !strings.HasPrefix(q[0], "sha256-") {
		t.Fatalf("quarantine/ holds %v", q)
	}
	if err := c.Verify(t.Context(), d); !errors.Is(err, ErrNotCached) {
		t.Fatalf("Verify of a quarantined blob: %v, want ErrNotCached", err)
	}

	m := acquire(t, c, man)
	if m.Report.Hit || m.Report.FetchedBytes != int64(len(data)) || !bytes.Equal(m.Blobs[0].Data, data) {
		t.Fatalf("acquire after quarantine: hit %v, fetched %d; want a fresh fetch of the right bytes", m.Report.Hit, m.Report.FetchedBytes)
	}
}

func TestVerifyOnOpenRefetchesCorruptBlob(t *testing.T) {
	e := newEnv(t)
	root := t.TempDir()
	man, data := e.push(t, "rot", 2<<20)
	acquire(t, openCache(t, root, e.src), man).Close()
	path := filepath.Join(root, blobsDir, strings.Replace(man.Files[0].Digest, ":", "-", 1))
	corrupt(t, path, 12345)

	// Without verification the damage goes unnoticed: the reason for the option.
	m := acquire(t, openOpts(t, root, e.src, Options{Verify: VerifyNever}), man)
	if bytes.Equal(m.Blobs[0].Data, data) {
		t.Fatal("test did not corrupt the blob")
	}
	m.Close()

	c := openOpts(t, root, e.src, Options{Verify: VerifyOnOpen})
	m = acquire(t, c, man)
	if m.Report.Corrupt != 1 || m.Report.Hit || m.Report.Verify == 0 || !bytes.Equal(m.Blobs[0].Data, data) {
		t.Fatalf("VerifyOnOpen: corrupt %d, hit %v, verify %v; want the blob quarantined and fetched again",
			m.Report.Corrupt, m.Report.Hit, m.Report.Verify)
	}
	m.Close()
	// Verified once per Cache: the next acquire neither re-hashes nor fetches.
	m = acquire(t, c, man)
	if !m.Report.Hit || m.Report.Verify != 0 || m.Report.Corrupt != 0 {
		t.Fatalf("second acquire: %+v", m.Report)
	}
}
