package modelformat

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"unicode/utf8"
)

// GGUFTensorSpec is one tensor for WriteGGUF.
type GGUFTensorSpec struct {
	Name string
	Type GGMLType
	// Dims are innermost first, as ggml and GGUF list them (the reverse
	// of a safetensors shape). The first must be a multiple of the type's
	// block size.
	Dims []uint64
	// Write writes the tensor's bytes in the type's layout, exactly the
	// size its type and dims call for; writing more or fewer is an error.
	Write func(w io.Writer) error
}

// ggufTensorBytes returns the size of a tensor of type typ and dims.
func ggufTensorBytes(typ GGMLType, dims []uint64) (int64, error) {
	blk, ok := ggmlBlocks[typ]
	if !ok {
		return 0, fmt.Errorf("type %s has no block layout known to this package", typ)
	}
	n := uint64(1)
	for _, d := range dims {
		hi, lo := bits.Mul64(n, d)
		if hi != 0 || lo > 1<<62 {
			return 0, fmt.Errorf("dims %v overflow", dims)
		}
		n = lo
	}
	if len(dims) > 0 && dims[0]%blk[0] != 0 {
		return 0, fmt.Errorf("first dim %d is not a multiple of the %s block size %d", dims[0], typ, blk[0])
	}
	return int64(n / blk[0] * blk[1]), nil
}

// GGUFHeader returns the first bytes of the GGUF file WriteGGUF writes for
// meta and tensors: a version 3 header with the string metadata (keys
// sorted) and the tensor infos, padded with zeros to the 32-byte
// alignment at which the data section starts. It validates the specs as
// WriteGGUF does; Write funcs are not called.
func GGUFHeader(meta map[string]string, tensors []GGUFTensorSpec) ([]byte, error) {
	var b bytes.Buffer
	u32 := func(v uint32) { binary.Write(&b, binary.LittleEndian, v) }
	u64 := func(v uint64) { binary.Write(&b, binary.LittleEndian, v) }
	str := func(s string) { u64(uint64(len(s))); b.WriteString(s) }

	b.WriteString(ggufMagic)
	u32(3)
	u64(uint64(len(tensors)))
	u64(uint64(len(meta)))
	keys := make([]string, 0, len(meta))
	for k, v := range meta {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("gguf: metadata key %q is empty or not valid UTF-8", k)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		str(k)
		u32(ggufString)
		str(meta[k])
	}
	seen := make(map[string]bool, len(tensors))
	var off int64
	for i, t := range tensors {
		switch {
		case t.Name == "" || len(t.Name) >= ggufMaxName || !utf8.ValidString(t.Name):
			return nil, fmt.Errorf("gguf: tensor %d has an empty, overlong or invalid name %q", i, t.Name)
		case seen[t.Name]:
			return nil, fmt.Errorf("gguf: tensor %q appears twice", t.Name)
		case t.Write == nil:
			return nil, fmt.Errorf("gguf: tensor %q has no Write func", t.Name)
		case len(t.Dims) == 0 || len(t.Dims) > 4:
			return nil, fmt.Errorf("gguf: tensor %q has %d dims, want 1 to 4", t.Name, len(t.Dims))
		}
		seen[t.Name] = true
		n, err := ggufTensorBytes(t.Type, t.Dims)
		if err != nil {
			return nil, fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
		}
		str(t.Name)
		u32(uint32(len(t.Dims)))
		for _, d := range t.Dims {
			u64(d)
		}
		u32(uint32(t.Type))
		u64(uint64(off))
		off = alignUp(off+n, ggufDefaultAlignment)
	}
	b.Write(make([]byte, alignUp(int64(b.Len()), ggufDefaultAlignment)-int64(b.Len())))
	return b.Bytes(), nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// WriteGGUF writes a GGUF file (version 3, 32-byte alignment) with the
// given string metadata and tensors to w: the header GGUFHeader returns,
// then each tensor's bytes at the next multiple of 32, in the order
// given, with zeros between. Each Write must produce exactly the tensor's
// size, or WriteGGUF stops with an error wrapping ErrTensorSize. On any
// error w holds a partial file.
func WriteGGUF(w io.Writer, meta map[string]string, tensors []GGUFTensorSpec) error {
	header, err := GGUFHeader(meta, tensors)
	if err != nil {
		return err
	}
	if _, err := w.Write(header); err != nil {
		return fmt.Errorf("gguf: writing header: %w", err)
	}
	var pad [ggufDefaultAlignment]byte
	for _, t := range tensors {
		n, _ := ggufTensorBytes(t.Type, t.Dims) // validated above
		lw := &limitWriter{w: w, left: n}
		if err := t.Write(lw); err != nil {
			return fmt.Errorf("gguf: writing tensor %q: %w", t.Name, err)
		}
		if lw.left != 0 {
			return fmt.Errorf("gguf: tensor %q: wrote %d bytes, want %d: %w", t.Name, n-lw.left, n, ErrTensorSize)
		}
		if p := alignUp(n, ggufDefaultAlignment) - n; p > 0 {
			if _, err := w.Write(pad[:p]); err != nil {
				return fmt.Errorf("gguf: writing padding after %q: %w", t.Name, err)
			}
		}
	}
	return nil
}
