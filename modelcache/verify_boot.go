package modelcache

// Verification on first use per boot (VerifyPerBoot, the default).
//
// Why this policy. A blob is hashed as it arrives, so what was installed is
// right; what can go wrong later is the copy at rest: a write to the file by
// someone other than genfleet (the blob is 0444, but root or a careless
// chmod can), a torn or lost write after a crash, or media that return other
// bytes than they were given. Within one boot a blob that was hashed is read
// from the page cache or from the same disk blocks, and any write through
// the file system moves its mtime and ctime; across a reboot the page cache
// is gone and every byte comes from the media again. So a blob is hashed
// once per boot, and again whenever its stamp (below) changed, and the
// verdict is shared through the file system by every process on the host:
// N worker processes, and restarts of them, hash a blob once between them.
// Media decay within one boot (the page cache dropped a clean page and the
// disk returns other bytes) is what the throttled Scrubber is for.
//
// The cost is one read and sha256 of each blob at its first use after a
// boot (docs/benchmarks.md measures it per GiB against read() into private
// memory); reading warms the page cache that the job's mapping uses next,
// so on a cold start much of it is paid anyway. Every later use costs one
// fstat (a record in memory) or one fstat and a read of a small file.
//
// fs-verity would make the kernel check every page as it is read, with no
// first-use cost and no window: see FSVerity and docs/architecture.md for
// why it is only detected and reported here.
//
// A record, <root>/verified/sha256-<hex>, is JSON: the digest, the stamp it
// was verified under and when. It is written only by the holder of the
// digest's fetch lock (tmp file, then rename), is never fsynced (a reboot
// changes the boot id and so invalidates every record anyway; a process
// crash loses nothing that is in the page cache), and a record that does
// not parse counts as absent: the blob is hashed again.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// verifiedDir holds one verification record per blob (see above).
const verifiedDir = "verified"

// bootIDFile is where Linux gives a random id of the current boot. A
// variable so tests can simulate a reboot.
var bootIDFile = "/proc/sys/kernel/random/boot_id"

// readBootID returns this boot's id, or "" when it cannot be read.
func readBootID() string {
	f, err := os.Open(bootIDFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 128))
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(string(b))
	if len(id) > 64 {
		return ""
	}
	return id
}

// blobStamp identifies one state of one blob file within one boot: a write
// through the file system moves mtime and ctime; a replaced file has
// another inode; a reboot another boot id.
type blobStamp struct {
	Boot    string `json:"boot_id"`
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
	CtimeNs int64  `json:"ctime_ns"`
}

func (c *Cache) stampOf(st *unix.Stat_t) blobStamp {
	return blobStamp{Boot: c.bootID, Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano()}
}

// stamp returns f's stamp.
func (c *Cache) stamp(f *os.File) (blobStamp, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return blobStamp{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return c.stampOf(&st), nil
}

// stampPath returns the stamp of the file at path.
func (c *Cache) stampPath(path string) (blobStamp, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return blobStamp{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return c.stampOf(&st), nil
}

// verifiedRecord is the content of verified/sha256-<hex>.
type verifiedRecord struct {
	V      int    `json:"v"`
	Digest string `json:"digest"`
	blobStamp
	VerifiedAt time.Time `json:"verified_at"`
}

const verifiedVersion = 1

func (c *Cache) verifiedPath(hex string) string {
	return filepath.Join(c.root, verifiedDir, blobKey(hex))
}

// readVerified returns hex's record; ok is false when there is none or it
// does not parse.
func (c *Cache) readVerified(hex string) (verifiedRecord, bool) {
	f, err := os.Open(c.verifiedPath(hex))
	if err != nil {
		return verifiedRecord{}, false
	}
	defer f.Close()
	var rec verifiedRecord
	if err := json.NewDecoder(io.LimitReader(f, 4096)).Decode(&rec); err != nil ||
		rec.V != verifiedVersion || rec.Digest != "sha256:"+hex {
		return verifiedRecord{}, false
	}
	return rec, true
}

// verifiedAs reports whether hex has a record for exactly stamp st in this
// boot.
func (c *Cache) verifiedAs(hex string, st blobStamp) (verifiedRecord, bool) {
	if st.Boot == "" {
		return verifiedRecord{}, false
	}
	rec, ok := c.readVerified(hex)
	return rec, ok && rec.blobStamp == st
}

// recordVerified notes that blob hex, in state st, hashed right at time
// at: in memory, and (with a boot id, in a writable cache) in its record
// for every process on the host. The caller holds hex's fetch lock, which
// makes it the record's only writer. Failures cost a later re-hash only, so
// they are logged.
func (c *Cache) recordVerified(hex string, st blobStamp, at time.Time) {
	c.remember(hex, st)
	if st.Boot == "" || c.opts.ReadOnly {
		return
	}
	data, err := json.Marshal(verifiedRecord{V: verifiedVersion, Digest: "sha256:" + hex, blobStamp: st, VerifiedAt: at.UTC()})
	if err == nil {
		tmp := filepath.Join(c.root, tmpDir, blobKey(hex)+".verified.new")
		if err = os.WriteFile(tmp, append(data, '\n'), 0o644); err == nil {
			if err = os.Rename(tmp, c.verifiedPath(hex)); err != nil {
				os.Remove(tmp)
			}
		}
	}
	if err != nil {
		c.opts.Logger.Warn("model cache: cannot record a verified blob; it will be hashed again", "digest", "sha256:"+hex, "err", err)
	}
}

// forgetVerified drops hex's record: the blob was evicted or quarantined
// (also by a read-only Cache: the record goes with the blob). The caller
// holds hex's fetch lock.
func (c *Cache) forgetVerified(hex string) {
	c.verifiedMu.Lock()
	delete(c.verified, hex)
	c.verifiedMu.Unlock()
	os.Remove(c.verifiedPath(hex))
}

func (c *Cache) remember(hex string, st blobStamp) {
	c.verifiedMu.Lock()
	c.verified[hex] = st
	c.verifiedMu.Unlock()
}

// remembered reports whether this Cache verified hex in state st (any
// state, with VerifyOnOpen).
func (c *Cache) remembered(hex string, st blobStamp) bool {
	c.verifiedMu.Lock()
	defer c.verifiedMu.Unlock()
	got, ok := c.verified[hex]
	return ok && (c.opts.Verify == VerifyOnOpen || got == st)
}

// verifyExisting applies Options.Verify to a blob an Acquire found already
// cached. It reports whether the blob is good; a corrupt one has been
// quarantined (and is still mapped: the caller closes it and fetches
// again).
//
// With VerifyPerBoot, the common case (verified before, in this boot, in
// this state) costs an fstat, plus reading the record the first time this
// Cache sees the blob. Otherwise the blob is hashed under its fetch lock,
// so that processes starting together hash it once: the others wait, then
// find the record. A blob whose path no longer names the file we mapped
// was quarantined by another process meanwhile: it counts as corrupt.
func (c *Cache) verifyExisting(ctx context.Context, b *Blob, rep *Report) (bool, error) {
	hex := b.Digest[len("sha256:"):]
	switch c.opts.Verify {
	case VerifyNever:
		return true, nil
	case VerifyOnOpen:
		return c.verifyOnOpen(ctx, b, rep)
	}
	st, err := c.stamp(b.f)
	if err != nil {
		return false, fmt.Errorf("verify blob %s: %w", b.Digest, err)
	}
	if c.remembered(hex, st) {
		return true, nil
	}
	if st.Boot == "" {
		// No boot id: nothing can be shared; verify once per Cache.
		return c.verifyOnOpen(ctx, b, rep)
	}
	t := time.Now()
	defer func() { rep.Verify += time.Since(t) }()
	if _, ok := c.verifiedAs(hex, st); ok {
		c.remember(hex, st)
		return true, nil
	}
	lk, _, err := c.lock(ctx, blobKey(hex))
	if err != nil {
		return false, fmt.Errorf("verify blob %s: %w", b.Digest, err)
	}
	defer lk.Close()
	if _, ok := c.verifiedAs(hex, st); ok { // hashed while we waited
		c.remember(hex, st)
		return true, nil
	}
	if same, err := sameFile(b.f, c.blobPath(hex)); err != nil || !same {
		return false, err
	}
	start := time.Now()
	got, err := hashFile(ctx, b.f, b.Size)
	if err != nil {
		return false, fmt.Errorf("verify blob %s: %w", b.Digest, err)
	}
	c.metrics.verified("acquire", b.Size)
	if got != hex {
		err := c.corruptBlob(ctx, b.f, hex, got, true)
		c.opts.Logger.Warn("model cache re-fetching corrupt blob", "digest", b.Digest, "err", err)
		return false, nil
	}
	if after, err := c.stamp(b.f); err == nil && after == st {
		c.recordVerified(hex, st, start)
	}
	return true, nil
}
