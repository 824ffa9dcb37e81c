package modelformat

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// MaxSafetensorsHeader is the largest safetensors JSON header accepted,
// 100 MiB. Real headers are kilobytes to a few megabytes; the cap bounds
// what a hostile length prefix can make the parser allocate.
const MaxSafetensorsHeader = 100 << 20

// metadataKey is the reserved header key holding string metadata.
const metadataKey = "__metadata__"

// Safetensors is a parsed, validated safetensors header.
//
// The file is an 8-byte little-endian header length N, N bytes of JSON,
// then the tensor data. Parsing guarantees: every tensor has a known dtype,
// non-negative dims whose element count times the dtype size is exactly
// End-Begin without overflow, DataOffset <= Begin <= End <= FileSize, and
// no two tensors overlap. Gaps between tensors and unused bytes at the end
// are accepted (the reference implementation rejects them); Summary
// reports them.
type Safetensors struct {
	// HeaderLen is N, the length of the JSON header including padding.
	HeaderLen int64
	// DataOffset is 8+N, the file offset where tensor data starts.
	DataOffset int64
	// FileSize is the size the file was parsed with.
	FileSize int64
	// Metadata is the "__metadata__" map; empty (not nil) when absent.
	Metadata map[string]string
	// Tensors are sorted by Begin, then End, then Name.
	Tensors []Tensor
}

// Tensor describes one tensor of a safetensors file.
type Tensor struct {
	Name  string
	DType string
	// Shape is empty (not nil) for a scalar.
	Shape []int64
	// Begin and End are absolute file offsets (DataOffset already added):
	// the tensor's bytes are file[Begin:End].
	Begin, End int64
}

// NumElements returns the product of t's dims (1 for a scalar).
// Parsing guarantees it does not overflow.
func (t Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Size returns End-Begin, the tensor's size in bytes.
func (t Tensor) Size() int64 { return t.End - t.Begin }

// dtypeBits is the storage size in bits of one element of each supported
// safetensors dtype. Sub-byte types need an element count that fills whole
// bytes.
var dtypeBits = map[string]uint64{
	"BOOL": 8, "U8": 8, "I8": 8,
	"F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
	"U16": 16, "I16": 16, "F16": 16, "BF16": 16,
	"U32": 32, "I32": 32, "F32": 32,
	"U64": 64, "I64": 64, "F64": 64, "C64": 64,
	"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

// DTypeSize returns the size in bytes of one element of dtype, and false
// for an unknown dtype or a sub-byte one (F4, F6_*).
func DTypeSize(dtype string) (int64, bool) {
	b, ok := dtypeBits[dtype]
	if !ok || b%8 != 0 {
		return 0, false
	}
	return int64(b / 8), true
}

func supportedDTypes() string {
	names := make([]string, 0, len(dtypeBits))
	for k := range dtypeBits {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// tensorBytes returns the byte size of a tensor of the given dtype and
// shape, or an error naming the problem: negative dim, overflow, or an
// element count that does not fill whole bytes for a sub-byte dtype.
func tensorBytes(dtype string, shape []int64) (int64, error) {
	bitsPer, ok := dtypeBits[dtype]
	if !ok {
		return 0, fmt.Errorf("unknown dtype %q (supported: %s)", dtype, supportedDTypes())
	}
	zero := false
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dim %d at index %d of shape %v", d, i, shape)
		}
		if d == 0 {
			zero = true
		}
	}
	if zero {
		return 0, nil
	}
	n := uint64(1)
	for _, d := range shape {
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("shape %v overflows int64 elements", shape)
		}
		n = lo
	}
	hi, total := bits.Mul64(n, bitsPer)
	if hi != 0 || total > math.MaxInt64 {
		return 0, fmt.Errorf("shape %v of %s overflows int64 bytes", shape, dtype)
	}
	if total%8 != 0 {
		return 0, fmt.Errorf("shape %v of %s is %d bits, not a whole number of bytes", shape, dtype, total)
	}
	return int64(total / 8), nil
}

// ParseSafetensorsFile opens path and parses its safetensors header; see
// ParseSafetensors. Errors name the path.
func ParseSafetensorsFile(path string) (*Safetensors, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, err := ParseSafetensors(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// ParseSafetensors reads and validates the header of the safetensors file
// of the given size read through r. It reads only the 8+N header bytes and
// allocates in proportion to N (at most MaxSafetensorsHeader), never to
// the tensor data. A file breaking the format yields an error wrapping
// ErrMalformed that names the problem; one shorter than its header says
// (cut off in the header or in the tensor data) an error wrapping
// ErrTruncated, which says how many bytes are missing; a failing reader
// yields its error.
func ParseSafetensors(r io.ReaderAt, size int64) (*Safetensors, error) {
	const f = FormatSafetensors
	if size < 8 {
		return nil, malformed(f, "file is %d bytes, shorter than the 8-byte header length", size)
	}
	var lenBuf [8]byte
	if err := readFull(r, lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	switch {
	case n == 0:
		return nil, malformed(f, "header length is 0")
	case n > MaxSafetensorsHeader:
		return nil, malformed(f, "header length %d exceeds the %d-byte limit", n, MaxSafetensorsHeader)
	case n > uint64(size-8):
		return nil, truncated(f, "header length %d runs past the end of the %d-byte file: it says %d bytes of header, the file has %d after the length (%d bytes missing, and all tensor data)",
			n, size, n, size-8, int64(n)-(size-8))
	}
	header := make([]byte, n)
	if err := readFull(r, header, 8); err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	return parseHeader(header, size)
}

func parseHeader(header []byte, size int64) (*Safetensors, error) {
	const f = FormatSafetensors
	st := &Safetensors{
		HeaderLen:  int64(len(header)),
		DataOffset: 8 + int64(len(header)),
		FileSize:   size,
		Metadata:   map[string]string{},
	}
	if !utf8.Valid(header) {
		return nil, malformed(f, "header is not valid UTF-8")
	}
	if header[0] != '{' {
		return nil, malformed(f, "header is not a JSON object (starts with %s)", truncate(string(header[:min(len(header), 16)]), 16))
	}
	dec := json.NewDecoder(bytes.NewReader(header))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, malformed(f, "header is not a JSON object: %v", err)
	}
	seen := map[string]bool{}
	sawMeta := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, malformed(f, "header is not valid JSON: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, malformed(f, "header is not valid JSON: key %v is not a string", tok)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, malformed(f, "header is not valid JSON: value of %q: %v", name, err)
		}
		if name == metadataKey {
			if sawMeta {
				return nil, malformed(f, "%s appears twice", metadataKey)
			}
			sawMeta = true
			if err := parseMetadata(raw, st.Metadata); err != nil {
				return nil, err
			}
			continue
		}
		if seen[name] {
			return nil, malformed(f, "tensor %q appears twice", name)
		}
		seen[name] = true
		t, err := parseTensor(name, raw, st.DataOffset)
		if err != nil {
			return nil, err
		}
		st.Tensors = append(st.Tensors, t)
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, malformed(f, "header is not valid JSON: %v", err)
	}
	if rest := header[dec.InputOffset():]; len(bytes.Trim(rest, " \t\r\n")) != 0 {
		return nil, malformed(f, "header has %d bytes of trailing data after the JSON object (padding must be spaces)", len(rest))
	}
	// Tensors that run past the end mean a file cut short: say so, and by
	// how much, rather than blaming the first tensor that does.
	var need int64
	for _, t := range st.Tensors {
		need = max(need, t.End-st.DataOffset)
	}
	if have := size - st.DataOffset; need > have {
		return nil, truncated(f, "header says %d bytes of tensor data, file has %d (%d bytes missing)", need, have, need-have)
	}
	slices.SortFunc(st.Tensors, func(a, b Tensor) int {
		switch {
		case a.Begin != b.Begin:
			return cmpInt(a.Begin, b.Begin)
		case a.End != b.End:
			return cmpInt(a.End, b.End)
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i := 1; i < len(st.Tensors); i++ {
		prev, cur := st.Tensors[i-1], st.Tensors[i]
		if cur.Begin < prev.End {
			return nil, malformed(f, "tensors %q [%d,%d) and %q [%d,%d) overlap",
				prev.Name, prev.Begin-st.DataOffset, prev.End-st.DataOffset,
				cur.Name, cur.Begin-st.DataOffset, cur.End-st.DataOffset)
		}
	}
	if st.Tensors == nil {
		st.Tensors = []Tensor{}
	}
	return st, nil
}

func cmpInt(a, b int64) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

func parseMetadata(raw json.RawMessage, into map[string]string) error {
	const f = FormatSafetensors
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return malformed(f, "%s is not a JSON object of strings (got %s)", metadataKey, truncate(string(raw), 40))
	}
	for k, v := range m {
		var s string
		if len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &s) != nil {
			return malformed(f, "%s[%q] is not a string (got %s)", metadataKey, k, truncate(string(v), 40))
		}
		into[k] = s
	}
	return nil
}

// parseTensor validates one tensor entry, {"dtype": "F32", "shape": [2, 3],
// "data_offsets": [begin, end]}, with offsets relative to the data section.
// Keys are matched exactly; unknown keys are ignored, as the reference
// implementation does.
func parseTensor(name string, raw json.RawMessage, dataOffset int64) (Tensor, error) {
	const f = FormatSafetensors
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return Tensor{}, malformed(f, "tensor %q: entry is not a JSON object (got %s)", name, truncate(string(raw), 60))
	}
	var (
		dtype   string
		shape   []int64
		offsets []int64
	)
	for _, field := range []struct {
		key   string
		open  byte
		into  any
		human string
	}{
		{"dtype", '"', &dtype, "a string"},
		{"shape", '[', &shape, "an array of integers"},
		{"data_offsets", '[', &offsets, "an array of integers"},
	} {
		v, ok := m[field.key]
		if !ok {
			return Tensor{}, malformed(f, "tensor %q: missing %s", name, field.key)
		}
		if len(v) == 0 || v[0] != field.open || json.Unmarshal(v, field.into) != nil {
			return Tensor{}, malformed(f, "tensor %q: %s is not %s (got %s)", name, field.key, field.human, truncate(string(v), 40))
		}
	}
	if len(offsets) != 2 {
		return Tensor{}, malformed(f, "tensor %q: data_offsets has %d values, want [begin, end]", name, len(offsets))
	}
	if shape == nil {
		shape = []int64{}
	}
	nbytes, err := tensorBytes(dtype, shape)
	if err != nil {
		return Tensor{}, malformed(f, "tensor %q: %v", name, err)
	}
	begin, end := offsets[0], offsets[1]
	switch {
	case begin < 0 || end < 0:
		return Tensor{}, malformed(f, "tensor %q: negative data_offsets [%d, %d]", name, begin, end)
	case end < begin:
		return Tensor{}, malformed(f, "tensor %q: data_offsets [%d, %d] are reversed", name, begin, end)
	case end > math.MaxInt64-dataOffset:
		return Tensor{}, malformed(f, "tensor %q: data_offsets [%d, %d] lie beyond any file's end", name, begin, end)
	case end-begin != nbytes:
		return Tensor{}, malformed(f, "tensor %q: data_offsets [%d, %d] span %d bytes, but %s%v needs %d", name, begin, end, end-begin, dtype, shape, nbytes)
	}
	return Tensor{
		Name:  name,
		DType: dtype,
		Shape: shape,
		Begin: dataOffset + begin,
		End:   dataOffset + end,
	}, nil
}

// NumParams returns the total number of elements of all tensors.
// It saturates at math.MaxInt64 rather than overflow.
func (s *Safetensors) NumParams() int64 {
	var total int64
	for _, t := range s.Tensors {
		n := t.NumElements()
		if total > math.MaxInt64-n {
			return math.MaxInt64
		}
		total += n
	}
	return total
}

// summaryTensors is how many tensors Summary lists.
const summaryTensors = 20

// Summary writes a human-readable description of s to w: sizes, tensor
// and parameter counts, bytes per dtype, metadata and the first tensors.
// Write errors are ignored; w is usually a terminal or a buffer.
func (s *Safetensors) Summary(w io.Writer) {
	fmt.Fprintf(w, "format:      safetensors\n")
	fmt.Fprintf(w, "file size:   %s (%d bytes)\n", humanBytes(s.FileSize), s.FileSize)
	fmt.Fprintf(w, "header size: %s (%d bytes, data at offset %d)\n", humanBytes(s.HeaderLen), s.HeaderLen, s.DataOffset)
	fmt.Fprintf(w, "tensors:     %d\n", len(s.Tensors))
	fmt.Fprintf(w, "parameters:  %d\n", s.NumParams())

	perType := map[string]int64{}
	var used int64
	for _, t := range s.Tensors {
		perType[t.DType] += t.Size()
		used += t.Size()
	}
	if unused := s.FileSize - s.DataOffset - used; unused != 0 {
		fmt.Fprintf(w, "unused data: %d bytes (gaps or trailing bytes)\n", unused)
	}
	types := make([]string, 0, len(perType))
	for k := range perType {
		types = append(types, k)
	}
	sort.Strings(types)
	fmt.Fprintf(w, "bytes per dtype:\n")
	for _, k := range types {
		fmt.Fprintf(w, "  %-8s %s (%d bytes)\n", k, humanBytes(perType[k]), perType[k])
	}

	keys := make([]string, 0, len(s.Metadata))
	for k := range s.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "metadata: %d keys\n", len(keys))
	for _, k := range keys {
		fmt.Fprintf(w, "  %s = %s\n", k, truncate(s.Metadata[k], 80))
	}

	fmt.Fprintf(w, "tensors (by offset):\n")
	for i, t := range s.Tensors {
		if i == summaryTensors {
			fmt.Fprintf(w, "  … and %d more\n", len(s.Tensors)-i)
			break
		}
		fmt.Fprintf(w, "  %-40s %-8s %-20s %s\n", t.Name, t.DType, fmt.Sprint(t.Shape), humanBytes(t.Size()))
	}
}
