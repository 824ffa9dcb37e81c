package modelcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/internal/s3x"
)

// maxRefRecordBytes bounds how much of a refs/ record is read.
const maxRefRecordBytes = 64 << 10

// acquireDigest makes a file with a known digest available.
//
// A download whose bytes do not hash to the digest is thrown away, with
// any progress saved for resuming, and fetched once more from scratch: a
// part damaged in transit, or a resumed partial damaged on disk, is then
// replaced. A second mismatch means S3 itself holds other bytes than the
// manifest says, which no further download can fix: the ErrDigestMismatch
// error is returned.
func (c *Cache) acquireDigest(ctx context.Context, f File) (*Blob, Report, error) {
	var rep Report
	want, _ := parseDigest(f.Digest) // Validate checked it
	if b, err := c.openBlobTimed(ctx, want, f.Size, &rep); !errors.Is(err, errNoBlob) {
		rep.Hit, rep.Origin = err == nil, OriginDisk
		return b, rep, err
	}

	lk, wait, err := c.lock(ctx, blobKey(want))
	rep.Wait += wait
	if err != nil {
		return nil, rep, err
	}
	defer lk.Close()

	// Double check. Our first look and our lock are not atomic: between
	// them another fetcher (in this or another process) may have downloaded,
	// verified and renamed the blob into place and released the lock; that
	// is exactly the fetcher we were waiting for. Only a look taken while
	// holding the lock is conclusive, since every install happens under it.
	if b, err := c.openBlobTimed(ctx, want, f.Size, &rep); !errors.Is(err, errNoBlob) {
		rep.Origin = OriginWaited
		return b, rep, err
	}

	rep.Origin = OriginFetched
	u, _ := parseObjectURL(f.URL) // Validate checked it
	for attempt := 1; ; attempt++ {
		info, err := c.head(ctx, u, f.Size, &rep)
		if err != nil {
			return nil, rep, err
		}
		p, err := c.download(ctx, u, info, blobKey(want), "sha256:"+want, f, &rep)
		if err != nil {
			return nil, rep, err
		}
		b, err := c.install(p, want, u, &rep)
		p.discard() // a no-op once installed; else the partial and its progress go
		if attempt == 1 && errors.Is(err, ErrDigestMismatch) {
			c.opts.Logger.Warn("model cache download does not match its digest; fetching it once more from scratch",
				"url", u.String(), "err", err)
			continue
		}
		return b, rep, err
	}
}

// acquireRef makes a file without a digest (a raw s3:// ref) available. The
// digest is unknown until the bytes are hashed, so fetchers serialise on a
// lock named by the URL, and refs/ remembers which version of the object
// hashed to which digest.
func (c *Cache) acquireRef(ctx context.Context, f File) (*Blob, Report, error) {
	var rep Report
	u, _ := parseObjectURL(f.URL) // Validate checked it
	urlHash := sha256Hex([]byte(u.String()))

	// The Head is needed even on a hit: only the current ETag tells whether
	// the recorded digest still describes the object.
	info, err := c.head(ctx, u, f.Size, &rep)
	if err != nil {
		return nil, rep, err
	}
	if b, err := c.refHit(ctx, urlHash, u, info, &rep); b != nil || err != nil {
		rep.Hit, rep.Origin = err == nil, OriginDisk
		return b, rep, err
	}

	lk, wait, err := c.lock(ctx, refKey(urlHash))
	rep.Wait += wait
	if err != nil {
		return nil, rep, err
	}
	defer lk.Close()

	// Double check, for the same race as in acquireDigest: the fetcher we
	// waited for may have just recorded this very version of the object.
	if b, err := c.refHit(ctx, urlHash, u, info, &rep); b != nil || err != nil {
		rep.Origin = OriginWaited
		return b, rep, err
	}

	rep.Origin = OriginFetched
	p, err := c.download(ctx, u, info, refKey(urlHash), "", File{}, &rep)
	if err != nil {
		return nil, rep, err
	}
	defer p.discard()

	// Now the digest is known. Install under its lock (ref lock, then digest
	// lock; nothing takes them in the other order), because the same content
	// may be cached or being installed under its digest already: a registered
	// model, or another URL with the same bytes. Then keep the existing blob.
	dlk, wait, err := c.lock(ctx, blobKey(p.hex))
	rep.Wait += wait
	if err != nil {
		return nil, rep, err
	}
	defer dlk.Close()
	b, err := c.openBlobTimed(ctx, p.hex, info.Size, &rep)
	if errors.Is(err, errNoBlob) {
		b, err = c.install(p, "", u, &rep)
	}
	if err != nil {
		return nil, rep, err
	}
	rec := refRecord{URL: u.String(), ETag: info.ETag, Size: info.Size, Digest: b.Digest}
	if err := c.writeRef(urlHash, rec); err != nil {
		b.close()
		return nil, rep, err
	}
	return b, rep, nil
}

// openBlobTimed is openBlob, adding its time to rep.Map.
func (c *Cache) openBlobTimed(ctx context.Context, hex string, size int64, rep *Report) (*Blob, error) {
	t := time.Now()
	b, err := c.openBlob(ctx, hex, size)
	rep.Map += time.Since(t)
	return b, err
}

// head asks S3 for the object's current ETag (the GET is pinned to it) and
// checks its size against the manifest's.
func (c *Cache) head(ctx context.Context, u s3x.URL, size int64, rep *Report) (ObjectInfo, error) {
	if c.src == nil {
		return ObjectInfo{}, fmt.Errorf("%s is not in the cache, which has no source to fetch it from", u)
	}
	t := time.Now()
	info, err := c.src.Head(ctx, u.Bucket, u.Key)
	rep.Fetch += time.Since(t)
	if err != nil {
		return ObjectInfo{}, err
	}
	if info.Size != size {
		return ObjectInfo{}, &kindError{kind: ErrChanged, msg: fmt.Sprintf(
			"%s is %d bytes but the manifest says %d (the object changed; resolve the model again)", u, info.Size, size)}
	}
	return info, nil
}

// partial is a download in tmp/, complete and hashed but not yet installed.
type partial struct {
	f        *os.File // open for writing; nil once installed or discarded
	path     string
	progress string // its progress log, removed once installed or discarded
	hex      string // sha256 of the content
	size     int64
	// pf is the PartSource's download, if any: it is closed only once the
	// blob is installed (and so offered to peers) or thrown away, so that
	// peers waiting on this host (its S3 lease) never find it in between.
	pf PartFetch
}

// discard removes the partial file unless it was installed, and ends the
// PartSource's download.
func (p *partial) discard() {
	if p.f != nil {
		p.f.Close()
		os.Remove(p.path)
		os.Remove(p.progress)
		p.f = nil
	}
	if p.pf != nil {
		p.pf.Close()
		p.pf = nil
	}
}

// download fetches the object, pinned to info.ETag, into tmp/<key>.part and
// returns it hashed. want is the expected "sha256:<hex>" digest when known
// (for progress reports only; install checks it). The caller must hold
// key's lock, which makes it the tmp files' only writer.
//
// An object of at most PartSize bytes is one GET. A larger one is fetched
// as parallel ranged GETs of PartSize bytes, FetchConcurrency at a time,
// written with pwrite into a preallocated file, while a hasher consumes the
// finished prefix; each finished part is fdatasync'ed and recorded in
// tmp/<key>.progress, and a later download of the same object version (same
// ETag and size), in this process or another, fetches only the parts not
// recorded. A part that receives no bytes for StallTimeout is cancelled and
// retried; failed parts are retried up to FetchRetries times with
// exponential backoff and jitter, resuming from the bytes already written.
//
// A file with part digests (pf.HasParts(), want set) is fetched in the
// manifest's parts, each hashed as it lands and counted (written to the
// progress log, fed to the whole-file hash) only once it matches its part
// digest; a part that does not is thrown away and fetched again. Its parts
// come through the Source's PartSource interface when it has one (peers),
// else from S3. Parts recorded by an earlier run are hashed again before a
// resumed download trusts them. The progress log of such a download names
// the digest, which tells readers (PeerBlob) that every part it records
// was verified.
//
// On error, a multi-part download that recorded finished parts is kept for
// resuming, unless the object changed (ErrChanged): then, as after any
// failed single-part download, the tmp files are removed.
func (c *Cache) download(ctx context.Context, u s3x.URL, info ObjectInfo, key, want string, pf File, rep *Report) (*partial, error) {
	t := time.Now()
	defer func() { rep.Fetch += time.Since(t) }()
	ft := &fetcher{src: c.src, u: u, etag: info.ETag, size: info.Size, digest: want, opts: c.opts}
	path, progPath := c.tmpPath(key), c.progressPath(key)
	hdr := progressHeader{V: progressVersion, URL: u.String(), ETag: info.ETag, Size: info.Size, PartSize: c.opts.PartSize}
	ft.single = info.Size <= c.opts.PartSize || info.ETag == "" // without an ETag, parts could mix versions
	if want != "" && pf.HasParts() && info.ETag != "" {
		// The manifest's parts are the unit of fetching and verifying.
		ft.single, ft.sums = false, pf.Parts
		hdr.PartSize, hdr.Digest = pf.PartSize, want
	}

	var done []bool
	if !ft.single {
		if old, d, ok := c.readProgress(key); ok && old.ETag == info.ETag && old.Size == info.Size && old.URL == hdr.URL &&
			(ft.sums == nil || old.PartSize == hdr.PartSize) {
			hdr, done = old, d // the recorded part size defines the parts
			hdr.Digest = want
		}
	}
	var err error
	if done != nil {
		ft.f, err = os.OpenFile(path, os.O_RDWR, 0)
		if err == nil && ft.sums != nil {
			// Hash what an earlier run recorded before trusting it;
			// the log is rewritten to name only the parts that pass.
			err = c.checkResumed(ctx, ft.f, pf, done)
			if err == nil {
				ft.log, err = c.createProgress(key, hdr)
			}
			if err == nil {
				err = ft.log.record(indices(done))
			}
		} else if err == nil {
			ft.log, err = c.appendProgress(key)
		}
	} else {
		os.Remove(progPath)
		// A new inode, not the old one truncated: a reader of the old
		// partial (PeerBlob) keeps the bytes it found verified.
		os.Remove(path)
		ft.f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err == nil {
			err = preallocate(ft.f, info.Size)
		}
		if err == nil && !ft.single {
			ft.log, err = c.createProgress(key, hdr)
		}
	}
	if err != nil {
		if ft.f != nil {
			ft.f.Close()
		}
		c.discardPartial(key)
		return nil, fmt.Errorf("download %s: %w", u, err)
	}

	partSize := hdr.PartSize
	if ft.single {
		partSize = info.Size
	}
	n := int((info.Size + partSize - 1) / partSize)
	ft.parts = make([]fetchPart, n)
	var resumed int64
	for i := range ft.parts {
		p := &ft.parts[i]
		p.off = int64(i) * partSize
		p.n = min(partSize, info.Size-p.off)
		if done != nil && done[i] {
			p.written.Store(p.n)
			p.verified.Store(ft.sums != nil)
			resumed += p.n
		} else {
			ft.todo = append(ft.todo, i)
		}
	}
	if resumed > 0 {
		c.opts.Logger.Info("resuming fetch", "url", u.String(), "have_bytes", resumed, "size", info.Size,
			"parts_left", len(ft.todo), "parts", n)
	}
	if ft.sums != nil && len(ft.todo) > 0 {
		if ps, ok := c.src.(PartSource); ok {
			ft.pf, err = ps.OpenParts(ctx, PartFile{Bucket: u.Bucket, Key: u.Key, ETag: info.ETag,
				Digest: want, Size: info.Size, PartSize: hdr.PartSize, Parts: pf.Parts})
			if err != nil {
				ft.f.Close()
				ft.log.close()
				return nil, fmt.Errorf("download %s: %w", u, err)
			}
		}
	}

	hexSum, err := ft.run(ctx)
	rep.FetchedBytes += ft.fetched.Load()
	if cerr := ft.log.close(); err == nil && cerr != nil {
		err = fmt.Errorf("download %s: %w", u, cerr)
	}
	if err != nil {
		if ft.pf != nil {
			ft.pf.Close()
		}
		ft.f.Close()
		if ft.single || errors.Is(err, ErrChanged) || !c.resumable(key) {
			c.discardPartial(key)
		}
		if errors.Is(err, errStalled) {
			err = fmt.Errorf("download %s: %w (no bytes for %v)", u, err, c.opts.StallTimeout)
		}
		return nil, err
	}
	return &partial{f: ft.f, path: path, progress: progPath, hex: hexSum, size: info.Size, pf: ft.pf}, nil
}

// checkResumed hashes each part that done says an earlier run finished
// and clears done[i] for those that do not match their part digest.
func (c *Cache) checkResumed(ctx context.Context, f *os.File, pf File, done []bool) error {
	buf := make([]byte, min(int64(hashBufSize), pf.PartSize))
	bad := 0
	for i, d := range done {
		if !d {
			continue
		}
		off := int64(i) * pf.PartSize
		got, err := hashRange(ctx, f, off, min(pf.PartSize, pf.Size-off), buf)
		if err != nil {
			return err
		}
		if "sha256:"+got != pf.Parts[i] {
			done[i] = false
			bad++
		}
	}
	if bad > 0 {
		c.opts.Logger.Warn("resumed download had parts that do not match their digests; fetching them again",
			"url", pf.URL, "parts", bad)
	}
	return nil
}

// indices lists the i for which set[i].
func indices(set []bool) []int {
	var out []int
	for i, ok := range set {
		if ok {
			out = append(out, i)
		}
	}
	return out
}

// install verifies p against want (skipped when want is "") and moves it
// into blobs/ durably: fsync, chmod 0444, rename, fsync the directory. It
// returns the blob mapped, with its lease taken before the rename so that
// no evictor can remove it between the rename and the map. The caller must
// hold the digest's lock.
func (c *Cache) install(p *partial, want string, u s3x.URL, rep *Report) (*Blob, error) {
	t := time.Now()
	if want != "" && p.hex != want {
		p.discard()
		rep.Verify += time.Since(t)
		return nil, &kindError{kind: ErrDigestMismatch, msg: fmt.Sprintf(
			"%s: content hashes to sha256:%s but the manifest says sha256:%s; nothing was cached", u, p.hex, want)}
	}
	rf, err := c.installFile(p)
	rep.Verify += time.Since(t)
	if err != nil {
		return nil, fmt.Errorf("install %s as sha256:%s: %w", u, p.hex, err)
	}
	// Hashed as it arrived: record it verified, for every process on the
	// host (we hold the digest's lock, the record's writer lock).
	if st, err := c.stamp(rf); err == nil {
		c.recordVerified(p.hex, st, time.Now())
	}
	t = time.Now()
	b, err := mapBlob(rf, p.hex, c.blobPath(p.hex), p.size)
	rep.Map += time.Since(t)
	if b != nil {
		b.fresh = true
	}
	return b, err
}

// installFile does install's file-system part and returns a read-only,
// leased descriptor of the installed blob.
func (c *Cache) installFile(p *partial) (*os.File, error) {
	if err := p.f.Sync(); err != nil {
		return nil, err
	}
	if err := p.f.Chmod(0o444); err != nil {
		return nil, err
	}
	rf, err := os.Open(p.path)
	if err != nil {
		return nil, err
	}
	// No one else can hold a lock on this inode yet: it is only reachable
	// through tmp/, whose file we own while holding the fetch lock.
	if ok, err := tryFlock(rf, unix.LOCK_SH); err != nil || !ok {
		rf.Close()
		if err == nil {
			err = errors.New("tmp file unexpectedly locked")
		}
		return nil, err
	}
	if err := os.Rename(p.path, c.blobPath(p.hex)); err != nil {
		rf.Close()
		return nil, err
	}
	p.f.Close()
	p.f = nil // installed: nothing to discard
	os.Remove(p.progress)
	if err := syncDir(filepath.Join(c.root, blobsDir)); err != nil {
		rf.Close()
		return nil, err
	}
	return rf, nil
}

// refRecord remembers what a raw s3:// ref hashed to, for one version of the
// object (identified by ETag and size).
type refRecord struct {
	URL    string `json:"url"`
	ETag   string `json:"etag"`
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
}

func (c *Cache) refPath(urlHash string) string {
	return filepath.Join(c.root, refsDir, urlHash+".json")
}

// refHit returns the blob that refs/ records for this version of the object
// at u, or nil, nil when there is no usable record or the blob is gone.
func (c *Cache) refHit(ctx context.Context, urlHash string, u s3x.URL, info ObjectInfo, rep *Report) (*Blob, error) {
	rec, ok := c.readRef(urlHash)
	if !ok || info.ETag == "" || rec.URL != u.String() || rec.ETag != info.ETag || rec.Size != info.Size {
		return nil, nil
	}
	h, err := parseDigest(rec.Digest)
	if err != nil {
		return nil, nil
	}
	b, err := c.openBlobTimed(ctx, h, info.Size, rep)
	if errors.Is(err, errNoBlob) {
		return nil, nil // evicted; fetch again
	}
	return b, err
}

// readRef reads a refs/ record. A missing or unreadable record counts as
// absent: it only saves a download, and is rewritten after the next one.
func (c *Cache) readRef(urlHash string) (refRecord, bool) {
	f, err := os.Open(c.refPath(urlHash))
	if err != nil {
		return refRecord{}, false
	}
	defer f.Close()
	var rec refRecord
	if err := json.NewDecoder(io.LimitReader(f, maxRefRecordBytes)).Decode(&rec); err != nil {
		return refRecord{}, false
	}
	return rec, true
}

// writeRef replaces a refs/ record atomically (tmp file, fsync, rename,
// fsync dir). The caller holds the ref's lock, which also protects the tmp
// file from cleanTmp.
func (c *Cache) writeRef(urlHash string, rec refRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.root, tmpDir, refKey(urlHash)+".json.new")
	if err := writeFileSync(tmp, append(data, '\n')); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record %s: %w", rec.URL, err)
	}
	if err := os.Rename(tmp, c.refPath(urlHash)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record %s: %w", rec.URL, err)
	}
	if err := syncDir(filepath.Join(c.root, refsDir)); err != nil {
		return fmt.Errorf("record %s: %w", rec.URL, err)
	}
	return nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
