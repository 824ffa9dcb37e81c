package modelformat

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// checkSafetensorsInvariants asserts what a successful parse promises.
func checkSafetensorsInvariants(t *testing.T, st *Safetensors, size int64) {
	t.Helper()
	if st.DataOffset != 8+st.HeaderLen || st.DataOffset > size || st.FileSize != size {
		t.Fatalf("bad offsets: header %d data %d size %d", st.HeaderLen, st.DataOffset, size)
	}
	var prevEnd int64
	for i, tt := range st.Tensors {
		if tt.Begin < st.DataOffset || tt.End < tt.Begin || tt.End > size {
			t.Fatalf("tensor %q [%d,%d) outside data [%d,%d)", tt.Name, tt.Begin, tt.End, st.DataOffset, size)
		}
		if i > 0 && tt.Begin < prevEnd {
			t.Fatalf("tensor %q overlaps the previous one", tt.Name)
		}
		prevEnd = tt.End
		n, err := tensorBytes(tt.DType, tt.Shape)
		if err != nil || n != tt.Size() {
			t.Fatalf("tensor %q: size %d, dtype/shape give %d, %v", tt.Name, tt.Size(), n, err)
		}
	}
	st.Summary(io.Discard)
}

func FuzzParseSafetensors(f *testing.F) {
	for _, tc := range malformedSafetensors {
		f.Add(tc.file)
	}
	var buf bytes.Buffer
	_ = WriteSafetensors(&buf, map[string]string{"k": "v"}, []TensorSpec{
		bytesSpec("a", "F32", []int64{2, 2}, make([]byte, 16)),
		bytesSpec("b", "F4", []int64{4}, make([]byte, 2)),
		bytesSpec("c", "I64", nil, make([]byte, 8)),
	})
	f.Add(buf.Bytes())
	f.Add(rawSafetensors(`{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}}`, 16))
	f.Fuzz(func(t *testing.T, file []byte) {
		size := int64(len(file))
		st, err := ParseSafetensors(bytes.NewReader(file), size)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if st != nil {
				t.Fatal("non-nil result with an error")
			}
			return
		}
		checkSafetensorsInvariants(t, st, size)
		if format, err := Detect(bytes.NewReader(file), size); err != nil || format != FormatSafetensors {
			t.Fatalf("parsed as safetensors, but Detect = %q, %v", format, err)
		}
		// Writing the parsed tensors back yields a file that parses to the
		// same tensors and metadata.
		specs := make([]TensorSpec, len(st.Tensors))
		for i, tt := range st.Tensors {
			specs[i] = bytesSpec(tt.Name, tt.DType, tt.Shape, file[tt.Begin:tt.End])
		}
		var out bytes.Buffer
		if err := WriteSafetensors(&out, st.Metadata, specs); err != nil {
			if strings.Contains(err.Error(), "not valid UTF-8") || strings.Contains(err.Error(), "over the") || strings.Contains(err.Error(), "empty name") {
				// Parsing accepts what the writer refuses to produce.
				return
			}
			t.Fatalf("rewriting a parsed file: %v", err)
		}
		again, err := ParseSafetensors(bytes.NewReader(out.Bytes()), int64(out.Len()))
		if err != nil {
			t.Fatalf("parsing a rewritten file: %v", err)
		}
		if len(again.Tensors) != len(st.Tensors) || len(again.Metadata) != len(st.Metadata) {
			t.Fatalf("rewritten file has %d tensors and %d metadata keys, want %d and %d",
				len(again.Tensors), len(again.Metadata), len(st.Tensors), len(st.Metadata))
		}
	})
}

func FuzzParseGGUF(f *testing.F) {
	for _, tc := range malformedGGUF() {
		f.Add(tc.file)
	}
	f.Add(validGGUF())
	f.Fuzz(func(t *testing.T, file []byte) {
		size := int64(len(file))
		g, err := ParseGGUFHeader(bytes.NewReader(file), size)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if g.DataOffset > size || g.DataOffset%g.Alignment != 0 {
			t.Fatalf("data offset %d (alignment %d) for a %d-byte file", g.DataOffset, g.Alignment, size)
		}
		for _, tt := range g.Tensors {
			if tt.Offset > uint64(size-g.DataOffset) || (tt.Size >= 0 && tt.Offset+uint64(tt.Size) > uint64(size-g.DataOffset)) {
				t.Fatalf("tensor %q at %d size %d outside the data section", tt.Name, tt.Offset, tt.Size)
			}
		}
		g.Summary(io.Discard)
		if format, err := Detect(bytes.NewReader(file), size); err != nil || format != FormatGGUF {
			t.Fatalf("parsed as GGUF, but Detect = %q, %v", format, err)
		}
	})
}
