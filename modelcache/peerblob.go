package modelcache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Reading the cache on behalf of other hosts. A fleet-wide cache (package
// peer) serves blobs to peers; it reads them through this read-only API and
// knows nothing of the cache's layout, and the cache knows nothing of
// hosts. Two kinds of blob can be read:
//
//   - a complete blob, in blobs/, that is known intact: hashed in this boot
//     with its file unchanged since (its verified record, or this Cache's
//     memory, matches its current stamp; see VerifyPerBoot). A blob not
//     verified since the boot is not offered until its first use verifies
//     it;
//   - a download in progress of a file with part digests: only the parts
//     its progress log records, each of which hashed to its part digest
//     before it was recorded (and was fdatasync'ed). The fetcher that owns
//     the download may be another process; nothing here takes its lock.
//
// Nothing here writes, locks or leases anything: an eviction or a
// quarantine may unlink or rename a blob while it is read, and the reader
// keeps reading the inode it opened (whose bytes never change: a fresh
// download is a new inode, see download). Whoever receives the bytes
// verifies them again against their digests.

// ErrNotVerified means a range of a PeerBlob lies outside its verified
// parts: the download has not reached it yet.
var ErrNotVerified = errors.New("range not verified yet")

// PeerBlob is a blob opened for reading by other hosts: complete, or the
// verified parts of a download in progress. Close it when done.
type PeerBlob struct {
	// Digest is "sha256:<hex>"; Size the whole file's size.
	Digest string
	Size   int64
	// PartSize is the part size of a download in progress (the manifest's);
	// 0 for a complete blob.
	PartSize int64

	f    *os.File
	have []bool // verified parts of a partial; nil for a complete blob
}

// Complete reports whether the whole blob is here.
func (b *PeerBlob) Complete() bool { return b.have == nil }

// Have returns, for a download in progress, which parts are verified (as
// of OpenPeerBlob); nil for a complete blob. The caller must not modify it.
func (b *PeerBlob) Have() []bool { return b.have }

// Covers reports whether bytes [off, off+n) may be read: within the blob,
// and for a partial within verified parts.
func (b *PeerBlob) Covers(off, n int64) bool {
	if off < 0 || n <= 0 || off+n > b.Size {
		return false
	}
	if b.have == nil {
		return true
	}
	for i := off / b.PartSize; i*b.PartSize < off+n; i++ {
		if !b.have[i] {
			return false
		}
	}
	return true
}

// ReadAt reads len(p) bytes at off; a range that Covers refuses yields an
// error wrapping ErrNotVerified (or io.EOF past the end).
func (b *PeerBlob) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if off >= b.Size {
		return 0, io.EOF
	}
	if !b.Covers(off, min(int64(len(p)), b.Size-off)) {
		return 0, fmt.Errorf("read %s bytes %d-%d: %w", b.Digest, off, off+int64(len(p))-1, ErrNotVerified)
	}
	n, err := b.f.ReadAt(p[:min(int64(len(p)), b.Size-off)], off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// Close releases the blob's descriptor.
func (b *PeerBlob) Close() error { return b.f.Close() }

// OpenPeerBlob opens digest ("sha256:<hex>") for reading by other hosts: the
// complete blob when it is known intact, else the verified parts of a
// download in progress. Neither yields an error wrapping ErrNotCached.
func (c *Cache) OpenPeerBlob(digest string) (*PeerBlob, error) {
	hex, err := parseDigest(digest)
	if err != nil {
		return nil, fmt.Errorf("open %q for peers: %w", digest, err)
	}
	b, err := c.openIntactBlob(hex)
	if b != nil || err != nil {
		return b, err
	}
	// A download may finish (rename into blobs/) or start over (a new
	// inode) between the reads of its files: try again then.
	for range 3 {
		b, retry, err := c.openVerifiedPartial(hex)
		if retry {
			continue
		}
		if b != nil || err != nil {
			return b, err
		}
		// No download either; it may have just been installed.
		if b, err := c.openIntactBlob(hex); b != nil || err != nil {
			return b, err
		}
		break
	}
	return nil, &kindError{kind: ErrNotCached, msg: fmt.Sprintf("%s is neither cached and verified nor being downloaded with verified parts", digest)}
}

// openIntactBlob opens blob hex if it is in blobs/ and known intact; nil,
// nil when it is absent or not verified in this boot.
func (c *Cache) openIntactBlob(hex string) (*PeerBlob, error) {
	f, err := os.Open(c.blobPath(hex))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st, err := c.stamp(f)
	if err == nil && c.intact(hex, st) {
		return &PeerBlob{Digest: "sha256:" + hex, Size: st.Size, f: f}, nil
	}
	f.Close()
	return nil, err
}

// intact reports whether blob hex in state st was verified in this boot.
func (c *Cache) intact(hex string, st blobStamp) bool {
	if st.Boot == "" {
		return false
	}
	c.verifiedMu.Lock()
	got, ok := c.verified[hex]
	c.verifiedMu.Unlock()
	if ok && got == st {
		return true
	}
	_, ok = c.verifiedAs(hex, st)
	return ok
}

// openVerifiedPartial opens the download in progress of hex if its log
// says its parts are verified. retry means the download changed under the
// reads (finished or restarted); nil, false, nil that there is none.
func (c *Cache) openVerifiedPartial(hex string) (_ *PeerBlob, retry bool, _ error) {
	key := blobKey(hex)
	path := c.tmpPath(key)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	hdr, done, ok := c.readProgress(key)
	if !ok || hdr.Digest != "sha256:"+hex {
		f.Close()
		return nil, false, nil
	}
	// The log read above describes the file we opened only if the path
	// still names it: a restarted download removes both and creates the
	// part file before its new log.
	if same, err := sameFile(f, path); err != nil || !same {
		f.Close()
		return nil, err == nil, err
	}
	return &PeerBlob{Digest: hdr.Digest, Size: hdr.Size, PartSize: hdr.PartSize, f: f, have: done}, false, nil
}

// PartialInfo is a download in progress whose parts are verified as they
// land, as PeerInventory lists it.
type PartialInfo struct {
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	PartSize int64  `json:"part_size"`
	Parts    int    `json:"parts"` // of the whole file
	Have     int    `json:"have"`  // verified so far
}

// Inventory is what OpenPeerBlob would open now.
type Inventory struct {
	// Blobs are the digests of complete blobs known intact.
	Blobs []string
	// Partials are downloads in progress with verified parts.
	Partials []PartialInfo
}

// PeerInventory lists the blobs OpenPeerBlob would open now: complete ones
// known intact, and downloads in progress with at least one verified part.
func (c *Cache) PeerInventory() (Inventory, error) {
	var inv Inventory
	entries, err := os.ReadDir(filepath.Join(c.root, blobsDir))
	if err != nil {
		return inv, fmt.Errorf("list cache for peers: %w", err)
	}
	for _, e := range entries {
		hex, ok := strings.CutPrefix(e.Name(), "sha256-")
		if !ok || len(hex) != 64 || !isLowerHex(hex) {
			continue
		}
		if st, err := c.stampPath(c.blobPath(hex)); err == nil && c.intact(hex, st) {
			inv.Blobs = append(inv.Blobs, "sha256:"+hex)
		}
	}
	entries, err = os.ReadDir(filepath.Join(c.root, tmpDir))
	if err != nil {
		return inv, fmt.Errorf("list cache for peers: %w", err)
	}
	for _, e := range entries {
		key, ok := strings.CutSuffix(e.Name(), ".progress")
		hex, isBlob := cutBlobKey(key)
		if !ok || !isBlob || !validKey(key) {
			continue
		}
		hdr, done, ok := c.readProgress(key)
		if !ok || hdr.Digest != "sha256:"+hex {
			continue
		}
		have := len(indices(done))
		if have == 0 {
			continue
		}
		inv.Partials = append(inv.Partials, PartialInfo{Digest: hdr.Digest, Size: hdr.Size, PartSize: hdr.PartSize, Parts: len(done), Have: have})
	}
	return inv, nil
}
