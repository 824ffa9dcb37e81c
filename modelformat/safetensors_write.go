package modelformat

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf8"
)

// TensorSpec is one tensor for WriteSafetensors.
type TensorSpec struct {
	Name  string
	DType string
	// Shape may be empty for a scalar.
	Shape []int64
	// Write writes the tensor's bytes, exactly the dtype size times the
	// element count, in little-endian order. Writing more or fewer is an
	// error.
	Write func(w io.Writer) error
}

// ErrTensorSize means a TensorSpec.Write wrote more or fewer bytes than its
// dtype and shape call for.
var ErrTensorSize = errors.New("tensor wrote the wrong number of bytes")

// headerEntry is a tensor as it appears in the JSON header. Field order is
// fixed, and encoding/json sorts map keys, so headers are deterministic.
type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// SafetensorsHeader returns the first bytes of the safetensors file
// WriteSafetensors writes for meta and tensors: the 8-byte length and the
// JSON header padded with spaces so its length is a multiple of 8. Tensors
// follow it in the order given, back to back. It validates the specs as
// WriteSafetensors does; Write funcs are not called.
func SafetensorsHeader(meta map[string]string, tensors []TensorSpec) ([]byte, error) {
	entries := make(map[string]any, len(tensors)+1)
	for k, v := range meta {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("safetensors: metadata %q is not valid UTF-8", k)
		}
	}
	if len(meta) > 0 {
		entries[metadataKey] = meta
	}
	var off int64
	for i, t := range tensors {
		switch {
		case t.Name == "":
			return nil, fmt.Errorf("safetensors: tensor %d has an empty name", i)
		case t.Name == metadataKey:
			return nil, fmt.Errorf("safetensors: tensor %d is named %q, which is reserved", i, metadataKey)
		case !utf8.ValidString(t.Name):
			return nil, fmt.Errorf("safetensors: tensor name %q is not valid UTF-8", t.Name)
		case t.Write == nil:
			return nil, fmt.Errorf("safetensors: tensor %q has no Write func", t.Name)
		}
		if _, dup := entries[t.Name]; dup {
			return nil, fmt.Errorf("safetensors: tensor %q appears twice", t.Name)
		}
		n, err := tensorBytes(t.DType, t.Shape)
		if err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: %w", t.Name, err)
		}
		if off > math.MaxInt64-n {
			return nil, fmt.Errorf("safetensors: tensor %q: total data size overflows int64", t.Name)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		entries[t.Name] = headerEntry{DType: t.DType, Shape: shape, DataOffsets: [2]int64{off, off + n}}
		off += n
	}
	var buf bytes.Buffer
	buf.Write(make([]byte, 8))
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(entries); err != nil {
		return nil, fmt.Errorf("safetensors: encoding header: %w", err)
	}
	buf.Truncate(buf.Len() - 1) // Encode's newline
	for buf.Len()%8 != 0 {
		buf.WriteByte(' ')
	}
	out := buf.Bytes()
	if n := len(out) - 8; n > MaxSafetensorsHeader {
		return nil, fmt.Errorf("safetensors: header is %d bytes, over the %d-byte limit", n, MaxSafetensorsHeader)
	}
	binary.LittleEndian.PutUint64(out, uint64(len(out)-8))
	return out, nil
}

// WriteSafetensors writes a safetensors file with the given metadata and
// tensors to w. The header's keys are sorted and it is padded with spaces
// so that the data starts at a multiple of 8; tensor data follows in the
// order given, back to back, so a tensor is aligned to its element size
// when every tensor before it has a size that is a multiple of that. The
// output is a deterministic function of the arguments and the bytes the
// Write funcs produce.
//
// Each Write must produce exactly the tensor's size; otherwise
// WriteSafetensors stops with an error wrapping ErrTensorSize, and bytes
// past the tensor's size never reach w. On any error w holds a partial
// file. WriteSafetensors makes many small writes for the header; give it a
// buffered writer.
func WriteSafetensors(w io.Writer, meta map[string]string, tensors []TensorSpec) error {
	header, err := SafetensorsHeader(meta, tensors)
	if err != nil {
		return err
	}
	if _, err := w.Write(header); err != nil {
		return fmt.Errorf("safetensors: writing header: %w", err)
	}
	for _, t := range tensors {
		n, _ := tensorBytes(t.DType, t.Shape) // validated above
		lw := &limitWriter{w: w, left: n}
		if err := t.Write(lw); err != nil {
			return fmt.Errorf("safetensors: writing tensor %q: %w", t.Name, err)
		}
		if lw.left != 0 {
			return fmt.Errorf("safetensors: tensor %q: wrote %d bytes, want %d: %w", t.Name, n-lw.left, n, ErrTensorSize)
		}
	}
	return nil
}

// limitWriter passes at most left bytes to w and fails a write that would
// exceed them, without passing any of it on.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, fmt.Errorf("write of %d bytes with %d left in the tensor: %w", len(p), l.left, ErrTensorSize)
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}
