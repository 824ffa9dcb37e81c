package modelformat

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func fill(n int, b byte) func(io.Writer) error {
	return func(w io.Writer) error { _, err := w.Write(bytes.Repeat([]byte{b}, n)); return err }
}

func TestWriteGGUFRoundTrip(t *testing.T) {
	specs := []GGUFTensorSpec{
		{Name: "a.bias", Type: 0, Dims: []uint64{3}, Write: fill(12, 1)},                                                                               // 12 bytes: padded to 32
		{Name: "b.weight", Type: 1, Dims: []uint64{3, 3, 2, 4}, Write: fill(144, 2)},                                                                   // f16
		{Name: "c.weight", Type: 8, Dims: []uint64{64, 2}, Write: fill(4*34, 3)},                                                                       // q8_0
		{Name: "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight", Type: 2, Dims: []uint64{32}, Write: fill(18, 4)}, // q4_0, a long name
	}
	meta := map[string]string{"genfleet.seed": "1", "general.name": "test"}
	var buf bytes.Buffer
	if err := WriteGGUF(&buf, meta, specs); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	g, err := ParseGGUFHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if g.Version != 3 || g.Alignment != 32 || g.DataOffset%32 != 0 {
		t.Errorf("version %d, alignment %d, data offset %d", g.Version, g.Alignment, g.DataOffset)
	}
	if len(g.Metadata) != 2 || g.Metadata[0].Key != "general.name" || g.Metadata[1].Value != "1" {
		t.Errorf("metadata %+v, want sorted keys with their values", g.Metadata)
	}
	h, err := GGUFHeader(meta, specs)
	if err != nil || int64(len(h)) != g.DataOffset {
		t.Errorf("GGUFHeader is %d bytes (%v), data starts at %d", len(h), err, g.DataOffset)
	}
	var off uint64
	for i, s := range specs {
		gt := g.Tensors[i]
		if gt.Name != s.Name || gt.Type != s.Type || !reflect.DeepEqual(gt.Dims, s.Dims) || gt.Offset != off {
			t.Errorf("tensor %d = %+v, want %s %s %v at %d", i, gt, s.Name, s.Type, s.Dims, off)
		}
		data := b[g.DataOffset+int64(gt.Offset):][:gt.Size]
		if !bytes.Equal(data, bytes.Repeat([]byte{byte(i + 1)}, int(gt.Size))) {
			t.Errorf("tensor %s data differs", s.Name)
		}
		off += (uint64(gt.Size) + 31) / 32 * 32
	}
	if want := g.DataOffset + int64(off); int64(len(b)) != want {
		t.Errorf("file is %d bytes, want %d", len(b), want)
	}
}

func TestWriteGGUFErrors(t *testing.T) {
	tests := []struct {
		name  string
		specs []GGUFTensorSpec
		want  string
	}{
		{"short write", []GGUFTensorSpec{{Name: "a", Type: 0, Dims: []uint64{4}, Write: fill(12, 0)}}, "wrote 12 bytes, want 16"},
		{"long write", []GGUFTensorSpec{{Name: "a", Type: 0, Dims: []uint64{4}, Write: fill(20, 0)}}, "tensor wrote the wrong number of bytes"},
		{"partial block", []GGUFTensorSpec{{Name: "a", Type: 8, Dims: []uint64{48}, Write: fill(51, 0)}}, "not a multiple of the Q8_0 block size 32"},
		{"unknown type", []GGUFTensorSpec{{Name: "a", Type: 99, Dims: []uint64{4}, Write: fill(4, 0)}}, "type(99) has no block layout"},
		{"duplicate", []GGUFTensorSpec{{Name: "a", Type: 0, Dims: []uint64{1}, Write: fill(4, 0)}, {Name: "a", Type: 0, Dims: []uint64{1}, Write: fill(4, 0)}}, `"a" appears twice`},
		{"no dims", []GGUFTensorSpec{{Name: "a", Type: 0, Write: fill(4, 0)}}, "has 0 dims"},
		{"no name", []GGUFTensorSpec{{Type: 0, Dims: []uint64{1}, Write: fill(4, 0)}}, "tensor 0 has an empty"},
		{"no write", []GGUFTensorSpec{{Name: "a", Type: 0, Dims: []uint64{1}}}, "has no Write func"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteGGUF(io.Discard, nil, tc.specs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(tc.name, "write") && tc.name != "no write" && !errors.Is(err, ErrTensorSize) {
				t.Errorf("error %v does not wrap ErrTensorSize", err)
			}
		})
	}
}
