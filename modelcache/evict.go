package modelcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Subdirectories of a cache root used by eviction and verification.
const (
	// useDir holds one empty file per blob, use/sha256-<hex>, whose mtime is
	// the blob's last use. Blobs themselves are immutable, and atime is
	// unreliable (noatime, relatime), so last use lives beside them. A
	// blob without a use file was last used when it was installed (its
	// mtime).
	useDir = "use"
	// quarantineDir receives blobs that failed re-verification, renamed out
	// of blobs/ (never written) so that the next Acquire fetches them again
	// and an operator can inspect what went wrong. They count against the
	// budget until GC deletes them.
	quarantineDir = "quarantine"
)

var (
	// ErrNotCached means a digest names no blob in the cache.
	ErrNotCached = errors.New("blob not cached")
	// ErrInUse means a blob is leased (mapped by some process on the host)
	// or being installed, so it cannot be evicted now.
	ErrInUse = errors.New("blob in use")
	// ErrCorrupt means a cached blob no longer hashes to its name. It has
	// been moved to quarantine/; the next Acquire fetches it again.
	ErrCorrupt = errors.New("blob corrupt")
)

// BlobInfo describes one cached blob, as List reports it.
type BlobInfo struct {
	// Digest is "sha256:<hex>".
	Digest string `json:"digest"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	// LastUsed is the last time an Acquire returned the blob (in any process,
	// persisted across restarts), or its install time if never acquired.
	LastUsed time.Time `json:"last_used"`
	// InUse is true when some process on the host holds a lease on the blob
	// (or an evictor is removing it) at the moment List looked.
	InUse bool `json:"in_use"`
	// ResidentBytes is how many of its bytes are in the page cache (mincore).
	ResidentBytes int64 `json:"resident_bytes"`
}

// QuarantinedFile is one file in quarantine/: a blob that failed
// re-verification, kept for an operator to inspect until GC deletes it.
type QuarantinedFile struct {
	// Digest is what the file should have hashed to ("sha256:<hex>").
	Digest string `json:"digest"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	// QuarantinedAt is when it was moved out of blobs/.
	QuarantinedAt time.Time `json:"quarantined_at"`
}

// GCResult is what one GC did.
type GCResult struct {
	// Evicted lists the blobs removed, least recently used first.
	Evicted []BlobInfo `json:"evicted"`
	// QuarantineRemoved lists the quarantined files deleted.
	QuarantineRemoved []QuarantinedFile `json:"quarantine_removed"`
	// Freed is the sum of the sizes of the evicted blobs and the deleted
	// quarantined files; QuarantineFreed is the latter's part.
	Freed           int64 `json:"freed_bytes"`
	QuarantineFreed int64 `json:"quarantine_freed_bytes"`
	// SkippedInUse counts blobs GC would have evicted but could not: they
	// were leased, being installed, or kept by the caller.
	SkippedInUse int `json:"skipped_in_use"`
	// Used is what the budget counts after GC: the bytes of blobs/ and
	// quarantine/. Budget is the cap (0: none).
	Used   int64 `json:"used_bytes"`
	Budget int64 `json:"budget_bytes"`
}

func (c *Cache) usePath(hex string) string {
	return filepath.Join(c.root, useDir, blobKey(hex))
}

// touch records now as hex's last use. A failure costs only LRU accuracy,
// so callers log it rather than fail.
func (c *Cache) touch(hex string) error {
	p := c.usePath(hex)
	now := time.Now()
	err := os.Chtimes(p, now, now)
	if errors.Is(err, fs.ErrNotExist) {
		var f *os.File
		if f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
			f.Close()
			err = os.Chtimes(p, now, now)
		}
	}
	if err != nil {
		return fmt.Errorf("record last use of sha256:%s: %w", hex, err)
	}
	return nil
}

// Budget is the byte cap on blobs/: Options.Budget, else
// Options.BudgetPercent of the size of the file system holding the cache
// (statfs), else 0 (no cap).
func (c *Cache) Budget() (int64, error) {
	if c.opts.Budget > 0 {
		return c.opts.Budget, nil
	}
	if c.opts.BudgetPercent <= 0 {
		return 0, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(c.root, blobsDir), &st); err != nil {
		return 0, fmt.Errorf("cache budget: statfs %s: %w", c.root, err)
	}
	total := float64(st.Blocks) * float64(st.Bsize)
	return int64(total * min(c.opts.BudgetPercent, 100) / 100), nil
}

// Usage returns the bytes the budget counts, those of blobs/ and of
// quarantine/, and the budget (0: no cap).
func (c *Cache) Usage() (used, budget int64, err error) {
	infos, err := c.list(false)
	if err != nil {
		return 0, 0, err
	}
	for _, bi := range infos {
		used += bi.Size
	}
	q, err := c.Quarantined()
	if err != nil {
		return 0, 0, err
	}
	for _, qf := range q {
		used += qf.Size
	}
	budget, err = c.Budget()
	return used, budget, err
}

// Quarantined lists the files in quarantine/, oldest first. A missing
// quarantine/ holds nothing; names that are not genfleet's are left out.
func (c *Cache) Quarantined() ([]QuarantinedFile, error) {
	dir := filepath.Join(c.root, quarantineDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list quarantine: %w", err)
	}
	var out []QuarantinedFile
	for _, e := range entries {
		key, ns, ok := strings.Cut(e.Name(), ".")
		hex, isBlob := cutBlobKey(key)
		at, err := strconv.ParseInt(ns, 10, 64)
		if !ok || !isBlob || len(hex) != 64 || !isLowerHex(hex) || err != nil || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while we looked
		}
		if err != nil {
			return nil, fmt.Errorf("list quarantine: %w", err)
		}
		out = append(out, QuarantinedFile{Digest: "sha256:" + hex, Path: filepath.Join(dir, e.Name()),
			Size: info.Size(), QuarantinedAt: time.Unix(0, at)})
	}
	slices.SortFunc(out, func(a, b QuarantinedFile) int { return a.QuarantinedAt.Compare(b.QuarantinedAt) })
	return out, nil
}

// List describes every blob in the cache, least recently used first (the
// order GC evicts in). It probes each blob's lease with a non-blocking
// exclusive flock that it releases at once, and maps each blob briefly to
// count its resident pages.
func (c *Cache) List() ([]BlobInfo, error) {
	return c.list(true)
}

// list is List; probe says whether to take the in-use and residency
// measurements, which cost a few system calls per blob.
func (c *Cache) list(probe bool) ([]BlobInfo, error) {
	dir := filepath.Join(c.root, blobsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list cache: %w", err)
	}
	infos := make([]BlobInfo, 0, len(entries))
	for _, e := range entries {
		hex, ok := strings.CutPrefix(e.Name(), "sha256-")
		if !ok || len(hex) != 64 || !isLowerHex(hex) {
			continue
		}
		bi, err := c.blobInfo(hex, probe)
		if errors.Is(err, fs.ErrNotExist) {
			continue // evicted while we looked
		}
		if err != nil {
			return nil, fmt.Errorf("list cache: %w", err)
		}
		infos = append(infos, bi)
	}
	slices.SortFunc(infos, func(a, b BlobInfo) int {
		if d := a.LastUsed.Compare(b.LastUsed); d != 0 {
			return d
		}
		return strings.Compare(a.Digest, b.Digest)
	})
	return infos, nil
}

func (c *Cache) blobInfo(hex string, probe bool) (BlobInfo, error) {
	path := c.blobPath(hex)
	bi := BlobInfo{Digest: "sha256:" + hex, Path: path}
	if !probe {
		st, err := os.Stat(path)
		if err != nil {
			return bi, err
		}
		bi.Size, bi.LastUsed = st.Size(), c.lastUse(hex, st)
		return bi, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return bi, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return bi, err
	}
	bi.Size, bi.LastUsed = st.Size(), c.lastUse(hex, st)
	free, err := tryFlock(f, unix.LOCK_EX)
	if err != nil {
		return bi, err
	}
	if free {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
	}
	bi.InUse = !free
	if bi.ResidentBytes, err = fileResidency(f); err != nil {
		return bi, err
	}
	return bi, nil
}

// lastUse is the mtime of hex's use file, or of the blob (its install
// time) when there is none.
func (c *Cache) lastUse(hex string, blob fs.FileInfo) time.Time {
	if st, err := os.Stat(c.usePath(hex)); err == nil {
		return st.ModTime()
	}
	return blob.ModTime()
}

// GC deletes every quarantined file, then evicts blobs, least recently used
// first, until blobs/ and quarantine/ together fit the budget. Blobs that
// are leased by any process on the host (or being installed) are skipped,
// never waited for. Eviction only unlinks (see TryEvict). Evicting stops
// early when ctx is done. With no budget GC evicts no blob.
//
// Quarantined files are never in use: quarantine renames a blob out of
// blobs/, after which nothing opens it by name (an Acquire looks in blobs/
// only), and a process that still maps it keeps its pages when the name is
// deleted, as with eviction.
func (c *Cache) GC(ctx context.Context) (GCResult, error) {
	if err := c.writable("gc"); err != nil {
		return GCResult{}, err
	}
	return c.gc(ctx, nil, true)
}

// gc is GC, never evicting the hex digests in keep. It deletes the
// quarantined files when purge is set or the cache is over its budget
// (before evicting any blob: they are of no use to anyone).
func (c *Cache) gc(ctx context.Context, keep map[string]bool, purge bool) (GCResult, error) {
	var res GCResult
	budget, err := c.Budget()
	if err != nil {
		return res, err
	}
	res.Budget = budget
	infos, err := c.list(false)
	if err != nil {
		return res, err
	}
	for _, bi := range infos {
		res.Used += bi.Size
	}
	quarantined, err := c.Quarantined()
	if err != nil {
		return res, err
	}
	for _, qf := range quarantined {
		res.Used += qf.Size
	}
	var errs []error
	if purge || (budget > 0 && res.Used > budget) {
		for _, qf := range quarantined {
			if err := os.Remove(qf.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("gc: %w", err))
				continue
			}
			res.Used -= qf.Size
			res.Freed += qf.Size
			res.QuarantineFreed += qf.Size
			res.QuarantineRemoved = append(res.QuarantineRemoved, qf)
			c.opts.Logger.Info("model cache deleted quarantined file", "path", qf.Path, "bytes", qf.Size)
		}
	}
	if budget <= 0 {
		return res, errors.Join(errs...)
	}
	for _, bi := range infos {
		if res.Used <= budget {
			break
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("gc: %w", err))
			break
		}
		hex := strings.TrimPrefix(bi.Digest, "sha256:")
		if keep[hex] {
			res.SkippedInUse++
			continue
		}
		ok, err := c.TryEvict(bi.Digest)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			res.SkippedInUse++
			continue
		}
		res.Used -= bi.Size
		res.Freed += bi.Size
		res.Evicted = append(res.Evicted, bi)
		c.metrics.evicted(bi.Size)
		c.opts.Logger.Info("model cache evicted blob", "digest", bi.Digest, "bytes", bi.Size,
			"last_used", bi.LastUsed, "used", res.Used, "budget", budget)
	}
	return res, errors.Join(errs...)
}

// Remove evicts one blob now. Unlike TryEvict it says why it could not: an
// error wrapping ErrInUse when some process holds its lease (or it is being
// installed), ErrNotCached when it is not in the cache.
func (c *Cache) Remove(digest string) error {
	if err := c.writable("remove " + digest); err != nil {
		return err
	}
	hex, err := parseHexOrDigest(digest)
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	st, err := os.Stat(c.blobPath(hex))
	if errors.Is(err, fs.ErrNotExist) {
		return &kindError{kind: ErrNotCached, msg: fmt.Sprintf("sha256:%s is not in the cache at %s", hex, c.root)}
	}
	if err != nil {
		return fmt.Errorf("remove sha256:%s: %w", hex, err)
	}
	ok, err := c.TryEvict("sha256:" + hex)
	if err != nil {
		return err
	}
	if !ok {
		if _, serr := os.Stat(c.blobPath(hex)); errors.Is(serr, fs.ErrNotExist) {
			return nil // someone else evicted it first: it is gone, as asked
		}
		return &kindError{kind: ErrInUse, msg: fmt.Sprintf(
			"sha256:%s is in use: a process on this host has it mapped (or is installing it); close the model or stop that worker, then retry", hex)}
	}
	c.metrics.evicted(st.Size())
	return nil
}
