package modelcache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/s3x"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"simple", "sdxl", true},
		{"punctuation", "sd-1.5_fp16", true},
		{"digit first", "1girl", true},
		{"max length", strings.Repeat("a", 128), true},
		{"path traversal", "../../etc/passwd", false},
		{"upper case", "A", false},
		{"empty", "", false},
		{"too long", strings.Repeat("a", 129), false},
		{"leading dash", "-x", false},
		{"leading dot", ".hidden", false},
		{"slash", "a/b", false},
		{"space", "a b", false},
		{"newline", "a\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidName(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidName(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidRef) {
					t.Errorf("error %v does not wrap ErrInvalidRef", err)
				}
				if !strings.Contains(err.Error(), "a-z, 0-9") {
					t.Errorf("error %q does not say what is allowed", err)
				}
			}
		})
	}
}

func TestPushThenResolve(t *testing.T) {
	e := newEnv(t)
	e.reg.PartSize = 0 // the default: 16 MiB part digests
	data := randomBytes(100_000, 1)
	p := writeFile(t, "tiny.safetensors", data)
	var last, total int64
	m, err := e.reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "weights/"}, "tiny", func(done, tot int64) {
		last, total = done, tot
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != int64(len(data)) || total != int64(len(data)) {
		t.Errorf("last progress = %d/%d, want %d/%d", last, total, len(data), len(data))
	}
	want := File{Name: "tiny.safetensors", URL: "s3://models/weights/tiny.safetensors", Size: 100_000, Digest: "sha256:" + sha256Hex(data),
		PartSize: DefaultManifestPartSize, Parts: []string{"sha256:" + sha256Hex(data)}}
	if len(m.Files) != 1 || !reflect.DeepEqual(m.Files[0], want) {
		t.Fatalf("pushed files = %+v, want [%+v]", m.Files, want)
	}
	if m.Schema != 1 || m.Name != "tiny" || m.Format != "safetensors" || m.Created.IsZero() {
		t.Errorf("pushed manifest = %+v", m)
	}

	got, err := e.reg.Resolve(t.Context(), "tiny")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("Resolve = %+v, want %+v", got, m)
	}

	// The manifest is indented JSON at <root>manifests/<name>.json.
	body, err := e.src.Get(t.Context(), "models", "manifests/tiny.json", "")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(body)
	body.Close()
	if !bytes.Contains(raw, []byte("\n  \"schema\": 1,")) {
		t.Errorf("manifest is not indented JSON:\n%s", raw)
	}
}

func TestRegistryRootPrefix(t *testing.T) {
	e := newEnv(t)
	reg := &Registry{Src: e.src, Root: s3x.URL{Bucket: "models", Key: "team"}}
	p := writeFile(t, "w.gguf", randomBytes(1000, 2))
	m, err := reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "blobs/w.gguf"}, "w", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Format != "gguf" || m.Files[0].URL != "s3://models/blobs/w.gguf" {
		t.Errorf("manifest = %+v", m)
	}
	if _, err := e.src.Head(t.Context(), "models", "team/manifests/w.json"); err != nil {
		t.Fatalf("manifest not under the root prefix: %v", err)
	}
	if _, err := e.reg.Resolve(t.Context(), "w"); !errors.Is(err, ErrModelNotFound) {
		t.Errorf("registry without the prefix found it: %v", err)
	}
}

func TestResolveUnknownName(t *testing.T) {
	e := newEnv(t)
	_, err := e.reg.Resolve(t.Context(), "sdxl")
	if !errors.Is(err, ErrModelNotFound) {
		t.Fatalf("err = %v, want ErrModelNotFound", err)
	}
	want := `model "sdxl" not found (no manifest at s3://models/manifests/sdxl.json)`
	if err.Error() != want {
		t.Errorf("message = %q, want %q", err, want)
	}
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("err %v does not keep the S3 cause", err)
	}
}

func TestResolveInvalid(t *testing.T) {
	e := newEnv(t)
	for _, ref := range []string{
		"../../etc/passwd", "A", "", strings.Repeat("x", 200),
		"s3://", "s3://Bad_Bucket/k", "s3://models/../k", "s3://models/dir/", "s3://models",
	} {
		_, err := e.reg.Resolve(t.Context(), ref)
		if !errors.Is(err, ErrInvalidRef) {
			t.Errorf("Resolve(%q) = %v, want ErrInvalidRef", ref, err)
		}
	}
}

func TestResolveS3Ref(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "raw/model.safetensors", randomBytes(4321, 3))
	m, err := e.reg.Resolve(t.Context(), "s3://models/raw/model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{Schema: 1, Format: "safetensors", Files: []File{{
		Name: "model.safetensors", URL: "s3://models/raw/model.safetensors", Size: 4321,
	}}}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("Resolve = %+v, want %+v", m, want)
	}

	_, err = e.reg.Resolve(t.Context(), "s3://models/raw/missing.safetensors")
	if !errors.Is(err, ErrModelNotFound) || !strings.Contains(err.Error(), "s3://models/raw/missing.safetensors") {
		t.Errorf("missing object: err = %v, want ErrModelNotFound naming the URL", err)
	}
}

func TestPushRejectsBadInput(t *testing.T) {
	e := newEnv(t)
	p := writeFile(t, "m.safetensors", randomBytes(10, 4))
	for _, name := range []string{"../../etc/passwd", "A", "", strings.Repeat("a", 129)} {
		if _, err := e.reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "w/"}, name, nil); !errors.Is(err, ErrInvalidRef) {
			t.Errorf("Push name %q: err = %v, want ErrInvalidRef", name, err)
		}
	}
	empty := writeFile(t, "empty.safetensors", nil)
	if _, err := e.reg.Push(t.Context(), empty, s3x.URL{Bucket: "models", Key: "w/"}, "empty", nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("Push of an empty file: err = %v", err)
	}
	keys, err := e.src.List(t.Context(), "models", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("rejected pushes left objects: %v", keys)
	}
}

// A blob upload that fails must not leave a manifest behind.
func TestPushWritesManifestOnlyAfterBlob(t *testing.T) {
	e := newEnv(t)
	e.reg.Src = &failingPut{Source: e.src, failKey: "w/m.safetensors"}
	p := writeFile(t, "m.safetensors", randomBytes(1000, 5))
	if _, err := e.reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "w/"}, "m", nil); !errors.Is(err, errInjected) {
		t.Fatalf("Push: err = %v, want the injected fault", err)
	}
	e.reg.Src = e.src
	if _, err := e.reg.Resolve(t.Context(), "m"); !errors.Is(err, ErrModelNotFound) {
		t.Errorf("Resolve after failed push: err = %v, want ErrModelNotFound", err)
	}
}

type failingPut struct {
	Source
	failKey string
}

func (s *failingPut) Put(ctx context.Context, bucket, key string, body io.ReadSeeker, size int64) error {
	if key == s.failKey {
		return errInjected
	}
	return s.Source.Put(ctx, bucket, key, body, size)
}

func TestRegistryList(t *testing.T) {
	e := newEnv(t)
	b, _ := e.push(t, "beta", 300)
	a, _ := e.push(t, "alpha", 200)
	e.putObject(t, "manifests/NOT-A-NAME.json", []byte("{}"))
	e.putObject(t, "manifests/readme.txt", []byte("hi"))
	got, err := e.reg.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !reflect.DeepEqual(&got[0], a) || !reflect.DeepEqual(&got[1], b) {
		t.Fatalf("List = %+v, want [alpha beta]", got)
	}

	e.putObject(t, "manifests/broken.json", []byte("{not json"))
	e.putObject(t, "manifests/passwd.json", []byte(`{"schema":1,"name":"passwd","files":[{"name":"p","url":"file:///etc/passwd","size":1}]}`))
	got, err = e.reg.List(t.Context())
	var bad ManifestErrors
	if len(got) != 2 || !errors.As(err, &bad) || !strings.Contains(err.Error(), `"broken"`) {
		t.Fatalf("List with broken manifests = %d manifests, err %v; want 2 and ManifestErrors naming them", len(got), err)
	}
	if len(bad) != 2 || bad[0].Name != "broken" || bad[1].Name != "passwd" ||
		!errors.Is(bad[0].Err, ErrBadManifest) || !strings.Contains(bad[1].Err.Error(), "file:///etc/passwd") {
		t.Errorf("ManifestErrors = %v; want broken and passwd, each with its cause", bad)
	}
}

func TestMultipartPut(t *testing.T) {
	e := newEnv(t)
	src := &s3Source{c: e.s3.Client, threshold: 5 << 20, partSize: 5 << 20}
	data := randomBytes(11<<20+123, 6)
	if err := src.Put(t.Context(), "models", "big/m.bin", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	body, err := src.Get(t.Context(), "models", "big/m.bin", "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("multipart round trip: %d bytes, err %v; want %d equal bytes", len(got), err, len(data))
	}
	// A failed multipart upload leaves no object and no open upload.
	short := bytes.NewReader(data[:6<<20])
	if err := src.Put(t.Context(), "models", "big/short.bin", short, int64(len(data))); err == nil {
		t.Fatal("Put with a short body succeeded")
	}
	if _, err := src.Head(t.Context(), "models", "big/short.bin"); !errors.Is(err, ErrNotFound) {
		t.Errorf("failed upload left an object: %v", err)
	}
	ups, err := e.s3.Client.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String("models")})
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) != 0 {
		t.Errorf("failed upload was not aborted: %d open uploads", len(ups.Uploads))
	}
}

func TestParseManifestRejects(t *testing.T) {
	good := Manifest{Schema: 1, Name: "m", Format: "safetensors", Files: []File{{
		Name: "m.safetensors", URL: "s3://models/m.safetensors", Size: 1, Digest: "sha256:" + strings.Repeat("ab", 32),
	}}}
	tests := []struct {
		name   string
		mutate func(*Manifest)
	}{
		{"schema 2", func(m *Manifest) { m.Schema = 2 }},
		{"bad name", func(m *Manifest) { m.Name = "../x" }},
		{"no files", func(m *Manifest) { m.Files = nil }},
		{"file without name", func(m *Manifest) { m.Files[0].Name = "" }},
		{"prefix URL", func(m *Manifest) { m.Files[0].URL = "s3://models/dir/" }},
		{"http URL", func(m *Manifest) { m.Files[0].URL = "http://x/y" }},
		{"negative size", func(m *Manifest) { m.Files[0].Size = -1 }},
		{"md5 digest", func(m *Manifest) { m.Files[0].Digest = "md5:abc" }},
		{"upper hex", func(m *Manifest) { m.Files[0].Digest = "sha256:" + strings.Repeat("AB", 32) }},
		{"bad engine", func(m *Manifest) { m.Engine = "Sd CPP" }},
		{"bad role", func(m *Manifest) { m.Files[0].Role = "--vae" }},
		{"parts without part size", func(m *Manifest) { m.Files[0].Parts = []string{m.Files[0].Digest} }},
		{"part size without parts", func(m *Manifest) { m.Files[0].PartSize = MinManifestPartSize }},
		{"part size too small", func(m *Manifest) {
			m.Files[0].PartSize, m.Files[0].Parts = 1024, []string{m.Files[0].Digest}
		}},
		{"too few parts", func(m *Manifest) {
			m.Files[0].Size = MinManifestPartSize + 1
			m.Files[0].PartSize, m.Files[0].Parts = MinManifestPartSize, []string{m.Files[0].Digest}
		}},
		{"too many parts", func(m *Manifest) {
			m.Files[0].PartSize, m.Files[0].Parts = MinManifestPartSize, []string{m.Files[0].Digest, m.Files[0].Digest}
		}},
		{"bad part digest", func(m *Manifest) {
			m.Files[0].PartSize, m.Files[0].Parts = MinManifestPartSize, []string{"sha256:00"}
		}},
		{"parts without a whole digest", func(m *Manifest) {
			m.Files[0].PartSize, m.Files[0].Parts = MinManifestPartSize, []string{m.Files[0].Digest}
			m.Files[0].Digest = ""
		}},
		{"unknown kind", func(m *Manifest) { m.Kind = "vae" }},
		{"two-file lora", func(m *Manifest) {
			m.Kind = KindLoRA
			m.Files = append(m.Files, File{Name: "b", URL: "s3://models/b", Size: 1})
		}},
		{"duplicate role", func(m *Manifest) {
			m.Files[0].Role = "vae"
			m.Files = append(m.Files, File{Name: "b", URL: "s3://models/b", Size: 1, Role: "vae"})
		}},
	}
	data, _ := json.Marshal(good)
	if _, err := ParseManifest(data); err != nil {
		t.Fatalf("good manifest rejected: %v", err)
	}
	withParts := good
	withParts.Files = []File{good.Files[0]}
	withParts.Files[0].Size = 2*MinManifestPartSize + 1
	withParts.Files[0].PartSize = MinManifestPartSize
	withParts.Files[0].Parts = []string{good.Files[0].Digest, good.Files[0].Digest, good.Files[0].Digest}
	data, _ = json.Marshal(withParts)
	if m, err := ParseManifest(data); err != nil || !m.Files[0].HasParts() {
		t.Fatalf("manifest with part digests: %+v, %v", m, err)
	}
	split := good
	split.Engine = "sdcpp"
	split.Files = []File{
		{Name: "flux.gguf", Role: "diffusion_model", URL: "s3://models/flux.gguf", Size: 1},
		{Name: "ae.safetensors", Role: "vae", URL: "s3://models/ae.safetensors", Size: 1},
	}
	data, _ = json.Marshal(split)
	if m, err := ParseManifest(data); err != nil || m.EngineName() != "sdcpp" || m.Files[1].Role != "vae" {
		t.Fatalf("split manifest: %+v, %v", m, err)
	}
	lora := good
	lora.Kind = KindLoRA
	data, _ = json.Marshal(lora)
	if m, err := ParseManifest(data); err != nil || m.KindName() != KindLoRA || good.KindName() != KindModel {
		t.Fatalf("lora manifest: %+v, %v", m, err)
	}
	if good.EngineName() != EngineBuiltin {
		t.Errorf("engine of a manifest without one = %q, want %q", good.EngineName(), EngineBuiltin)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good
			m.Files = append([]File(nil), good.Files...)
			tt.mutate(&m)
			data, _ := json.Marshal(m)
			if _, err := ParseManifest(data); !errors.Is(err, ErrBadManifest) {
				t.Errorf("ParseManifest(%s) = %v, want an error wrapping ErrBadManifest", data, err)
			}
		})
	}
	if _, err := ParseManifest([]byte(`{"schema":`)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("ParseManifest of broken JSON = %v, want ErrBadManifest", err)
	}
}

// Resolve tells an unusable manifest (ErrBadManifest: a retry or another
// worker cannot help) from an unknown model, a malformed name and a
// failing store.
func TestResolveBadManifest(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ name, body, want string }{
		{"passwd", `{"schema":1,"name":"passwd","files":[{"name":"p","url":"file:///etc/passwd","size":1}]}`, `"file:///etc/passwd" is not an s3:// URL`},
		{"garbled", `{"schema":1,`, "decode manifest"},
		{"other", `{"schema":1,"name":"someone-else","files":[{"name":"p","url":"s3://models/p","size":1}]}`, `names model "someone-else"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.putObject(t, "manifests/"+tc.name+".json", []byte(tc.body))
			_, err := e.reg.Resolve(t.Context(), tc.name)
			if !errors.Is(err, ErrBadManifest) || errors.Is(err, ErrModelNotFound) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Resolve = %v; want ErrBadManifest saying %q", err, tc.want)
			}
		})
	}
}

func TestPushModelSplit(t *testing.T) {
	e := newEnv(t)
	e.reg.PartSize = 0 // the default: 16 MiB part digests
	dir := t.TempDir()
	contents := map[string][]byte{}
	var files []PushFile
	for i, f := range []struct{ name, role string }{
		{"flux.gguf", "diffusion_model"}, {"ae.safetensors", "vae"}, {"t5.safetensors", "t5xxl"},
	} {
		data := randomBytes(1000*(i+1)+7, uint64(10+i))
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		contents[p] = data
		files = append(files, PushFile{Path: p, Role: f.role, Dest: s3x.URL{Bucket: "models", Key: "flux/"}})
	}
	// A Dest naming an object is used as is.
	files[2].Dest = s3x.URL{Bucket: "models", Key: "shared/t5xxl-fp16.safetensors"}
	last := map[string]int64{}
	m, err := e.reg.PushModel(t.Context(), "flux", "sdcpp", files, func(file string, done, total int64) {
		if total != int64(len(contents[file])) {
			t.Errorf("progress of %s: total %d, want %d", file, total, len(contents[file]))
		}
		last[file] = done
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, data := range contents {
		if last[p] != int64(len(data)) {
			t.Errorf("last progress of %s = %d, want %d", p, last[p], len(data))
		}
	}
	want := []File{
		{Name: "flux.gguf", Role: "diffusion_model", URL: "s3://models/flux/flux.gguf", Size: 1007, Digest: "sha256:" + sha256Hex(contents[files[0].Path])},
		{Name: "ae.safetensors", Role: "vae", URL: "s3://models/flux/ae.safetensors", Size: 2007, Digest: "sha256:" + sha256Hex(contents[files[1].Path])},
		{Name: "t5.safetensors", Role: "t5xxl", URL: "s3://models/shared/t5xxl-fp16.safetensors", Size: 3007, Digest: "sha256:" + sha256Hex(contents[files[2].Path])},
	}
	for i := range want { // each file is one part
		want[i].PartSize, want[i].Parts = DefaultManifestPartSize, []string{want[i].Digest}
	}
	if !reflect.DeepEqual(m.Files, want) {
		t.Fatalf("files = %+v\nwant %+v", m.Files, want)
	}
	if m.Engine != "sdcpp" || m.EngineName() != "sdcpp" || m.Format != "mixed" || m.Name != "flux" {
		t.Errorf("manifest = %+v", m)
	}
	got, err := e.reg.Resolve(t.Context(), "flux")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("Resolve = %+v\nwant %+v", got, m)
	}
	for i, f := range got.Files {
		u, _ := s3x.ParseURL(f.URL)
		body, err := e.src.Get(t.Context(), u.Bucket, u.Key, "")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(body)
		body.Close()
		if !bytes.Equal(b, contents[files[i].Path]) {
			t.Errorf("object %s differs from %s", f.URL, files[i].Path)
		}
	}
}

func TestPushModelFormat(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		names  []string
		format string
	}{
		{[]string{"a.gguf", "b.GGUF"}, "gguf"},
		{[]string{"a.safetensors", "b.safetensors"}, "safetensors"},
		{[]string{"a.ckpt"}, "ckpt"},
		{[]string{"a.ckpt", "b.safetensors"}, "mixed"},
		{[]string{"a.bin", "b.gguf"}, "mixed"},
	} {
		var files []PushFile
		for i, n := range tc.names {
			files = append(files, PushFile{Path: writeFile(t, n, randomBytes(100, uint64(i))), Dest: s3x.URL{Bucket: "models", Key: "fmt/" + tc.format + "/"}})
		}
		m, err := e.reg.PushModel(t.Context(), "fmt-"+tc.format, "", files, nil)
		if err != nil {
			t.Fatalf("%v: %v", tc.names, err)
		}
		if m.Format != tc.format {
			t.Errorf("%v: format %q, want %q", tc.names, m.Format, tc.format)
		}
	}
}

// A push that cannot succeed is refused before anything is uploaded.
func TestPushModelChecksBeforeUpload(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "flux.gguf")
	other := filepath.Join(dir, "ae.safetensors")
	empty := filepath.Join(dir, "empty.safetensors")
	for p, data := range map[string][]byte{good: randomBytes(500, 1), other: randomBytes(300, 2), empty: nil} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dest := s3x.URL{Bucket: "models", Key: "flux/"}
	tests := []struct {
		name, engine string
		files        []PushFile
		want         string
	}{
		{"duplicate role", "sdcpp", []PushFile{{good, "vae", dest}, {other, "vae", dest}}, `both have role "vae"`},
		{"bad role", "sdcpp", []PushFile{{good, "diffusion_model", dest}, {other, "--vae", dest}}, `role "--vae"`},
		{"bad engine", "Sd CPP", []PushFile{{good, "model", dest}}, `engine "Sd CPP"`},
		{"missing second file", "sdcpp", []PushFile{{good, "diffusion_model", dest}, {filepath.Join(dir, "nope.safetensors"), "vae", dest}}, "nope.safetensors"},
		{"empty second file", "sdcpp", []PushFile{{good, "diffusion_model", dest}, {empty, "vae", dest}}, "is empty"},
		{"directory", "sdcpp", []PushFile{{good, "diffusion_model", dest}, {dir, "vae", dest}}, "not a regular file"},
		{"same destination", "sdcpp", []PushFile{{good, "diffusion_model", dest}, {other, "vae", s3x.URL{Bucket: "models", Key: "flux/flux.gguf"}}}, "would both be uploaded"},
		{"prefix without bucket", "", []PushFile{{good, "", s3x.URL{Key: "x/"}}}, "invalid destination"},
		{"no files", "sdcpp", nil, "no files"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.reg.PushModel(t.Context(), "flux", tc.engine, tc.files, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			keys, err := e.src.List(t.Context(), "models", "")
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 0 {
				t.Errorf("refused push left objects: %v", keys)
			}
		})
	}
}

// A push that fails after uploading some files keeps the previous manifest.
func TestPushModelFailureKeepsManifest(t *testing.T) {
	e := newEnv(t)
	old, _ := e.push(t, "flux", 400)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "flux.gguf"), filepath.Join(dir, "ae.safetensors")
	for p, data := range map[string][]byte{a: randomBytes(500, 1), b: randomBytes(300, 2)} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.reg.Src = &failingPut{Source: e.src, failKey: "flux/ae.safetensors"}
	dest := s3x.URL{Bucket: "models", Key: "flux/"}
	_, err := e.reg.PushModel(t.Context(), "flux", "sdcpp", []PushFile{{a, "diffusion_model", dest}, {b, "vae", dest}}, nil)
	if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), b) {
		t.Fatalf("PushModel: err = %v, want the injected fault naming %s", err, b)
	}
	e.reg.Src = e.src
	if _, err := e.src.Head(t.Context(), "models", "flux/flux.gguf"); err != nil {
		t.Errorf("first file was not uploaded: %v", err)
	}
	got, err := e.reg.Resolve(t.Context(), "flux")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, old) {
		t.Errorf("manifest after failed push = %+v, want the old one %+v", got, old)
	}

	// Without a previous manifest, none appears.
	e.reg.Src = &failingPut{Source: e.src, failKey: "flux/ae.safetensors"}
	if _, err := e.reg.PushModel(t.Context(), "flux2", "sdcpp", []PushFile{{a, "diffusion_model", dest}, {b, "vae", dest}}, nil); !errors.Is(err, errInjected) {
		t.Fatalf("PushModel: err = %v, want the injected fault", err)
	}
	e.reg.Src = e.src
	if _, err := e.reg.Resolve(t.Context(), "flux2"); !errors.Is(err, ErrModelNotFound) {
		t.Errorf("Resolve after failed push: err = %v, want ErrModelNotFound", err)
	}
}

// PartHasher computes the whole-file digest and one digest per part in one
// pass, however the writes are cut; PartSizeFor keeps a file under 4096
// parts.
func TestPartHasher(t *testing.T) {
	data := randomBytes(3*MinManifestPartSize+100, 9)
	var want []string
	for off := 0; off < len(data); off += MinManifestPartSize {
		want = append(want, "sha256:"+sha256Hex(data[off:min(off+MinManifestPartSize, len(data))]))
	}
	for _, chunk := range []int{1, 999, MinManifestPartSize, len(data)} {
		h := NewPartHasher(MinManifestPartSize)
		for off := 0; off < len(data); off += chunk {
			h.Write(data[off:min(off+chunk, len(data))])
		}
		digest, ps, parts := h.Sum()
		if digest != "sha256:"+sha256Hex(data) || ps != MinManifestPartSize || !reflect.DeepEqual(parts, want) {
			t.Errorf("writes of %d: digest %s, part size %d, parts %v; want %v", chunk, digest, ps, parts, want)
		}
	}
	h := NewPartHasher(0)
	h.Write(data)
	if digest, ps, parts := h.Sum(); digest != "sha256:"+sha256Hex(data) || ps != 0 || parts != nil {
		t.Errorf("without parts: %s %d %v", digest, ps, parts)
	}
	for _, tc := range []struct{ size, want int64 }{
		{1, 16 << 20}, {64 << 30, 16 << 20}, {64<<30 + 1, 32 << 20}, {130e9, 32 << 20}, {1 << 40, 256 << 20},
	} {
		if got := PartSizeFor(tc.size); got != tc.want || PartCount(tc.size, got) > 4096 {
			t.Errorf("PartSizeFor(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}

// Push records part digests of Registry.PartSize bytes (none when it is
// negative), and a cache fetches and verifies the model either way.
func TestPushPartSize(t *testing.T) {
	e := newEnv(t)
	data := randomBytes(300<<10+5, 12)
	p := writeFile(t, "parts.safetensors", data)
	for _, tc := range []struct {
		partSize  int64
		wantParts int
	}{{MinManifestPartSize, 5}, {-1, 0}} {
		e.reg.PartSize = tc.partSize
		m, err := e.reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "weights/"}, "parts", nil)
		if err != nil {
			t.Fatal(err)
		}
		f := m.Files[0]
		if len(f.Parts) != tc.wantParts || (tc.wantParts > 0) != f.HasParts() {
			t.Fatalf("part size %d: manifest file %+v", tc.partSize, f)
		}
		for i, d := range f.Parts {
			off := i * MinManifestPartSize
			if d != "sha256:"+sha256Hex(data[off:min(off+MinManifestPartSize, len(data))]) {
				t.Errorf("part %d digest %s is not the part's sha256", i, d)
			}
		}
		got := acquire(t, openCache(t, t.TempDir(), e.src), m)
		if !bytes.Equal(got.Blobs[0].Data, data) {
			t.Fatal("acquired bytes differ")
		}
	}
}
