package modelcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
// holds no state of its own beyond its root and source: everything that
// processes share lives in the file system, so any number of Caches, in any
// number of processes, may use one root at once. A Cache is safe for
// concurrent use.
type Cache struct {
	root string
	src  Source
	opts Options
}

// Open opens the cache at root, creating its directories if needed, and
// removes partial downloads in tmp/ that no live fetcher owns (their lock is
// free: the fetcher died). src may be nil for a cache that only serves what
// it already holds.
func Open(root string, src Source) (*Cache, error) {
	return OpenWith(root, src, Options{})
}

// OpenWith is Open with options; zero fields take their defaults.
func OpenWith(root string, src Source, opts Options) (*Cache, error) {
	if root == "" {
		return nil, errors.New("open model cache: no root directory given")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open model cache %s: %w", root, err)
	}
	for _, d := range []string{blobsDir, tmpDir, locksDir, refsDir} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("open model cache: %w", err)
		}
	}
	c := &Cache{root: abs, src: src, opts: opts.withDefaults()}
	if err := c.cleanTmp(); err != nil {
		return nil, fmt.Errorf("open model cache %s: %w", abs, err)
	}
	return c, nil
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

// cleanTmp removes every tmp/<key>.* file whose key's lock it can take,
// i.e. that no fetcher is writing. Files whose names are not ours are left
// alone.
//
// The later resume work will keep partial downloads that have saved progress
// rather than remove them.
func (c *Cache) cleanTmp() error {
	dir := filepath.Join(c.root, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("clean tmp: %w", err)
	}
	for _, e := range entries {
		key, _, _ := strings.Cut(e.Name(), ".")
		if !validKey(key) {
			continue
		}
		lk, err := c.tryLock(key)
		if err != nil {
			return fmt.Errorf("clean tmp: %w", err)
		}
		if lk == nil {
			continue // a fetch in progress owns it
		}
		err = os.Remove(filepath.Join(dir, e.Name()))
		lk.Close()
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("clean tmp: %w", err)
		}
	}
	return nil
}

// Report measures one Acquire. Durations are summed over the model's files.
type Report struct {
	// Hit is true when every file was already on disk and nothing was
	// downloaded by this call; a call that waited for another process's
	// download and then found the blob counts as a hit (with Wait > 0).
	Hit bool
	// FetchedBytes is what this call downloaded from S3, including bytes of
	// a download that failed.
	FetchedBytes int64
	// Wait is the time blocked on another fetcher's lock.
	Wait time.Duration
	// Fetch is Head + GET + writing to tmp/; the sha256 is computed as the
	// bytes stream in, so its cost is here too. A raw s3:// ref is Headed
	// even on a hit (to check its ETag), and that Head counts here.
	Fetch time.Duration
	// Verify is the digest check and the durable install: fsync the file,
	// chmod, rename into blobs/, fsync the directory.
	Verify time.Duration
	// Map is opening, leasing and mapping the blobs.
	Map time.Duration
}

func (r *Report) add(o Report) {
	r.Hit = r.Hit && o.Hit
	r.FetchedBytes += o.FetchedBytes
	r.Wait += o.Wait
	r.Fetch += o.Fetch
	r.Verify += o.Verify
	r.Map += o.Map
}

// Acquire makes every file of m available, fetching missing ones from S3,
// and returns them mapped and leased. Each file is downloaded at most once
// per host however many processes ask at once: the others wait for the
// download (until ctx is done) and then map the blob.
//
// Files with a digest are verified against it (a mismatch yields an error
// wrapping ErrDigestMismatch and adds nothing to the cache). A file without
// one (a raw s3:// ref) is hashed on fetch, and what it hashed to is recorded
// so that a later Acquire of the same unchanged object (same ETag and size,
// checked with a Head) downloads nothing.
//
// On error nothing stays mapped or leased.
func (c *Cache) Acquire(ctx context.Context, m *Manifest) (*Model, error) {
	if m == nil {
		return nil, errors.New("acquire: nil manifest")
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("acquire model %q: %w", m.Ref(), err)
	}
	model := &Model{Manifest: m, Report: Report{Hit: true}}
	for _, f := range m.Files {
		var b *Blob
		var r Report
		var err error
		if f.Size == 0 {
			err = fmt.Errorf("%s is empty: a file of 0 bytes cannot be mapped", f.URL)
		} else if f.Digest != "" {
			b, r, err = c.acquireDigest(ctx, f)
		} else {
			b, r, err = c.acquireRef(ctx, f)
		}
		model.Report.add(r)
		if err != nil {
			model.Close()
			return nil, fmt.Errorf("acquire model %q, file %q: %w", m.Ref(), f.Name, err)
		}
		model.Blobs = append(model.Blobs, b)
	}
	return model, nil
}

// TryEvict removes the blob with the given digest ("sha256:<hex>") if no one
// is using it. It never waits: if the blob is leased (mapped by some
// process) or being installed, it reports false, nil; it also reports false,
// nil when the blob is not in the cache. Eviction only unlinks, so a mapping
// that somehow still exists stays valid.
func (c *Cache) TryEvict(digest string) (bool, error) {
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
