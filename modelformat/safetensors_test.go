package modelformat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rawSafetensors builds a file from a literal header and dataLen zero
// bytes of data, with no padding, so tests control every byte.
func rawSafetensors(header string, dataLen int) []byte {
	b := make([]byte, 8, 8+len(header)+dataLen)
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, dataLen)...)
}

func withLen(n uint64, rest []byte) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, n)
	return append(b, rest...)
}

// malformedSafetensors are inputs ParseSafetensors must reject, with a
// fragment the error must contain. The fuzz test seeds from them too.
var malformedSafetensors = []struct {
	name string
	file []byte
	want string
}{
	{"empty file", nil, "file is 0 bytes, shorter than the 8-byte header length"},
	{"seven bytes", []byte{1, 2, 3, 4, 5, 6, 7}, "shorter than the 8-byte header length"},
	{"header length 0", withLen(0, []byte("{}")), "header length is 0"},
	{"header length over limit", withLen(100<<20+1, []byte("{}")), "header length 104857601 exceeds the 104857600-byte limit"},
	{"header length max uint64", withLen(^uint64(0), []byte("{}")), "exceeds the"},
	{"header past file end", withLen(64, []byte("{}")), "header length 64 runs past the end of the 10-byte file"},
	{"header is array", rawSafetensors(`[1,2]`, 0), "header is not a JSON object"},
	{"header starts with space", rawSafetensors(` {}`, 0), "header is not a JSON object"},
	{"header not utf8", rawSafetensors("{\"\xff\":1}", 0), "header is not valid UTF-8"},
	{"header truncated JSON", rawSafetensors(`{"a":`, 0), "header is not valid JSON"},
	{"header key not closed", rawSafetensors(`{"a"}`, 0), "header is not valid JSON"},
	{"trailing garbage", rawSafetensors(`{}x`, 0), "trailing data after the JSON object"},
	{"two objects", rawSafetensors(`{}{}`, 0), "trailing data"},
	{"metadata is string", rawSafetensors(`{"__metadata__":"x"}`, 0), "__metadata__ is not a JSON object of strings"},
	{"metadata is null", rawSafetensors(`{"__metadata__":null}`, 0), "__metadata__ is not a JSON object of strings"},
	{"metadata value number", rawSafetensors(`{"__metadata__":{"a":1}}`, 0), `__metadata__["a"] is not a string (got "1")`},
	{"metadata value null", rawSafetensors(`{"__metadata__":{"a":null}}`, 0), `__metadata__["a"] is not a string`},
	{"metadata twice", rawSafetensors(`{"__metadata__":{},"__metadata__":{}}`, 0), "__metadata__ appears twice"},
	{"tensor entry not object", rawSafetensors(`{"t":5}`, 0), `tensor "t": entry is not a JSON object`},
	{"missing dtype", rawSafetensors(`{"t":{"shape":[1],"data_offsets":[0,4]}}`, 4), `tensor "t": missing dtype`},
	{"dtype wrong case key", rawSafetensors(`{"t":{"DTYPE":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), `tensor "t": missing dtype`},
	{"missing shape", rawSafetensors(`{"t":{"dtype":"F32","data_offsets":[0,4]}}`, 4), `tensor "t": missing shape`},
	{"missing data_offsets", rawSafetensors(`{"t":{"dtype":"F32","shape":[1]}}`, 4), `tensor "t": missing data_offsets`},
	{"dtype not string", rawSafetensors(`{"t":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}`, 4), `tensor "t": dtype is not a string`},
	{"shape null", rawSafetensors(`{"t":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}`, 4), `tensor "t": shape is not an array of integers`},
	{"shape float", rawSafetensors(`{"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, 4), `shape is not an array of integers (got "[1.5]")`},
	{"shape dim too big", rawSafetensors(`{"t":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,4]}}`, 4), `shape is not an array of integers`},
	{"data_offsets one value", rawSafetensors(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[4]}}`, 4), `data_offsets has 1 values, want [begin, end]`},
	{"data_offsets three values", rawSafetensors(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, 8), `data_offsets has 3 values`},
	{"unknown dtype", rawSafetensors(`{"t":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}`, 4), `tensor "t": unknown dtype "F7"`},
	{"lowercase dtype", rawSafetensors(`{"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}`, 4), `unknown dtype "f32"`},
	{"negative dim", rawSafetensors(`{"t":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}}`, 4), `negative dim -1 at index 1 of shape [2 -1]`},
	{"element overflow", rawSafetensors(`{"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), `overflows int64 elements`},
	{"byte overflow", rawSafetensors(`{"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}}`, 4), `overflows int64 bytes`},
	{"sub-byte partial", rawSafetensors(`{"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, 2), `is 12 bits, not a whole number of bytes`},
	{"size mismatch", rawSafetensors(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 8), `data_offsets [0, 4] span 4 bytes, but F32[2] needs 8`},
	{"offsets past end", rawSafetensors(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), `file is truncated: header says 8 bytes of tensor data, file has 4 (4 bytes missing)`},
	{"offsets near max int64", rawSafetensors(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[9223372036854775806,9223372036854775807]}}`, 4), `lie beyond any file's end`},
	{"offsets reversed", rawSafetensors(`{"t":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, 4), `data_offsets [4, 0] are reversed`},
	{"offsets negative", rawSafetensors(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, 4), `negative data_offsets [-4, 0]`},
	{"overlap", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12), `tensors "a" [0,8) and "b" [4,12) overlap`},
	{"overlap identical", rawSafetensors(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}`, 4), `overlap`},
	{"duplicate tensor", rawSafetensors(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2), `tensor "a" appears twice`},
}

func TestParseSafetensorsMalformed(t *testing.T) {
	for _, tc := range malformedSafetensors {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ParseSafetensors(bytes.NewReader(tc.file), int64(len(tc.file)))
			if err == nil {
				t.Fatalf("parsed %+v, want error containing %q", st, tc.want)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %q does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestParseSafetensorsValid(t *testing.T) {
	tests := []struct {
		name    string
		file    []byte
		tensors []Tensor // Begin and End relative to the data section
		meta    map[string]string
	}{
		{"empty object", rawSafetensors(`{}`, 0), []Tensor{}, map[string]string{}},
		{"padded with spaces", rawSafetensors(`{}      `, 0), []Tensor{}, map[string]string{}},
		{"metadata only", rawSafetensors(`{"__metadata__":{"format":"pt","x":""}}`, 0), []Tensor{}, map[string]string{"format": "pt", "x": ""}},
		{"scalar", rawSafetensors(`{"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}`, 8),
			[]Tensor{{Name: "s", DType: "F64", Shape: []int64{}, Begin: 0, End: 8}}, map[string]string{}},
		{"zero-size tensors and a gap, sorted by offset", rawSafetensors(`{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"e":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"x":{"unknown":1,"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, 16),
			[]Tensor{
				{Name: "e", DType: "U8", Shape: []int64{0}, Begin: 0, End: 0},
				{Name: "x", DType: "U8", Shape: []int64{2}, Begin: 0, End: 2},
				{Name: "z", DType: "F32", Shape: []int64{0, 3}, Begin: 4, End: 4},
				{Name: "a", DType: "BF16", Shape: []int64{2}, Begin: 8, End: 12},
			}, map[string]string{}},
		{"sub-byte dtype", rawSafetensors(`{"f":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}`, 3),
			[]Tensor{{Name: "f", DType: "F4", Shape: []int64{2, 3}, Begin: 0, End: 3}}, map[string]string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ParseSafetensors(bytes.NewReader(tc.file), int64(len(tc.file)))
			if err != nil {
				t.Fatal(err)
			}
			if st.DataOffset != 8+st.HeaderLen || st.FileSize != int64(len(tc.file)) {
				t.Errorf("DataOffset %d HeaderLen %d FileSize %d", st.DataOffset, st.HeaderLen, st.FileSize)
			}
			for i := range tc.tensors {
				tc.tensors[i].Begin += st.DataOffset
				tc.tensors[i].End += st.DataOffset
			}
			if got, want := fmt.Sprint(st.Tensors), fmt.Sprint(tc.tensors); got != want {
				t.Errorf("tensors\n got %s\nwant %s", got, want)
			}
			if got, want := fmt.Sprint(st.Metadata), fmt.Sprint(tc.meta); got != want {
				t.Errorf("metadata got %s want %s", got, want)
			}
		})
	}
}

// errReaderAt fails every read.
type errReaderAt struct{}

func (errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, errors.New("disk on fire") }

func TestParseSafetensorsReaderErrors(t *testing.T) {
	_, err := ParseSafetensors(errReaderAt{}, 100)
	if err == nil || errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("failing reader: got %v, want the reader's error, not ErrMalformed", err)
	}
	// A reader shorter than the size claimed.
	file := rawSafetensors(`{}`, 0)
	_, err = ParseSafetensors(bytes.NewReader(file[:9]), int64(len(file)))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short reader: got %v, want io.ErrUnexpectedEOF", err)
	}
}

// f32Bytes returns the little-endian bytes of n float32 values 0, 1, 2...
func f32Bytes(n int) []byte {
	b := make([]byte, 0, 4*n)
	for i := range n {
		b = binary.LittleEndian.AppendUint32(b, uint32(0x3f800000+i))
	}
	return b
}

func bytesSpec(name, dtype string, shape []int64, data []byte) TensorSpec {
	return TensorSpec{Name: name, DType: dtype, Shape: shape, Write: func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}}
}

func TestWriteSafetensorsRoundTrip(t *testing.T) {
	data := map[string][]byte{
		"b.weight":  f32Bytes(12),
		"a.bias":    f32Bytes(3),
		"scalar":    binary.LittleEndian.AppendUint64(nil, 0x4009_21fb_5444_2d18),
		"empty":     {},
		"odd.bytes": {1, 2, 3, 4, 5},
	}
	specs := []TensorSpec{
		bytesSpec("b.weight", "F32", []int64{3, 4}, data["b.weight"]),
		bytesSpec("a.bias", "F32", []int64{3}, data["a.bias"]),
		bytesSpec("scalar", "F64", nil, data["scalar"]),
		bytesSpec("empty", "F16", []int64{0, 7}, data["empty"]),
		bytesSpec("odd.bytes", "U8", []int64{5}, data["odd.bytes"]),
	}
	meta := map[string]string{"z": "last", "a": "first", "html": "<&>", "ünï": "cödé"}

	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, meta, specs); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	st, err := ParseSafetensors(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	if st.DataOffset%8 != 0 {
		t.Errorf("DataOffset %d is not a multiple of 8", st.DataOffset)
	}
	if fmt.Sprint(st.Metadata) != fmt.Sprint(meta) {
		t.Errorf("metadata %v, want %v", st.Metadata, meta)
	}
	if len(st.Tensors) != len(specs) {
		t.Fatalf("got %d tensors, want %d", len(st.Tensors), len(specs))
	}
	// Data is laid out in spec order, back to back, ending at the file end.
	next := st.DataOffset
	for i, spec := range specs {
		var got Tensor
		for _, tt := range st.Tensors {
			if tt.Name == spec.Name {
				got = tt
			}
		}
		if got.DType != spec.DType || fmt.Sprint(got.Shape) != fmt.Sprint(append([]int64{}, spec.Shape...)) {
			t.Errorf("tensor %d %q: got %+v", i, spec.Name, got)
		}
		if got.Begin != next {
			t.Errorf("tensor %q begins at %d, want %d", spec.Name, got.Begin, next)
		}
		if !bytes.Equal(file[got.Begin:got.End], data[spec.Name]) {
			t.Errorf("tensor %q data %v, want %v", spec.Name, file[got.Begin:got.End], data[spec.Name])
		}
		next = got.End
	}
	if next != int64(len(file)) {
		t.Errorf("data ends at %d, file is %d bytes", next, len(file))
	}
	header := string(file[8:st.DataOffset])
	if !strings.Contains(header, `"html":"<&>"`) {
		t.Errorf("header escapes HTML: %s", header)
	}
	if i := strings.Index(header, `"a.bias"`); i < 0 || i > strings.Index(header, `"b.weight"`) {
		t.Errorf("header keys are not sorted: %s", header)
	}

	// Deterministic: map iteration order must not leak into the output.
	for range 5 {
		var again bytes.Buffer
		if err := WriteSafetensors(&again, meta, specs); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.Bytes(), file) {
			t.Fatal("WriteSafetensors output differs between runs")
		}
	}

	// SafetensorsHeader is the prefix WriteSafetensors writes.
	h, err := SafetensorsHeader(meta, specs)
	if err != nil || !bytes.Equal(h, file[:st.DataOffset]) {
		t.Errorf("SafetensorsHeader = %q, %v; want the file's first %d bytes", h, err, st.DataOffset)
	}
}

func TestWriteSafetensorsErrors(t *testing.T) {
	ok := bytesSpec("ok", "U8", []int64{2}, []byte{1, 2})
	tests := []struct {
		name    string
		meta    map[string]string
		specs   []TensorSpec
		want    string
		errIs   error
		partial bool // some bytes reach w
	}{
		{name: "too few bytes", specs: []TensorSpec{ok, bytesSpec("t", "F32", []int64{2}, make([]byte, 7))}, want: `tensor "t": wrote 7 bytes, want 8`, errIs: ErrTensorSize, partial: true},
		{name: "too many bytes", specs: []TensorSpec{bytesSpec("t", "F32", []int64{2}, make([]byte, 9))}, want: `write of 9 bytes with 8 left in the tensor`, errIs: ErrTensorSize, partial: true},
		{name: "write error", specs: []TensorSpec{{Name: "t", DType: "U8", Shape: []int64{1}, Write: func(io.Writer) error { return io.ErrClosedPipe }}}, want: `writing tensor "t"`, errIs: io.ErrClosedPipe, partial: true},
		{name: "unknown dtype", specs: []TensorSpec{bytesSpec("t", "Q4", []int64{2}, nil)}, want: `unknown dtype "Q4"`},
		{name: "negative dim", specs: []TensorSpec{bytesSpec("t", "U8", []int64{-2}, nil)}, want: `negative dim`},
		{name: "duplicate name", specs: []TensorSpec{ok, ok}, want: `tensor "ok" appears twice`},
		{name: "reserved name", specs: []TensorSpec{bytesSpec(metadataKey, "U8", []int64{2}, nil)}, want: `reserved`},
		{name: "empty name", specs: []TensorSpec{bytesSpec("", "U8", []int64{2}, nil)}, want: `empty name`},
		{name: "nil write", specs: []TensorSpec{{Name: "t", DType: "U8", Shape: []int64{1}}}, want: `no Write func`},
		{name: "bad utf8 name", specs: []TensorSpec{bytesSpec("\xff", "U8", []int64{1}, nil)}, want: `not valid UTF-8`},
		{name: "bad utf8 metadata", meta: map[string]string{"k": "\xff"}, want: `metadata "k" is not valid UTF-8`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteSafetensors(&buf, tc.meta, tc.specs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
			if tc.errIs != nil && !errors.Is(err, tc.errIs) {
				t.Errorf("error %v does not wrap %v", err, tc.errIs)
			}
			if !tc.partial && buf.Len() != 0 {
				t.Errorf("wrote %d bytes before a validation error", buf.Len())
			}
		})
	}
}

func TestSafetensorsSummary(t *testing.T) {
	specs := []TensorSpec{bytesSpec("w", "F32", []int64{2, 3}, f32Bytes(6))}
	for i := range 25 {
		specs = append(specs, bytesSpec(fmt.Sprintf("b.%02d", i), "BF16", []int64{1}, []byte{0, 0}))
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, map[string]string{"genfleet.family": "x"}, specs); err != nil {
		t.Fatal(err)
	}
	st, err := ParseSafetensors(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	st.Summary(&out)
	for _, want := range []string{
		fmt.Sprintf("file size:   %s (%d bytes)", humanBytes(int64(buf.Len())), buf.Len()),
		"tensors:     26",
		"parameters:  31",
		"F32      24 B (24 bytes)",
		"BF16     50 B (50 bytes)",
		`genfleet.family = "x"`,
		"w                                        F32      [2 3]",
		"… and 6 more",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseSafetensorsFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, nil, []TensorSpec{bytesSpec("t", "I32", []int64{2}, make([]byte, 8))}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := ParseSafetensorsFile(good)
	if err != nil || len(st.Tensors) != 1 || st.FileSize != int64(buf.Len()) {
		t.Fatalf("ParseSafetensorsFile = %+v, %v", st, err)
	}
	bad := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(bad, []byte("tiny"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSafetensorsFile(bad); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad file: got %v, want ErrMalformed naming the path", err)
	}
	if _, err := ParseSafetensorsFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want os.ErrNotExist", err)
	}
}

func BenchmarkParseSafetensors(b *testing.B) {
	var specs []TensorSpec
	for i := range 1000 {
		specs = append(specs, bytesSpec(fmt.Sprintf("model.layers.%d.weight", i), "BF16", []int64{4, 4}, make([]byte, 32)))
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, map[string]string{"format": "pt"}, specs); err != nil {
		b.Fatal(err)
	}
	file := buf.Bytes()
	st, _ := ParseSafetensors(bytes.NewReader(file), int64(len(file)))
	b.SetBytes(st.HeaderLen)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSafetensors(bytes.NewReader(file), int64(len(file))); err != nil {
			b.Fatal(err)
		}
	}
}

// A safetensors file cut short, in its tensor data or in its header, is
// reported as truncated, by how much, not as an unknown format or as a bad
// tensor: what `genfleet models inspect` says of an interrupted download.
func TestParseSafetensorsTruncated(t *testing.T) {
	var full bytes.Buffer
	if err := WriteSafetensors(&full, map[string]string{"k": "v"}, []TensorSpec{
		bytesSpec("a", "F32", []int64{64}, make([]byte, 256)),
		bytesSpec("b", "F32", []int64{64}, make([]byte, 256)),
	}); err != nil {
		t.Fatal(err)
	}
	whole, err := ParseSafetensors(bytes.NewReader(full.Bytes()), int64(full.Len()))
	if err != nil {
		t.Fatal(err)
	}
	data := int64(full.Len()) - whole.DataOffset // 512
	tests := []struct {
		name string
		keep int64
		want string
	}{
		{"in the second tensor", whole.DataOffset + 300, fmt.Sprintf("file is truncated: header says %d bytes of tensor data, file has 300 (%d bytes missing)", data, data-300)},
		{"right after the header", whole.DataOffset, fmt.Sprintf("header says %d bytes of tensor data, file has 0 (%d bytes missing)", data, data)},
		{"one byte short", int64(full.Len()) - 1, "(1 bytes missing)"},
		{"in the header", 20, fmt.Sprintf("file is truncated: header length %d runs past the end of the 20-byte file", whole.HeaderLen)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cut := full.Bytes()[:tc.keep]
			format, err := Detect(bytes.NewReader(cut), tc.keep)
			if err != nil || format != FormatSafetensors {
				t.Fatalf("Detect = %q, %v; want safetensors", format, err)
			}
			_, err = ParseSafetensors(bytes.NewReader(cut), tc.keep)
			if !errors.Is(err, ErrTruncated) || !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrTruncated and ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}
