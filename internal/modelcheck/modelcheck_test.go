package modelcheck

import (
	"archive/zip"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
)

func write(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func zeros(n int) func(io.Writer) error {
	return func(w io.Writer) error { _, err := w.Write(make([]byte, n)); return err }
}

func safetensors(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := modelformat.WriteSafetensors(&b, nil, []modelformat.TensorSpec{{Name: "w", DType: "F32", Shape: []int64{4}, Write: zeros(16)}}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gguf(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := modelformat.WriteGGUF(&b, nil, []modelformat.GGUFTensorSpec{{Name: "w", Type: 0, Dims: []uint64{4}, Write: zeros(16)}}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func zipped(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	w, _ := zw.Create("archive/data.pkl")
	w.Write([]byte("pickle"))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// What each engine takes, read from the file's first bytes.
func TestFile(t *testing.T) {
	st, gg, zp := safetensors(t), gguf(t), zipped(t)
	text := []byte("just some notes, not a model\n")
	tests := []struct {
		name, file, engine string
		data               []byte
		want               string // in the error; "" for none
	}{
		{"safetensors, built-in", "a.safetensors", "", st, ""},
		{"safetensors, sdcpp", "a.safetensors", "sdcpp", st, ""},
		{"gguf, sdcpp", "a.gguf", "sdcpp", gg, ""},
		{"ckpt, sdcpp", "a.ckpt", "sdcpp", zp, ""},
		{"gguf, built-in", "a.gguf", "", gg, "engine refgen takes safetensors"},
		{"text, built-in", "a.safetensors", "", text, "engine refgen takes safetensors"},
		{"text, sdcpp", "a.safetensors", "sdcpp", text, "engine sdcpp takes safetensors, GGUF or a PyTorch .ckpt (zip) file"},
		{"zip not named ckpt", "a.zip", "sdcpp", zp, "not named *.ckpt"},
		{"truncated gguf", "a.gguf", "sdcpp", gg[:12], "a.gguf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := File(write(t, tt.file, tt.data), tt.engine)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
	if err := File(t.TempDir(), ""); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory: %v", err)
	}
}

func TestKindAndRoles(t *testing.T) {
	one := []modelcache.PushFile{{Path: "a"}}
	tests := []struct {
		name, kind, engine string
		files              []modelcache.PushFile
		wantKind, want     string
	}{
		{"model", "", "", one, modelcache.KindModel, ""},
		{"lora", "lora", "", one, modelcache.KindLoRA, ""},
		{"lora of two files", "lora", "", []modelcache.PushFile{{Path: "a"}, {Path: "b"}}, "", "a LoRA is one file, got 2"},
		{"lora with a role", "lora", "sdcpp", []modelcache.PushFile{{Path: "a", Role: "vae"}}, "", "a LoRA's file has no role"},
		{"unknown kind", "vae", "", one, "", `--kind "vae": want model or lora`},
		{"built-in, two files", "", "", []modelcache.PushFile{{Path: "a"}, {Path: "b", Role: "vae"}}, "", "engine refgen takes one file with role model"},
		{"two of a role", "", "sdcpp", []modelcache.PushFile{{Path: "a", Role: "vae"}, {Path: "b", Role: "vae"}}, "", `a and b both have role "vae"`},
		{"sdcpp split", "", "sdcpp", []modelcache.PushFile{{Path: "a", Role: "diffusion_model"}, {Path: "b", Role: "vae"}}, modelcache.KindModel, ""},
		{"sdcpp unknown role", "", "sdcpp", []modelcache.PushFile{{Path: "a", Role: "model"}, {Path: "b", Role: "hat"}}, "", "hat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := Kind(tt.kind, tt.engine, tt.files)
			if err == nil && k == modelcache.KindModel {
				err = Roles(tt.engine, tt.files)
			}
			if tt.want == "" && (err != nil || k != tt.wantKind) || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("kind %q, error %v; want %q, %q", k, err, tt.wantKind, tt.want)
			}
		})
	}
}

// Files checks a push as a whole: a LoRA for the built-in engine must be
// one it can apply, not merely safetensors.
func TestFiles(t *testing.T) {
	var lora, model bytes.Buffer
	if err := refgen.MakeLoRA(&lora, refgen.LoRAOptions{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	if err := refgen.Make(&model, 1<<16, 1); err != nil {
		t.Fatal(err)
	}
	if k, err := Files("lora", "", []modelcache.PushFile{{Path: write(t, "style.safetensors", lora.Bytes())}}); err != nil || k != modelcache.KindLoRA {
		t.Fatalf("a reference LoRA: %q %v", k, err)
	}
	if _, err := Files("lora", "", []modelcache.PushFile{{Path: write(t, "m.safetensors", model.Bytes())}}); err == nil || !strings.Contains(err.Error(), "takes LoRAs made by") {
		t.Fatalf("a model pushed as a LoRA: %v", err)
	}
	if k, err := Files("", "", []modelcache.PushFile{{Path: write(t, "m.safetensors", model.Bytes())}}); err != nil || k != modelcache.KindModel {
		t.Fatalf("a reference model: %q %v", k, err)
	}
	if _, err := Files("", "", []modelcache.PushFile{{Path: filepath.Join(t.TempDir(), "missing.safetensors")}}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v", err)
	}
}

func TestParseFile(t *testing.T) {
	format, h, err := ParseFile(write(t, "a.gguf", gguf(t)))
	if err != nil || format != modelformat.FormatGGUF || h == nil {
		t.Fatalf("gguf: %q %v", format, err)
	}
	p := write(t, "notes.txt", []byte("notes"))
	if _, _, err := ParseFile(p); !errors.Is(err, modelformat.ErrUnknownFormat) || !strings.Contains(err.Error(), p) {
		t.Fatalf("text: %v", err)
	}
}
