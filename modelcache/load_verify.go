package modelcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// verifyChunk is how much is hashed between checks of the context.
const verifyChunk = 4 << 20

// Verify re-hashes the cached blob digest ("sha256:<hex>" or bare hex). If
// the content no longer matches its name (disk corruption, or someone wrote
// to the file), the blob is moved to <root>/quarantine/ — renamed, never
// written — so that the next Acquire fetches it again, and Verify returns
// an error wrapping ErrCorrupt. A blob that is not cached yields an error
// wrapping ErrNotCached. Verify holds a lease while it reads, so the blob
// cannot be evicted under it.
//
// Moving a corrupt blob is the one change Verify makes, also in a
// read-only Cache: it takes the digest's fetch lock (creating its lock file
// if none exists) and renames the blob (creating quarantine/ only in a
// cache laid out before that directory existed). It records nothing.
func (c *Cache) Verify(ctx context.Context, digest string) error {
	want, err := parseHexOrDigest(digest)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	f, err := os.Open(c.blobPath(want))
	if errors.Is(err, fs.ErrNotExist) {
		return &kindError{kind: ErrNotCached, msg: fmt.Sprintf("verify: sha256:%s is not in the cache at %s", want, c.root)}
	}
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer f.Close()
	if _, err := flockCtx(ctx, f, unix.LOCK_SH); err != nil {
		return fmt.Errorf("verify sha256:%s: %w", want, err)
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("verify sha256:%s: %w", want, err)
	}
	return c.checkBlob(ctx, f, want, st.Size(), "verify")
}

// checkBlob hashes f (a leased descriptor of blob want) and quarantines it
// on a mismatch, returning an ErrCorrupt error naming where it went. by
// labels the hashed bytes in the metrics: acquire or verify.
func (c *Cache) checkBlob(ctx context.Context, f *os.File, want string, size int64, by string) error {
	got, err := hashFile(ctx, f, size)
	if err != nil {
		return fmt.Errorf("verify sha256:%s: %w", want, err)
	}
	c.metrics.verified(by, size)
	if got == want {
		return nil
	}
	return c.corruptBlob(ctx, f, want, got, false)
}

// corruptBlob quarantines blob want, whose leased descriptor f hashed to
// got, and returns the ErrCorrupt error that says so. lockHeld says whether
// the caller holds want's fetch lock already.
func (c *Cache) corruptBlob(ctx context.Context, f *os.File, want, got string, lockHeld bool) error {
	c.metrics.quarantine()
	dst, qerr := c.quarantine(ctx, want, f, lockHeld)
	if qerr != nil {
		return &kindError{kind: ErrCorrupt, cause: qerr, msg: fmt.Sprintf(
			"blob sha256:%s is corrupt (content hashes to sha256:%s) and could not be quarantined: %v", want, got, qerr)}
	}
	if dst == "" {
		return &kindError{kind: ErrCorrupt, msg: fmt.Sprintf(
			"blob sha256:%s was corrupt (content hashed to sha256:%s) and has already been replaced or removed", want, got)}
	}
	c.opts.Logger.Warn("model cache blob corrupt; quarantined", "digest", "sha256:"+want, "hashes_to", "sha256:"+got, "moved_to", dst)
	return &kindError{kind: ErrCorrupt, msg: fmt.Sprintf(
		"blob sha256:%s is corrupt (content hashes to sha256:%s); moved to %s, the next acquire fetches it again", want, got, dst)}
}

// hashFile returns the sha256 of f's first size bytes, read with pread (f's
// offset is left alone, so a lease descriptor may be hashed).
func hashFile(ctx context.Context, f *os.File, size int64) (string, error) {
	h := sha256.New()
	buf := make([]byte, min(size, verifyChunk))
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		h.Write(buf[:n])
		off += int64(n)
		if err != nil && off < size {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// quarantine renames blob hex out of blobs/ into quarantine/, provided the
// path still names the file f that was found corrupt (a fresh copy may have
// replaced it). It holds the digest's fetch lock (taking it unless
// lockHeld), so no fetcher installs a copy meanwhile. Renaming, like
// unlinking, leaves every existing mapping valid; nothing ever opens a
// quarantined file by name again, so GC may delete it at any time. It
// returns where the blob went, or "" when the path names another file.
func (c *Cache) quarantine(ctx context.Context, hex string, f *os.File, lockHeld bool) (string, error) {
	if !lockHeld {
		lk, _, err := c.lock(ctx, blobKey(hex))
		if err != nil {
			return "", err
		}
		defer lk.Close()
	}
	path := c.blobPath(hex)
	if same, err := sameFile(f, path); err != nil || !same {
		return "", err
	}
	qdir := filepath.Join(c.root, quarantineDir)
	if err := os.MkdirAll(qdir, 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(qdir, fmt.Sprintf("%s.%d", blobKey(hex), time.Now().UnixNano()))
	if err := os.Rename(path, dst); err != nil {
		return "", err
	}
	os.Remove(c.usePath(hex))
	c.forgetVerified(hex)
	if err := syncDir(filepath.Join(c.root, blobsDir)); err != nil {
		return dst, err
	}
	return dst, syncDir(qdir)
}

// verifyOnOpen applies VerifyOnOpen to a blob an Acquire found already
// cached: it is re-hashed the first time this Cache opens it. It reports
// whether the blob is good; a corrupt one has been quarantined (and is
// still mapped: the caller closes it and fetches again).
func (c *Cache) verifyOnOpen(ctx context.Context, b *Blob, rep *Report) (bool, error) {
	hex := b.Digest[len("sha256:"):]
	c.verifiedMu.Lock()
	_, done := c.verified[hex]
	c.verifiedMu.Unlock()
	if done {
		return true, nil
	}
	t := time.Now()
	err := c.checkBlob(ctx, b.f, hex, b.Size, "acquire")
	rep.Verify += time.Since(t)
	if errors.Is(err, ErrCorrupt) {
		c.opts.Logger.Warn("model cache re-fetching corrupt blob", "digest", b.Digest, "err", err)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	c.remember(hex, blobStamp{})
	return true, nil
}
