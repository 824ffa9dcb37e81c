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
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Subdirectories of a cache root.
const (
	blobsDir = "blobs"
	tmpDir   = "tmp"
	locksDir = "locks"
	refsDir  = "refs"
)

// Cache is a content-addressed model cache rooted in one directory. A Cache
// holds no shared state of its own beyond its root and source: everything
// that processes share (blobs, locks, leases, last use, verification
// records) lives in the file system, so any number of Caches, in any number
// of processes, may use one root at once. A Cache is safe for concurrent use.
type Cache struct {
	root    string
	src     Source
	opts    Options
	metrics *metrics // nil without Options.Metrics

	// existing is set by OpenExisting: the Cache never creates its layout.
	existing bool
	// bootID is this boot's id (see readBootID); "" when unknown, and then
	// VerifyPerBoot verifies once per Cache, as VerifyOnOpen does.
	bootID string
	// verity is what the file system says about fs-verity (see FSVerity).
	verity VerityStatus

	// verified remembers the blobs this Cache verified (or fetched), by hex
	// digest: with VerifyPerBoot the stamp they were verified under, so a
	// blob used again needs one fstat and no read of its record; with
	// VerifyOnOpen a zero stamp (each blob is re-hashed once per Cache).
	verifiedMu sync.Mutex
	verified   map[string]blobStamp
}

// Open opens the cache at root, creating its directories if needed, and
// removes partial downloads in tmp/ that no live fetcher owns (their lock is
// free: the fetcher died). src may be nil for a cache that only serves what
// it already holds.
func Open(root string, src Source) (*Cache, error) {
	return OpenWith(root, src, Options{})
}

// OpenWith is Open with options; zero fields take their defaults. With
// Options.ReadOnly it is OpenExisting.
func OpenWith(root string, src Source, opts Options) (*Cache, error) {
	if opts.ReadOnly {
		return OpenExisting(root, src, opts)
	}
	c, err := newCache(root, src, opts)
	if err != nil {
		return nil, err
	}
	if err := makeDirs(c.root); err != nil {
		return nil, fmt.Errorf("open model cache: %w", err)
	}
	if err := c.cleanTmp(); err != nil {
		return nil, fmt.Errorf("open model cache %s: %w", c.root, err)
	}
	return c, c.start()
}

// OpenExisting opens the cache at root without creating or cleaning
// anything: root and its blobs/ must exist, else the error wraps
// ErrNoCache and names the path. It is for commands that inspect or trim a
// cache (list, verify, gc, rm): pointed at a wrong path they say so rather
// than lay out a new, empty cache there. A Cache opened this way never
// creates directories later either. With Options.ReadOnly it also refuses
// every change but moving a corrupt blob into quarantine/.
func OpenExisting(root string, src Source, opts Options) (*Cache, error) {
	c, err := newCache(root, src, opts)
	if err != nil {
		return nil, err
	}
	c.existing = true
	st, err := os.Stat(c.root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, &kindError{kind: ErrNoCache, cause: fs.ErrNotExist, msg: fmt.Sprintf("model cache %s does not exist", c.root)}
	case err != nil:
		return nil, fmt.Errorf("open model cache: %w", err)
	case !st.IsDir():
		return nil, &kindError{kind: ErrNoCache, msg: fmt.Sprintf("model cache %s is not a directory", c.root)}
	}
	if st, err := os.Stat(filepath.Join(c.root, blobsDir)); err != nil || !st.IsDir() {
		return nil, &kindError{kind: ErrNoCache, cause: err, msg: fmt.Sprintf("%s is not a model cache: it has no %s/ directory", c.root, blobsDir)}
	}
	return c, c.start()
}

// newCache checks the options and makes a Cache, touching nothing on disk.
func newCache(root string, src Source, opts Options) (*Cache, error) {
	if root == "" {
		return nil, errors.New("open model cache: no root directory given")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open model cache %s: %w", root, err)
	}
	opts = opts.withDefaults()
	for _, err := range []error{opts.LoadMode.Validate(), opts.Advice.Validate(), opts.Verify.Validate()} {
		if err != nil {
			return nil, fmt.Errorf("open model cache: %w", err)
		}
	}
	if opts.Budget < 0 || opts.BudgetPercent < 0 || opts.BudgetPercent > 100 {
		return nil, fmt.Errorf("open model cache: budget %d bytes / %g%%: want a size ≥ 0 or a percentage in [0, 100]", opts.Budget, opts.BudgetPercent)
	}
	return &Cache{root: abs, src: src, opts: opts, verified: map[string]blobStamp{}}, nil
}

// start finishes opening: boot id, fs-verity probe, metrics.
func (c *Cache) start() error {
	c.bootID = readBootID()
	if c.bootID == "" && c.opts.Verify == VerifyPerBoot {
		c.opts.Logger.Warn("model cache: boot id unknown; --verify per-boot re-hashes each blob once per process",
			"file", bootIDFile)
	}
	c.verity = probeVerity(c.root)
	c.opts.Logger.Debug("model cache opened", "root", c.root, "verify", c.opts.Verify, "read_only", c.opts.ReadOnly,
		"fs_verity", c.verity.String())
	if c.opts.Metrics != nil {
		m, err := newMetrics(c.opts.Metrics, c)
		if err != nil {
			return fmt.Errorf("open model cache %s: metrics: %w", c.root, err)
		}
		c.metrics = m
	}
	return nil
}

// Options returns the options the Cache runs with, defaults filled in.
func (c *Cache) Options() Options { return c.opts }

// makeDirs creates the cache's subdirectories under root if missing.
func makeDirs(root string) error {
	for _, d := range []string{blobsDir, tmpDir, locksDir, refsDir, useDir, verifiedDir, quarantineDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// Root is the cache's root directory (absolute).
func (c *Cache) Root() string { return c.root }

func (c *Cache) blobPath(hex string) string {
	return filepath.Join(c.root, blobsDir, "sha256-"+hex)
}
func (c *Cache) tmpPath(key string) string  { return filepath.Join(c.root, tmpDir, key+".part") }
func (c *Cache) lockPath(key string) string { return filepath.Join(c.root, locksDir, key+".lock") }

// Lock and tmp keys: "sha256-<hex>" for a known digest, "ref-<sha256 of the
// URL>" for a raw ref.
func blobKey(hex string) string    { return "sha256-" + hex }
func refKey(urlHash string) string { return "ref-" + urlHash }

func validKey(key string) bool {
	for _, p := range []string{"sha256-", "ref-"} {
		if h, ok := strings.CutPrefix(key, p); ok {
			return len(h) == 64 && isLowerHex(h)
		}
	}
	return false
}

// cleanTmp removes what dead fetchers left in tmp/: every tmp/<key>.* file
// whose key's lock it can take (no fetcher is writing it), except a partial
// download worth resuming: tmp/<key>.part with a tmp/<key>.progress log
// that is valid, matches the part file and records finished parts (see
// resumable). Whether such a partial still matches the object in S3 (ETag
// and size) is checked by the fetch that resumes it, which starts over if
// not. Files whose names are not ours are left alone.
func (c *Cache) cleanTmp() error {
	dir := filepath.Join(c.root, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("clean tmp: %w", err)
	}
	byKey := map[string][]string{}
	var keys []string
	for _, e := range entries {
		key, _, _ := strings.Cut(e.Name(), ".")
		if !validKey(key) {
			continue
		}
		if _, seen := byKey[key]; !seen {
			keys = append(keys, key)
		}
		byKey[key] = append(byKey[key], e.Name())
	}
	for _, key := range keys {
		lk, err := c.tryLock(key)
		if err != nil {
			return fmt.Errorf("clean tmp: %w", err)
		}
		if lk == nil {
			continue // a fetch in progress owns it
		}
		keep := c.resumable(key)
		for _, name := range byKey[key] {
			if keep && (name == key+".part" || name == key+".progress") {
				continue
			}
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				lk.Close()
				return fmt.Errorf("clean tmp: %w", err)
			}
		}
		lk.Close()
	}
	return nil
}

// Origin says where an Acquire got a model's files from.
type Origin string

const (
	// OriginDisk: every file was in blobs/ when the Acquire looked (and
	// passed its verification).
	OriginDisk Origin = "disk"
	// OriginWaited: some file was missing, and another fetcher (another
	// process on the host, or another Cache) installed it while this
	// Acquire waited for its lock; this Acquire downloaded nothing.
	OriginWaited Origin = "waited"
	// OriginFetched: this Acquire downloaded at least one file (or part of
	// one) from S3, including a re-fetch of a blob found corrupt.
	OriginFetched Origin = "fetched"
)

// rank orders origins by how much the Acquire had to do; a model's origin
// is the highest of its files'.
func (o Origin) rank() int {
	switch o {
	case OriginWaited:
		return 1
	case OriginFetched:
		return 2
	}
	return 0
}

// Report measures one Acquire. Durations are summed over the model's files.
// Resolving a name to a manifest happens before Acquire (Registry.Resolve),
// so callers time that phase themselves.
type Report struct {
	// Hit is true when every file was already on disk, intact, when the
	// Acquire looked: nothing was fetched and nothing was waited for.
	Hit bool
	// Origin tells the three cases apart: on disk, installed by another
	// fetcher while this call waited, or fetched by this call.
	Origin Origin
	// FetchedBytes is what this call downloaded, from S3 or (for files with
	// part digests, through a PartSource) from peers, including bytes of a
	// download that failed or did not match its digest.
	FetchedBytes int64
	// Wait is the time blocked on another fetcher's lock.
	Wait time.Duration
	// Fetch is Head + GET + writing to tmp/; the sha256 is computed as the
	// bytes stream in, so its cost is here too. A raw s3:// ref is Headed
	// even on a hit (to check its ETag), and that Head counts here.
	Fetch time.Duration
	// Verify is the digest check and the durable install: fsync the file,
	// chmod, rename into blobs/, fsync the directory; and the re-hash of a
	// blob already on disk that the policy (Options.Verify) asked for,
	// including waiting for another process that was hashing it.
	Verify time.Duration
	// Map is opening, leasing and mapping the blobs.
	Map time.Duration
	// Read is, in LoadRead mode, copying the blobs into private memory.
	Read time.Duration
	// Prefault is madvise (AdvicePopulate faults every page in here) and
	// mlock.
	Prefault time.Duration
	// Corrupt counts blobs found corrupt on re-verification, quarantined
	// and fetched again by this call.
	Corrupt int
}

func (r *Report) add(o Report) {
	r.Hit = r.Hit && o.Hit
	if o.Origin.rank() > r.Origin.rank() {
		r.Origin = o.Origin
	}
	r.FetchedBytes += o.FetchedBytes
	r.Wait += o.Wait
	r.Fetch += o.Fetch
	r.Verify += o.Verify
	r.Map += o.Map
	r.Read += o.Read
	r.Prefault += o.Prefault
	r.Corrupt += o.Corrupt
}

// Acquire makes every file of m available, fetching missing ones from S3,
// and returns them mapped and leased (LoadMMap) or read into private memory
// (LoadRead), as the Cache's options say. Each file is downloaded at most
// once per host however many processes ask at once: the others wait for the
// download (until ctx is done) and then map the blob.
//
// Files with a digest are verified against it. A download that does not
// match is thrown away, with its saved progress, and fetched once more
// from scratch; a second mismatch yields an error wrapping
// ErrDigestMismatch and adds nothing to the cache. A file without a digest
// (a raw s3:// ref) is hashed on fetch, and what it hashed to is recorded
// so that a later Acquire of the same unchanged object (same ETag and size,
// checked with a Head) downloads nothing. A blob already on disk is
// re-hashed as Options.Verify says; a corrupt one is quarantined and
// fetched again, once.
//
// Every blob returned has its last use recorded. When this call downloaded
// anything and the cache is over its budget, Acquire evicts least recently
// used blobs (never the ones it returns; failures are logged, not returned).
//
// On error nothing stays mapped or leased.
func (c *Cache) Acquire(ctx context.Context, m *Manifest) (*Model, error) {
	if m == nil {
		return nil, errors.New("acquire: nil manifest")
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("acquire model %q: %w", m.Ref(), err)
	}
	if err := c.writable("acquire model " + m.Ref()); err != nil {
		return nil, err
	}
	// The directories may have been removed under a running worker (an
	// operator wiping the cache): recreate them rather than fail every job
	// until a restart. Blobs still mapped stay valid; they are fetched again.
	if !c.existing {
		if err := makeDirs(c.root); err != nil {
			return nil, fmt.Errorf("acquire model %q: model cache %s: %w", m.Ref(), c.root, err)
		}
	}
	model := &Model{Manifest: m, Report: Report{Hit: true, Origin: OriginDisk}}
	for _, f := range m.Files {
		b, r, err := c.acquireFile(ctx, f)
		model.Report.add(r)
		if err != nil {
			model.Close()
			return nil, fmt.Errorf("acquire model %q, file %q: %w", m.Ref(), f.Name, err)
		}
		model.Blobs = append(model.Blobs, b)
	}
	keep := make(map[string]bool, len(model.Blobs))
	for _, b := range model.Blobs {
		hex := b.Digest[len("sha256:"):]
		keep[hex] = true
		if err := c.touch(hex); err != nil {
			c.opts.Logger.Warn("model cache", "err", err)
		}
	}
	c.metrics.observe(&model.Report, c.opts.LoadMode)
	if model.Report.Origin == OriginFetched {
		c.gcAfterInstall(ctx, keep)
	}
	return model, nil
}

// writable returns an error wrapping ErrReadOnly for a read-only Cache.
func (c *Cache) writable(op string) error {
	if c.opts.ReadOnly {
		return &kindError{kind: ErrReadOnly, msg: fmt.Sprintf("%s: model cache %s was opened read-only", op, c.root)}
	}
	return nil
}

// acquireFile makes one file available and loads it (see load). A blob
// found on disk is verified as Options.Verify says (see verifyExisting); a
// corrupt one is quarantined and fetched again, once.
func (c *Cache) acquireFile(ctx context.Context, f File) (*Blob, Report, error) {
	var rep Report
	for attempt := 0; ; attempt++ {
		var b *Blob
		var r Report
		var err error
		switch {
		case f.Size == 0:
			err = fmt.Errorf("%s is empty: a file of 0 bytes cannot be mapped", f.URL)
		case f.Digest != "":
			b, r, err = c.acquireDigest(ctx, f)
		default:
			b, r, err = c.acquireRef(ctx, f)
		}
		if attempt == 0 {
			rep = r
		} else {
			rep.add(r)
		}
		if err != nil {
			return nil, rep, err
		}
		if !b.fresh { // a blob this call installed was hashed as it arrived
			if ok, err := c.verifyExisting(ctx, b, &rep); err != nil || !ok {
				b.close()
				if err != nil {
					return nil, rep, err
				}
				rep.Corrupt++
				rep.Hit = false
				if attempt == 0 {
					continue
				}
				return nil, rep, &kindError{kind: ErrCorrupt, msg: fmt.Sprintf(
					"%s: blob %s was corrupt again right after being fetched", f.URL, b.Digest)}
			}
		}
		if err := c.load(b, &rep); err != nil {
			return nil, rep, err
		}
		return b, rep, nil
	}
}

// gcAfterInstall runs GC after an Acquire added blobs, if the cache is over
// budget, keeping the blobs just acquired (they are leased anyway, except
// in LoadRead mode).
func (c *Cache) gcAfterInstall(ctx context.Context, keep map[string]bool) {
	budget, err := c.Budget()
	if err != nil || budget <= 0 {
		return
	}
	res, err := c.gc(ctx, keep, false)
	if err != nil {
		c.opts.Logger.Warn("model cache gc after fetch", "err", err)
	}
	if res.Used > res.Budget {
		c.opts.Logger.Warn("model cache over budget: the rest is in use",
			"used", res.Used, "budget", res.Budget, "skipped_in_use", res.SkippedInUse)
	}
}

// TryEvict removes the blob with the given digest ("sha256:<hex>") if no one
// is using it. It never waits: if the blob is leased (mapped by some
// process) or being installed, it reports false, nil; it also reports false,
// nil when the blob is not in the cache. Eviction only unlinks, so a mapping
// that somehow still exists stays valid.
func (c *Cache) TryEvict(digest string) (bool, error) {
	if err := c.writable("evict " + digest); err != nil {
		return false, err
	}
	hex, err := parseDigest(digest)
	if err != nil {
		return false, fmt.Errorf("evict: %w", err)
	}
	// Holding the fetch lock keeps a fetcher from installing a fresh copy
	// between our check and our unlink.
	lk, err := c.tryLock(blobKey(hex))
	if err != nil || lk == nil {
		return false, err
	}
	defer lk.Close()

	path := c.blobPath(hex)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("evict %s: %w", digest, err)
	}
	defer f.Close() // releases the exclusive lock, after the unlink
	ok, err := tryFlock(f, unix.LOCK_EX)
	if err != nil || !ok {
		return false, err
	}
	if same, err := sameFile(f, path); err != nil || !same {
		return false, err
	}
	if err := os.Remove(path); err != nil {
		return false, fmt.Errorf("evict %s: %w", digest, err)
	}
	// Still under the fetch lock, so no fresh copy's records are lost.
	os.Remove(c.usePath(hex))
	c.forgetVerified(hex)
	return true, nil
}

// syncDir fsyncs a directory so that a rename or create in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// Import installs the local file at path as a blob, by the same steps as a
// fetch: copy into tmp/ while hashing, fsync, chmod 0444, rename into
// blobs/, fsync the directory, all under the digest's fetch lock. It
// returns the digest ("sha256:<hex>"). Importing a blob that is already
// cached copies nothing. It is for seeding a cache without S3 (air-gapped
// hosts, benchmarks); the blob's last use is recorded as now.
func (c *Cache) Import(ctx context.Context, path string) (string, error) {
	if err := c.writable("import " + path); err != nil {
		return "", err
	}
	src, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("import: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return "", fmt.Errorf("import %s: %w", path, err)
	}
	if !st.Mode().IsRegular() || st.Size() == 0 {
		return "", fmt.Errorf("import %s: not a regular, non-empty file", path)
	}
	hex, err := hashFile(ctx, src, st.Size())
	if err != nil {
		return "", fmt.Errorf("import %s: %w", path, err)
	}
	digest := "sha256:" + hex
	lk, _, err := c.lock(ctx, blobKey(hex))
	if err != nil {
		return "", fmt.Errorf("import %s: %w", path, err)
	}
	defer lk.Close()
	if _, err := os.Stat(c.blobPath(hex)); err == nil {
		return digest, c.touch(hex)
	}
	tmp := filepath.Join(c.root, tmpDir, blobKey(hex)+".import")
	if err := c.copyVerified(ctx, src, tmp, hex, st.Size()); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("import %s: %w", path, err)
	}
	if err := os.Rename(tmp, c.blobPath(hex)); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("import %s: %w", path, err)
	}
	if err := syncDir(filepath.Join(c.root, blobsDir)); err != nil {
		return "", fmt.Errorf("import %s: %w", path, err)
	}
	// Hashed as it was copied: verified, under the lock we hold.
	if st, err := c.stampPath(c.blobPath(hex)); err == nil {
		c.recordVerified(hex, st, time.Now())
	}
	if err := c.touch(hex); err != nil {
		c.opts.Logger.Warn("model cache", "err", err)
	}
	c.opts.Logger.Debug("model cache imported blob", "digest", digest, "bytes", st.Size(), "from", path)
	return digest, nil
}

// copyVerified copies src into a new file at dst, checks that the copy
// hashes to want (the source may have changed since it was hashed), fsyncs
// it and makes it read-only. The caller holds want's fetch lock, which
// makes it dst's only writer.
func (c *Cache) copyVerified(ctx context.Context, src *os.File, dst, want string, size int64) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	h := sha256.New()
	buf := make([]byte, verifyChunk)
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := src.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if n > 0 {
			h.Write(buf[:n])
			if _, err := out.Write(buf[:n]); err != nil {
				return err
			}
			off += int64(n)
		}
		if rerr != nil && off < size {
			return rerr
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return &kindError{kind: ErrDigestMismatch, msg: fmt.Sprintf(
			"the file changed while it was imported (hashed to sha256:%s, then sha256:%s)", want, got)}
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if err := out.Chmod(0o444); err != nil {
		return err
	}
	return out.Close()
}
