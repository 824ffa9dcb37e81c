package sd1

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/genfleet/genfleet/modelformat"
)

// Options say what checkpoint to write.
type Options struct {
	// Seed picks the weights; the same seed (and type and layout) gives
	// the same bytes.
	Seed uint64
	// DType is the type of the weight matrices; empty means F16.
	DType DType
}

func (o Options) dtype() DType {
	if o.DType == "" {
		return F16
	}
	return o.DType
}

// File is one file of a checkpoint: the role genfleet gives it (the
// engine flag that passes it), a base name, and its tensors.
type File struct {
	// Role is "model", "diffusion_model" or "vae" (see Layout).
	Role string
	// Name is the file's base name without extension, e.g. "sd1-unet".
	Name string
	// Strip is the prefix the file leaves off its tensors' names, which
	// the engine puts back for the file's role.
	Strip string
	// Tensors have their single-file names; a tensor's values depend on
	// that name and the seed only, so a split file holds the same bytes
	// as the single file for each tensor.
	Tensors []Tensor
}

// TensorName returns the name t has in f.
func (f File) TensorName(t Tensor) string { return strings.TrimPrefix(t.Name, f.Strip) }

// Split layout. stable-diffusion.cpp tells an SD 1.x model from its text
// encoder's token table, which it only recognises in the file given as
// --model (a text encoder given as --clip_l is loaded under names the
// version check does not look at, and the engine stops with "get sd
// version from file failed"). So the split form is the UNet as
// --diffusion-model (names without model.diffusion_model., which the
// engine puts back), the text encoder as --model (original names), and
// the VAE as --vae (names without first_stage_model., which the engine
// puts back).
const (
	unetPrefix = "model.diffusion_model."
	vaePrefix  = "first_stage_model."
)

// Layout returns the files of the checkpoint: one file with role "model"
// holding every tensor, or with split the UNet (role "diffusion_model"),
// the text encoder (role "model") and the VAE (role "vae").
func Layout(split bool) []File {
	all := Tensors()
	if !split {
		return []File{{Role: "model", Name: "sd1", Tensors: all}}
	}
	parts := []struct {
		part              Part
		role, name, strip string
	}{
		{PartUNet, "diffusion_model", "sd1-unet", unetPrefix},
		{PartTextEncoder, "model", "sd1-text-encoder", ""},
		{PartVAE, "vae", "sd1-vae", vaePrefix},
	}
	var files []File
	for _, p := range parts {
		f := File{Role: p.role, Name: p.name, Strip: p.strip}
		for _, t := range all {
			if t.Part == p.part {
				f.Tensors = append(f.Tensors, t)
			}
		}
		files = append(files, f)
	}
	return files
}

// Size returns the size in bytes of f written with o.
func (f File) Size(o Options) (int64, error) {
	h, err := f.header(o)
	if err != nil {
		return 0, err
	}
	n := int64(len(h))
	for _, t := range f.Tensors {
		b := storageBytes(t.DType(o.dtype()), t.NumElements())
		if o.dtype() != F16 {
			b = (b + 31) / 32 * 32 // GGUF aligns each tensor
		}
		n += b
	}
	return n, nil
}

// header returns the file's header bytes: safetensors for F16, GGUF for
// the quantized types.
func (f File) header(o Options) ([]byte, error) {
	if o.dtype() == F16 {
		return modelformat.SafetensorsHeader(metadata(o), f.safetensorsSpecs(o))
	}
	return modelformat.GGUFHeader(metadata(o), f.ggufSpecs(o))
}

// metadata is written into every file, so that a file says what it is.
func metadata(o Options) map[string]string {
	return map[string]string{
		"genfleet.generator": "sd1 random weights",
		"genfleet.seed":      fmt.Sprint(o.Seed),
		"genfleet.dtype":     string(o.dtype()),
	}
}

// Write writes f with o to w. progress, if not nil, is called with the
// number of bytes written so far, about every 2 MiB.
func (f File) Write(w io.Writer, o Options, progress func(done int64)) error {
	if _, err := ParseDType(string(o.dtype())); err != nil {
		return err
	}
	cw := &countingWriter{w: w, progress: progress}
	if o.dtype() == F16 {
		return modelformat.WriteSafetensors(cw, metadata(o), f.safetensorsSpecs(o))
	}
	return modelformat.WriteGGUF(cw, metadata(o), f.ggufSpecs(o))
}

func (f File) safetensorsSpecs(o Options) []modelformat.TensorSpec {
	buf := make([]byte, chunkBytes)
	specs := make([]modelformat.TensorSpec, len(f.Tensors))
	for i, t := range f.Tensors {
		st := t.DType(o.dtype())
		specs[i] = modelformat.TensorSpec{
			Name: f.TensorName(t), DType: st, Shape: t.Shape,
			Write: func(w io.Writer) error { return t.writeData(w, st, o.Seed, buf) },
		}
	}
	return specs
}

// ggmlTypes maps storage types to GGUF's type numbers.
var ggmlTypes = map[string]modelformat.GGMLType{StorageF32: 0, StorageF16: 1, StorageQ4_0: 2, StorageQ8_0: 8}

func (f File) ggufSpecs(o Options) []modelformat.GGUFTensorSpec {
	buf := make([]byte, chunkBytes)
	specs := make([]modelformat.GGUFTensorSpec, len(f.Tensors))
	for i, t := range f.Tensors {
		st := t.DType(o.dtype())
		dims := make([]uint64, len(t.Shape))
		for j, d := range t.Shape {
			dims[len(dims)-1-j] = uint64(d)
		}
		specs[i] = modelformat.GGUFTensorSpec{
			Name: f.TensorName(t), Type: ggmlTypes[st], Dims: dims,
			Write: func(w io.Writer) error { return t.writeData(w, st, o.Seed, buf) },
		}
	}
	return specs
}

// countingWriter counts what passes and reports it.
type countingWriter struct {
	w        io.Writer
	n        int64
	progress func(int64)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if c.progress != nil && len(p) >= 4096 {
		c.progress(c.n)
	}
	return n, err
}

// WriteFile writes f with o to path (mode 0644) through a temporary file
// in the same directory, synced and renamed into place, so an interrupted
// write never leaves a partial model under path.
func (f File) WriteFile(path string, o Options, progress func(done int64)) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 4<<20)
	err = f.Write(bw, o, progress)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sd1: writing %s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}

// Names returns the tensor names of f, sorted.
func (f File) Names() []string {
	names := make([]string, len(f.Tensors))
	for i, t := range f.Tensors {
		names[i] = f.TensorName(t)
	}
	slices.Sort(names)
	return names
}
