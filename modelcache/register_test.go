package modelcache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/internal/s3x"
)

// Register writes a manifest for objects already in S3, after checking
// each is there with the size given; the cache then fetches and verifies
// the model through it.
func TestRegister(t *testing.T) {
	e := newEnv(t)
	data := randomBytes(300<<10, 5)
	e.putObject(t, "raw/a.safetensors", data)
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	file := File{Name: "a.safetensors", URL: "s3://models/raw/a.safetensors", Size: int64(len(data)), Digest: digest}

	m, err := e.reg.Register(t.Context(), "a", "", []File{file})
	if err != nil {
		t.Fatal(err)
	}
	if m.Format != "safetensors" || m.Created.IsZero() {
		t.Errorf("manifest %+v", m)
	}
	got, err := e.reg.Resolve(t.Context(), "a")
	if err != nil || len(got.Files) != 1 || !reflect.DeepEqual(got.Files[0], file) || got.Engine != "" {
		t.Fatalf("resolve: %+v, %v", got, err)
	}
	c := openCache(t, t.TempDir(), e.src)
	model := acquire(t, c, got)
	model.Close()

	tests := []struct {
		name  string
		files []File
		want  string
		is    error
	}{
		{"missing object", []File{{Name: "b.safetensors", URL: "s3://models/raw/b.safetensors", Size: 1, Digest: digest}}, "no object at s3://models/raw/b.safetensors", ErrModelNotFound},
		{"wrong size", []File{{Name: "a.safetensors", URL: file.URL, Size: 5, Digest: digest}}, "holds 307200 bytes, not 5", nil},
		{"no digest", []File{{Name: "a.safetensors", URL: file.URL, Size: file.Size}}, `file "a.safetensors" has no digest`, nil},
		{"bad digest", []File{{Name: "a.safetensors", URL: file.URL, Size: file.Size, Digest: "sha256:xyz"}}, "invalid digest", nil},
		{"prefix", []File{{Name: "a", URL: "s3://models/raw/", Size: 1, Digest: digest}}, "names a prefix", nil},
		{"no files", nil, "no files", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.reg.Register(t.Context(), "bad", "", tc.files)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if _, err := e.reg.Resolve(t.Context(), "bad"); !errors.Is(err, ErrModelNotFound) {
				t.Fatalf("a refused register left a manifest: %v", err)
			}
		})
	}
	if _, err := e.reg.Register(t.Context(), "Bad Name", "", []File{file}); !errors.Is(err, ErrInvalidRef) {
		t.Errorf("bad name: %v", err)
	}
}

// Register keeps the part digests it is given; a count that does not match
// the file's size is refused before anything is written.
func TestRegisterPartDigests(t *testing.T) {
	e := newEnv(t)
	data := randomBytes(300<<10, 6)
	e.putObject(t, "raw/p.safetensors", data)
	h := NewPartHasher(MinManifestPartSize)
	h.Write(data)
	digest, ps, parts := h.Sum()
	file := File{Name: "p.safetensors", URL: "s3://models/raw/p.safetensors", Size: int64(len(data)), Digest: digest, PartSize: ps, Parts: parts}
	if _, err := e.reg.Register(t.Context(), "p", "", []File{file}); err != nil {
		t.Fatal(err)
	}
	got, err := e.reg.Resolve(t.Context(), "p")
	if err != nil || !reflect.DeepEqual(got.Files[0], file) {
		t.Fatalf("resolve: %+v, %v", got, err)
	}
	bad := file
	bad.Parts = parts[:len(parts)-1]
	if _, err := e.reg.Register(t.Context(), "q", "", []File{bad}); !errors.Is(err, ErrBadManifest) || !strings.Contains(err.Error(), "4 part digests, but") {
		t.Fatalf("register with a part missing: %v", err)
	}
	if _, err := e.reg.Resolve(t.Context(), "q"); !errors.Is(err, ErrModelNotFound) {
		t.Fatalf("a refused register left a manifest: %v", err)
	}
}

// A LoRA is pushed and registered with its kind, which Resolve returns;
// a LoRA of two files is refused before anything is uploaded.
func TestPushAndRegisterLoRA(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	p := writeTemp(t, dir, "style.safetensors", randomBytes(5000, 3))
	m, err := e.reg.PushSpec(t.Context(), Spec{Name: "style", Kind: KindLoRA}, []PushFile{{Path: p, Dest: s3x.URL{Bucket: "models", Key: "loras/"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.reg.Resolve(t.Context(), "style")
	if err != nil || got.KindName() != KindLoRA || m.Kind != KindLoRA {
		t.Fatalf("resolve: %+v, %v", got, err)
	}
	reg, err := e.reg.RegisterSpec(t.Context(), Spec{Name: "style2", Kind: KindLoRA}, got.Files)
	if err != nil || reg.Kind != KindLoRA {
		t.Fatalf("register: %+v, %v", reg, err)
	}
	q := writeTemp(t, dir, "b.safetensors", randomBytes(10, 4))
	_, err = e.reg.PushSpec(t.Context(), Spec{Name: "pair", Kind: KindLoRA}, []PushFile{
		{Path: p, Dest: s3x.URL{Bucket: "models", Key: "pair/"}}, {Path: q, Role: "vae", Dest: s3x.URL{Bucket: "models", Key: "pair/"}},
	}, nil)
	if !errors.Is(err, ErrBadManifest) {
		t.Fatalf("two-file LoRA: %v", err)
	}
	if _, err := e.reg.Resolve(t.Context(), "pair"); !errors.Is(err, ErrModelNotFound) {
		t.Fatalf("a refused push left a manifest: %v", err)
	}
}

func writeTemp(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
