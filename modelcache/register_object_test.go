package modelcache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/internal/s3x"
)

// HashObject reads an object in S3 once into a manifest entry: its digest
// and part digests, checked against S3's SHA-256 where there is one, which
// with no part digests wanted is taken without a read.
func TestHashObject(t *testing.T) {
	e := newEnv(t)
	data := randomBytes(300<<10, 9)
	e.putObject(t, "raw/a.safetensors", data)
	u := s3x.URL{Bucket: "models", Key: "raw/a.safetensors"}
	obj, err := s3x.Head(t.Context(), e.s3.Client, u)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	withSum, noSum := obj, obj
	withSum.SHA256, noSum.SHA256 = hex.EncodeToString(sum[:]), ""
	parts := func(ps int64) []string {
		h := NewPartHasher(ps)
		h.Write(data)
		_, _, p := h.Sum()
		return p
	}
	tests := []struct {
		name      string
		obj       s3x.Object
		partSize  int64
		read      bool
		wantSize  int64 // part size recorded
		wantParts []string
	}{
		{"S3's checksum, no parts", withSum, -1, false, 0, nil},
		{"S3's checksum, parts", withSum, 64 << 10, true, 64 << 10, parts(64 << 10)},
		{"no checksum, default parts", noSum, 0, true, DefaultManifestPartSize, parts(DefaultManifestPartSize)},
		{"no checksum, no parts", noSum, -1, true, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var last int64
			f, read, err := e.reg.HashObject(t.Context(), u, tc.obj, tc.partSize, func(done, total int64) {
				if total != int64(len(data)) || done < last {
					t.Errorf("progress %d of %d after %d", done, total, last)
				}
				last = done
			})
			if err != nil {
				t.Fatal(err)
			}
			want := File{Name: "a.safetensors", URL: "s3://models/raw/a.safetensors", Size: int64(len(data)), Digest: digest,
				PartSize: tc.wantSize, Parts: tc.wantParts}
			if read != tc.read || !reflect.DeepEqual(f, want) {
				t.Fatalf("got %+v (read %v), want %+v (read %v)", f, read, want, tc.read)
			}
			if tc.read && last != int64(len(data)) {
				t.Fatalf("progress ended at %d of %d", last, len(data))
			}
		})
	}

	// S3's checksum says other bytes: nothing to register.
	bad := withSum
	bad.SHA256 = strings.Repeat("0", 64)
	if _, _, err := e.reg.HashObject(t.Context(), u, bad, 0, nil); !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("a checksum that does not match: %v", err)
	}
	// The object was replaced since it was headed: the read fails.
	e.putObject(t, "raw/a.safetensors", randomBytes(300<<10, 10))
	if _, _, err := e.reg.HashObject(t.Context(), u, noSum, -1, nil); !errors.Is(err, ErrChanged) {
		t.Fatalf("a replaced object: %v, want ErrChanged", err)
	}
}

// ObjectReaderAt serves a parser's small reads from one ranged GET, reads
// again only outside its block, and ends at the object's end.
func TestObjectReaderAt(t *testing.T) {
	e := newEnv(t)
	data := randomBytes(3<<20, 11)
	e.putObject(t, "raw/b.gguf", data)
	src := &testSource{Source: e.src}
	info, err := src.Head(t.Context(), "models", "raw/b.gguf")
	if err != nil {
		t.Fatal(err)
	}
	r := NewObjectReaderAt(t.Context(), src, s3x.URL{Bucket: "models", Key: "raw/b.gguf"}, info.ETag, info.Size)
	read := func(off int64, n int) ([]byte, error) {
		p := make([]byte, n)
		k, err := r.ReadAt(p, off)
		return p[:k], err
	}
	for _, off := range []int64{0, 8, 100, 4096} {
		if b, err := read(off, 16); err != nil || !bytes.Equal(b, data[off:off+16]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	if n := src.ranged.Load(); n != 1 {
		t.Fatalf("%d ranged GETs for reads within the first MiB, want 1", n)
	}
	if b, err := read(2<<20, 32); err != nil || !bytes.Equal(b, data[2<<20:2<<20+32]) || src.ranged.Load() != 2 {
		t.Fatalf("read beyond the block: %v (%d GETs)", err, src.ranged.Load())
	}
	if b, err := read(int64(len(data))-4, 16); !errors.Is(err, io.EOF) || !bytes.Equal(b, data[len(data)-4:]) {
		t.Fatalf("read over the end: %d bytes, %v", len(b), err)
	}
	if _, err := read(int64(len(data)), 1); !errors.Is(err, io.EOF) {
		t.Fatalf("read at the end: %v", err)
	}
	if _, err := read(-1, 1); err == nil {
		t.Fatal("read at a negative offset succeeded")
	}
}
