package main

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
)

// tinyGGUF is a valid GGUF v3 file with no tensors and no metadata: the
// magic, the version, two zero counts, padded to the 32-byte alignment
// where the (empty) data section starts.
func tinyGGUF() []byte {
	b := []byte("GGUF\x03\x00\x00\x00")
	b = append(b, make([]byte, 16)...) // tensor count, metadata count
	return append(b, make([]byte, 8)...)
}

// tinySafetensors is a valid safetensors file with one tensor of n F32s.
func tinySafetensors(t *testing.T, n int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	err := modelformat.WriteSafetensors(&buf, nil, []modelformat.TensorSpec{{
		Name: "w", DType: "F32", Shape: []int64{n},
		Write: func(w io.Writer) error { _, err := w.Write(make([]byte, 4*n)); return err },
	}})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tinyCkpt is a zip file, as PyTorch writes checkpoints.
func tinyCkpt(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create("archive/data.pkl")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("\x80\x02}q\x00."))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sha256Of(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// partDigestsOf is the part size and part digests a push records for b.
func partDigestsOf(b []byte) (int64, []string) {
	h := modelcache.NewPartHasher(modelcache.PartSizeFor(int64(len(b))))
	h.Write(b)
	_, ps, parts := h.Sum()
	return ps, parts
}

// pushEnv is an S3 server with a bucket for models and the flags that
// point the CLI at it.
type pushEnv struct {
	s     *testenv.S3
	reg   *modelcache.Registry
	flags []string
}

func newPushEnv(t *testing.T) *pushEnv {
	t.Helper()
	s := testenv.S3Server(t, "pushmodels")
	return &pushEnv{
		s:   s,
		reg: &modelcache.Registry{Src: modelcache.NewS3Source(s.Client), Root: s3x.URL{Bucket: "pushmodels"}},
		flags: []string{"--registry", "s3://pushmodels/", "--s3-endpoint", s.Endpoint,
			"--s3-access-key", s.Config.AccessKey, "--s3-secret-key", s.Config.SecretKey},
	}
}

func (e *pushEnv) run(args ...string) (int, string, string) {
	return runCLI(append(args, e.flags...)...)
}

func (e *pushEnv) keys(t *testing.T) []string {
	t.Helper()
	keys, err := e.reg.Src.List(t.Context(), "pushmodels", "")
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestModelsPushSplit(t *testing.T) {
	e := newPushEnv(t)
	dir := t.TempDir()
	parts := []struct {
		role, name string
		data       []byte
	}{
		{"diffusion_model", "flux1-dev-q4_0.gguf", tinyGGUF()},
		{"vae", "ae.safetensors", tinySafetensors(t, 8)},
		{"clip_l", "clip_l.safetensors", tinySafetensors(t, 16)},
		{"t5xxl", "t5xxl_fp16.safetensors", tinySafetensors(t, 32)},
	}
	args := []string{"models", "push", "--name", "flux", "--engine", "sdcpp"}
	for _, p := range parts {
		args = append(args, "--file", p.role+"="+writeTestFile(t, dir, p.name, p.data))
	}
	// A prefix without its trailing slash is still a prefix.
	args = append(args, "s3://pushmodels/blobs/flux")
	code, out, stderr := e.run(args...)
	if code != 0 {
		t.Fatalf("models push: %d\n%s\n%s", code, out, stderr)
	}
	m, err := e.reg.Resolve(t.Context(), "flux")
	if err != nil {
		t.Fatal(err)
	}
	if m.Engine != "sdcpp" || m.Format != "mixed" || len(m.Files) != len(parts) {
		t.Fatalf("manifest = %+v", m)
	}
	for i, p := range parts {
		want := modelcache.File{Name: p.name, Role: p.role, URL: "s3://pushmodels/blobs/flux/" + p.name,
			Size: int64(len(p.data)), Digest: sha256Of(p.data)}
		want.PartSize, want.Parts = partDigestsOf(p.data)
		if !reflect.DeepEqual(m.Files[i], want) {
			t.Errorf("file %d = %+v, want %+v", i, m.Files[i], want)
		}
		line := "pushed " + want.URL + " (" + p.role + ", " + want.Digest + ", "
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q:\n%s", line, out)
		}
		if !strings.Contains(stderr, `"what":"push flux `+p.name+`"`) {
			t.Errorf("no progress for %s:\n%s", p.name, stderr)
		}
	}
	if !strings.Contains(out, `registered "flux" (engine sdcpp, 4 file(s))`) {
		t.Errorf("output does not name the model:\n%s", out)
	}

	code, out, stderr = e.run("models", "ls")
	if code != 0 {
		t.Fatalf("models ls: %d\n%s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !reflect.DeepEqual(strings.Fields(lines[0]), []string{"NAME", "ENGINE", "KIND", "FORMAT", "FILES", "BYTES", "DIGEST"}) ||
		!reflect.DeepEqual(strings.Fields(lines[1])[:5], []string{"flux", "sdcpp", "model", "mixed", "4"}) {
		t.Errorf("models ls:\n%s", out)
	}
}

func TestModelsPushSingleFileEngine(t *testing.T) {
	e := newPushEnv(t)
	dir := t.TempDir()
	gguf := writeTestFile(t, dir, "SD-Turbo.gguf", tinyGGUF())
	code, out, stderr := e.run("models", "push", gguf, "s3://pushmodels/w/", "--engine", "sdcpp")
	if code != 0 {
		t.Fatalf("models push: %d\n%s\n%s", code, out, stderr)
	}
	m, err := e.reg.Resolve(t.Context(), "sd-turbo")
	if err != nil {
		t.Fatal(err)
	}
	want := modelcache.File{Name: "SD-Turbo.gguf", Role: "model", URL: "s3://pushmodels/w/SD-Turbo.gguf", Size: 32, Digest: sha256Of(tinyGGUF())}
	want.PartSize, want.Parts = partDigestsOf(tinyGGUF())
	if m.Engine != "sdcpp" || m.Format != "gguf" || len(m.Files) != 1 || !reflect.DeepEqual(m.Files[0], want) {
		t.Errorf("manifest = %+v, want engine sdcpp, format gguf, files [%+v]", m, want)
	}

	ckpt := writeTestFile(t, dir, "v1-5.ckpt", tinyCkpt(t))
	if code, out, stderr := e.run("models", "push", "--engine", "sdcpp", "--name", "sd15", ckpt, "s3://pushmodels/w/sd15.ckpt"); code != 0 {
		t.Fatalf("models push ckpt: %d\n%s\n%s", code, out, stderr)
	}
	if m, err := e.reg.Resolve(t.Context(), "sd15"); err != nil || m.Format != "ckpt" || m.Files[0].Role != "model" || m.Files[0].URL != "s3://pushmodels/w/sd15.ckpt" {
		t.Errorf("ckpt manifest = %+v, %v", m, err)
	}

	// Without --engine the model is the built-in engine's, as before.
	st := writeTestFile(t, dir, "ref.safetensors", tinySafetensors(t, 4))
	if code, out, stderr := e.run("models", "push", st, "s3://pushmodels/w/"); code != 0 {
		t.Fatalf("models push: %d\n%s\n%s", code, out, stderr)
	}
	if m, err := e.reg.Resolve(t.Context(), "ref"); err != nil || m.Engine != "" || m.Files[0].Role != "" {
		t.Errorf("built-in manifest = %+v, %v", m, err)
	}
	code, out, _ = e.run("models", "ls")
	if code != 0 || !hasRow(out, "ref", "refgen") || !hasRow(out, "sd-turbo", "sdcpp") {
		t.Errorf("models ls:\n%s", out)
	}
}

// hasRow reports whether out has a line whose first two fields are a, b.
func hasRow(out, a, b string) bool {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == a && f[1] == b {
			return true
		}
	}
	return false
}

// Files an engine cannot load are refused before anything is uploaded.
func TestModelsPushRejectsNonModelFiles(t *testing.T) {
	e := newPushEnv(t)
	dir := t.TempDir()
	text := writeTestFile(t, dir, "notes.safetensors", []byte("just some notes, not a model\n"))
	zipped := writeTestFile(t, dir, "bundle.zip", tinyCkpt(t))
	gguf := writeTestFile(t, dir, "flux.gguf", tinyGGUF())
	vae := writeTestFile(t, dir, "ae.safetensors", tinySafetensors(t, 4))
	badGGUF := writeTestFile(t, dir, "bad.gguf", []byte("GGUF\x09\x00\x00\x00rest"))
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"text for sdcpp", []string{text, "s3://pushmodels/w/", "--engine", "sdcpp"},
			[]string{text, "engine sdcpp takes safetensors, GGUF or a PyTorch .ckpt"}},
		{"zip not named ckpt", []string{zipped, "s3://pushmodels/w/", "--engine", "sdcpp"},
			[]string{zipped, "not named *.ckpt"}},
		{"malformed gguf", []string{badGGUF, "s3://pushmodels/w/", "--engine", "sdcpp"},
			[]string{badGGUF, "unsupported version"}},
		{"gguf for the built-in engine", []string{gguf, "s3://pushmodels/w/"},
			[]string{gguf, "engine refgen takes safetensors"}},
		{"bad second file", []string{"--name", "flux", "--engine", "sdcpp", "--file", "diffusion_model=" + gguf, "--file", "vae=" + text, "s3://pushmodels/w/"},
			[]string{text}},
		{"missing second file", []string{"--name", "flux", "--engine", "sdcpp", "--file", "diffusion_model=" + gguf, "--file", "vae=" + filepath.Join(dir, "nope.safetensors"), "s3://pushmodels/w/"},
			[]string{"nope.safetensors"}},
		{"bad engine name", []string{"--name", "flux", "--engine", "SD CPP", "--file", "model=" + vae, "s3://pushmodels/w/"},
			[]string{`engine "SD CPP"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := e.run(append([]string{"models", "push"}, tc.args...)...)
			if code == 0 {
				t.Fatalf("models push succeeded:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			// Nothing was uploaded, and no manifest written.
			if keys := e.keys(t); len(keys) != 0 {
				t.Errorf("refused push left objects: %v", keys)
			}
		})
	}
}

// Command-line mistakes are caught before S3 is contacted.
func TestModelsPushFlags(t *testing.T) {
	dir := t.TempDir()
	gguf := writeTestFile(t, dir, "flux.gguf", tinyGGUF())
	vae := writeTestFile(t, dir, "ae.safetensors", tinySafetensors(t, 4))
	// No S3 listens here: a command that got as far as uploading would fail
	// with a connection error, not the message the test wants.
	noS3 := []string{"--registry", "s3://pushmodels/", "--s3-endpoint", "http://127.0.0.1:1",
		"--s3-access-key", "k", "--s3-secret-key", "s"}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"file without =", []string{"--name", "flux", "--engine", "sdcpp", "--file", gguf, "s3://pushmodels/w/"}, 1, "want ROLE=PATH"},
		{"file with empty role", []string{"--name", "flux", "--engine", "sdcpp", "--file=" + "=" + gguf, "s3://pushmodels/w/"}, 1, "want ROLE=PATH"},
		{"unknown role", []string{"--name", "flux", "--engine", "sdcpp", "--file", "diffusion_model=" + gguf, "--file", "unet=" + vae, "s3://pushmodels/w/"}, 1,
			`engine sdcpp has no role "unet"; roles: clip_g, clip_l, clip_vision, control_net, diffusion_model, high_noise_diffusion_model, llm, llm_vision, model, t5xxl, taesd, upscale_model, vae`},
		{"no main role", []string{"--name", "flux", "--engine", "sdcpp", "--file", "vae=" + vae, "s3://pushmodels/w/"}, 1, "needs a file with role model or diffusion_model"},
		{"duplicate role", []string{"--name", "flux", "--engine", "sdcpp", "--file", "diffusion_model=" + gguf, "--file", "diffusion_model=" + vae, "s3://pushmodels/w/"}, 1, `both have role "diffusion_model"`},
		{"FILE and --file", []string{gguf, "s3://pushmodels/w/", "--name", "flux", "--engine", "sdcpp", "--file", "vae=" + vae}, 2, "not both"},
		{"--file without --name", []string{"--engine", "sdcpp", "--file", "diffusion_model=" + gguf, "s3://pushmodels/w/"}, 2, "--name is required with --file"},
		{"--file without destination", []string{"--name", "flux", "--engine", "sdcpp", "--file", "diffusion_model=" + gguf}, 2, "usage: genfleet models push"},
		{"one argument", []string{gguf}, 2, "usage: genfleet models push"},
		{"split model for the built-in engine", []string{"--name", "flux", "--file", "diffusion_model=" + gguf, "--file", "vae=" + vae, "s3://pushmodels/w/"}, 1, "engine refgen takes one file with role model"},
		{"bad name", []string{"--name", "Flux", "--engine", "sdcpp", "--file", "model=" + gguf, "s3://pushmodels/w/"}, 1, "invalid model name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"models", "push"}, tc.args...), noS3...)
			code, out, stderr := runCLI(args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want %d with %q\nstdout: %s\nstderr: %s", code, tc.code, tc.want, out, stderr)
			}
		})
	}
}
