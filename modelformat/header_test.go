package modelformat

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// ParseHeader detects and parses either format, and says which it found.
func TestParseHeader(t *testing.T) {
	zeros := func(n int) func(io.Writer) error {
		return func(w io.Writer) error { _, err := w.Write(make([]byte, n)); return err }
	}
	var st, gg bytes.Buffer
	if err := WriteSafetensors(&st, nil, []TensorSpec{{Name: "w", DType: "F32", Shape: []int64{4}, Write: zeros(16)}}); err != nil {
		t.Fatal(err)
	}
	if err := WriteGGUF(&gg, nil, []GGUFTensorSpec{{Name: "w", Type: 0, Dims: []uint64{4}, Write: zeros(16)}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, format string
		data         []byte
		err          error
	}{
		{"safetensors", FormatSafetensors, st.Bytes(), nil},
		{"gguf", FormatGGUF, gg.Bytes(), nil},
		{"text", "", []byte("just some notes, not a model\n"), ErrUnknownFormat},
		{"truncated gguf", "", gg.Bytes()[:12], ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			format, h, err := ParseHeader(bytes.NewReader(tt.data), int64(len(tt.data)))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("error %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || format != tt.format {
				t.Fatalf("format %q, %v; want %q", format, err, tt.format)
			}
			var sum strings.Builder
			h.Summary(&sum)
			if !strings.Contains(sum.String(), "w") {
				t.Fatalf("summary %q names no tensor", sum.String())
			}
		})
	}
}
