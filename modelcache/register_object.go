package modelcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/genfleet/genfleet/internal/s3x"
)

// HashObject returns the manifest entry (for Register) of the object at u,
// which obj describes (s3x.Head: its size, ETag and S3's full-object
// SHA-256 when S3 keeps one): its name, URL, size, digest and, unless
// partSize is negative, its part digests of partSize bytes (0:
// PartSizeFor's). The Role is left to the caller.
//
// The object is read once, pinned to obj.ETag (an object replaced
// meanwhile fails the read rather than mixing versions), with progress
// (when not nil) called with the bytes read so far. Where S3 has the
// object's SHA-256 the digest must match it, or the error wraps
// ErrDigestMismatch; with S3's SHA-256 and a negative partSize the object
// is not read at all, and the digest is S3's word. read says whether the
// object was read.
func (r *Registry) HashObject(ctx context.Context, u s3x.URL, obj s3x.Object, partSize int64, progress func(done, total int64)) (f File, read bool, err error) {
	f = File{Name: path.Base(u.Key), URL: u.String(), Size: obj.Size}
	if obj.SHA256 != "" {
		f.Digest = "sha256:" + obj.SHA256
		if partSize < 0 {
			return f, false, nil
		}
	}
	if partSize == 0 {
		partSize = PartSizeFor(obj.Size)
	}
	h := NewPartHasher(max(partSize, 0))
	if err := r.readObject(ctx, u, obj, h, progress); err != nil {
		return File{}, true, err
	}
	digest, ps, parts := h.Sum()
	if f.Digest != "" && digest != f.Digest {
		return File{}, true, &kindError{kind: ErrDigestMismatch,
			msg: fmt.Sprintf("%s hashes to %s, but S3's SHA-256 checksum of it says %s: the object or its checksum is damaged; nothing was registered", u, digest, f.Digest)}
	}
	f.Digest, f.PartSize, f.Parts = digest, ps, parts
	return f, true, nil
}

// readObject reads the object at u, pinned to obj's ETag, into w.
func (r *Registry) readObject(ctx context.Context, u s3x.URL, obj s3x.Object, w io.Writer, progress func(done, total int64)) error {
	body, err := r.Src.Get(ctx, u.Bucket, u.Key, obj.ETag)
	if err != nil {
		return err
	}
	defer body.Close()
	var done int64
	buf := make([]byte, 4<<20)
	for {
		n, err := body.Read(buf)
		w.Write(buf[:n])
		done += int64(n)
		if n > 0 && progress != nil {
			progress(done, obj.Size)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", u, err)
		}
	}
	if done != obj.Size {
		return fmt.Errorf("read %d bytes of %s, which holds %d", done, u, obj.Size)
	}
	return nil
}

// objectReadAhead is the least an ObjectReaderAt reads per GET.
const objectReadAhead = 1 << 20

// ObjectReaderAt reads one version of an object (size bytes, pinned to
// etag) through ranged GETs from src, for header parsers: it reads at
// least 1 MiB at a time and keeps the last block, since a parser reads a
// few bytes, then what follows them. ctx bounds every GET it makes. It is
// used by one goroutine at a time.
type ObjectReaderAt struct {
	ctx  context.Context
	src  Source
	u    s3x.URL
	etag string
	size int64

	off   int64 // of block
	block []byte
}

// NewObjectReaderAt returns an ObjectReaderAt of the object at u.
func NewObjectReaderAt(ctx context.Context, src Source, u s3x.URL, etag string, size int64) *ObjectReaderAt {
	return &ObjectReaderAt{ctx: ctx, src: src, u: u, etag: etag, size: size}
}

// ReadAt reads len(p) bytes at off, fewer with io.EOF at the object's end.
func (r *ObjectReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: negative offset", r.u, off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), r.size-off)
	if off < r.off || off+want > r.off+int64(len(r.block)) {
		n := min(max(want, objectReadAhead), r.size-off)
		body, err := r.src.GetRange(r.ctx, r.u.Bucket, r.u.Key, r.etag, off, n)
		if err != nil {
			return 0, err
		}
		block := make([]byte, n)
		_, err = io.ReadFull(body, block)
		body.Close()
		if err != nil {
			return 0, fmt.Errorf("read %s at %d: %w", r.u, off, err)
		}
		r.off, r.block = off, block
	}
	n := copy(p[:want], r.block[off-r.off:])
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}
