package modelformat

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"strings"
)

const ggufMagic = "GGUF"

// Limits of the GGUF header parser. They bound what a hostile file can make
// it allocate or loop over, beyond the file size itself.
const (
	// ggufMaxDims is the most dimensions a tensor may have; ggml uses 4.
	ggufMaxDims = 16
	// ggufMaxDepth is how deeply arrays may nest in metadata values.
	ggufMaxDepth = 4
	// ggufArrayHead is how many leading elements of an array are kept.
	ggufArrayHead = 8
	// ggufDefaultAlignment applies when general.alignment is absent.
	ggufDefaultAlignment = 32
	// ggufMaxName is the longest key or tensor name accepted; the spec
	// allows 65535-byte keys and ggml 64-byte names.
	ggufMaxName = 1 << 16
	// ggufMaxString is the longest string value accepted.
	ggufMaxString = 16 << 20
	// ggufPrealloc caps slices sized from counts in the file before the
	// entries are read; beyond it they grow as entries actually parse.
	ggufPrealloc = 1024
)

// GGUF is the parsed header of a GGUF file: metadata and tensor infos.
// Tensor data is not read.
type GGUF struct {
	// Version is the GGUF version, 1 to 3.
	Version uint32
	// FileSize is the size the file was parsed with.
	FileSize int64
	// Metadata are the key-value pairs in file order.
	Metadata []GGUFKV
	// Tensors are the tensor infos in file order.
	Tensors []GGUFTensor
	// Alignment is general.alignment, or 32 when absent.
	Alignment int64
	// DataOffset is the file offset of the tensor data section: the end of
	// the header rounded up to Alignment.
	DataOffset int64
}

// GGUFKV is one metadata entry.
type GGUFKV struct {
	Key string
	// Type is the value's GGUF type: "u8", "i8", "u16", "i16", "u32",
	// "i32", "f32", "bool", "string", "array", "u64", "i64" or "f64".
	Type string
	// Value is a uint64 for unsigned types, an int64 for signed ones, a
	// float64 for floats, a bool, a string, or a GGUFArray.
	Value any
}

// GGUFArray summarises an array value: its element type, its length and
// its first few elements (at most 8), converted as GGUFKV.Value is.
type GGUFArray struct {
	ElemType string
	Len      uint64
	Head     []any
}

// GGUFTensor is one tensor info.
type GGUFTensor struct {
	Name string
	// Dims are the dimensions, innermost first as ggml stores them.
	Dims []uint64
	Type GGMLType
	// Offset is relative to GGUF.DataOffset.
	Offset uint64
	// Size is the tensor's size in bytes, or -1 when Type's block layout
	// is not known to this package.
	Size int64
}

// GGMLType is a ggml tensor element type.
type GGMLType uint32

var ggmlTypeNames = []string{
	0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_2", 5: "Q4_3", 6: "Q5_0", 7: "Q5_1",
	8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
	16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
	23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
	31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8", 34: "TQ1_0", 35: "TQ2_0",
	36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8", 39: "MXFP4",
}

// String returns the ggml name of t, e.g. "Q4_K", or "type(N)".
func (t GGMLType) String() string {
	if int(t) < len(ggmlTypeNames) && ggmlTypeNames[t] != "" {
		return ggmlTypeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// ggmlBlocks gives, for the types whose layout this package knows, the
// elements per block and the bytes per block.
var ggmlBlocks = map[GGMLType][2]uint64{
	0: {1, 4}, 1: {1, 2}, 30: {1, 2}, 28: {1, 8},
	24: {1, 1}, 25: {1, 2}, 26: {1, 4}, 27: {1, 8},
	2: {32, 18}, 3: {32, 20}, 6: {32, 22}, 7: {32, 24}, 8: {32, 34}, 9: {32, 36},
	10: {256, 84}, 11: {256, 110}, 12: {256, 144}, 13: {256, 176}, 14: {256, 210}, 15: {256, 292},
}

var ggufTypeNames = []string{"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"}

const (
	ggufString = 8
	ggufArray  = 9
)

// ggufFixedSize is the encoded size of each fixed-size value type, 0 for
// string and array.
var ggufFixedSize = []int64{1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8}

// ggufReader reads a GGUF header sequentially, tracking the offset, and
// turns running out of bytes into an ErrMalformed error.
type ggufReader struct {
	br   *bufio.Reader
	pos  int64
	size int64
	v1   bool // version 1 uses 32-bit lengths and counts
	buf  [8]byte
}

func (r *ggufReader) remaining() int64 { return r.size - r.pos }

func (r *ggufReader) read(n int, what string) ([]byte, error) {
	if int64(n) > r.remaining() {
		return nil, malformed(FormatGGUF, "file ends at offset %d, inside %s", r.size, what)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.br, b); err != nil {
		return nil, r.ioErr(err, what)
	}
	r.pos += int64(n)
	return b, nil
}

func (r *ggufReader) ioErr(err error, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("gguf: reading %s at offset %d: reader ended before the %d-byte size: %w", what, r.pos, r.size, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("gguf: reading %s at offset %d: %w", what, r.pos, err)
}

func (r *ggufReader) u32(what string) (uint32, error) {
	b, err := r.read(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (r *ggufReader) u64(what string) (uint64, error) {
	b, err := r.read(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// count reads a length or count: 32 bits in version 1, 64 after.
func (r *ggufReader) count(what string) (uint64, error) {
	if r.v1 {
		n, err := r.u32(what)
		return uint64(n), err
	}
	return r.u64(what)
}

func (r *ggufReader) lenSize() int64 {
	if r.v1 {
		return 4
	}
	return 8
}

// str reads a string of at most max bytes. With keep false it skips the
// bytes and returns "".
func (r *ggufReader) str(what string, max uint64, keep bool) (string, error) {
	n, err := r.count(what + " length")
	if err != nil {
		return "", err
	}
	if n > max {
		return "", malformed(FormatGGUF, "%s at offset %d is %d bytes long, over the %d-byte limit", what, r.pos, n, max)
	}
	if n > uint64(r.remaining()) {
		return "", malformed(FormatGGUF, "%s at offset %d claims %d bytes, more than the %d left in the file", what, r.pos, n, r.remaining())
	}
	if !keep {
		if _, err := r.br.Discard(int(n)); err != nil {
			return "", r.ioErr(err, what)
		}
		r.pos += int64(n)
		return "", nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.br, b); err != nil {
		return "", r.ioErr(err, what)
	}
	r.pos += int64(n)
	return string(b), nil
}

// value reads a value of type typ. Arrays are summarised; with keep false
// nothing is retained (used for array elements past the head).
func (r *ggufReader) value(typ uint32, what string, depth int, keep bool) (any, error) {
	if typ >= uint32(len(ggufTypeNames)) {
		return nil, malformed(FormatGGUF, "%s has unknown value type %d", what, typ)
	}
	switch typ {
	case ggufString:
		return r.str(what, ggufMaxString, keep)
	case ggufArray:
		if depth >= ggufMaxDepth {
			return nil, malformed(FormatGGUF, "%s nests arrays more than %d deep", what, ggufMaxDepth)
		}
		et, err := r.u32(what + " element type")
		if err != nil {
			return nil, err
		}
		if et >= uint32(len(ggufTypeNames)) {
			return nil, malformed(FormatGGUF, "%s has unknown element type %d", what, et)
		}
		n, err := r.count(what + " length")
		if err != nil {
			return nil, err
		}
		minSize := ggufFixedSize[et]
		switch et {
		case ggufString:
			minSize = r.lenSize()
		case ggufArray:
			minSize = 4 + r.lenSize()
		}
		if n > uint64(r.remaining()/minSize) {
			return nil, malformed(FormatGGUF, "%s claims %d elements of type %s, more than the %d bytes left in the file hold", what, n, ggufTypeNames[et], r.remaining())
		}
		arr := GGUFArray{ElemType: ggufTypeNames[et], Len: n}
		if et != ggufString && et != ggufArray && n > ggufArrayHead {
			// Fixed-size elements: keep the head, skip the rest in one go.
			for i := uint64(0); i < ggufArrayHead; i++ {
				v, err := r.value(et, what, depth+1, keep)
				if err != nil {
					return nil, err
				}
				if keep {
					arr.Head = append(arr.Head, v)
				}
			}
			skip := int64(n-ggufArrayHead) * minSize
			if _, err := r.br.Discard(int(skip)); err != nil {
				return nil, r.ioErr(err, what)
			}
			r.pos += skip
			return arr, nil
		}
		for i := uint64(0); i < n; i++ {
			head := keep && i < ggufArrayHead
			v, err := r.value(et, what, depth+1, head)
			if err != nil {
				return nil, err
			}
			if head {
				arr.Head = append(arr.Head, v)
			}
		}
		return arr, nil
	}
	b, err := r.read(int(ggufFixedSize[typ]), what)
	if err != nil {
		return nil, err
	}
	switch typ {
	case 0:
		return uint64(b[0]), nil
	case 1:
		return int64(int8(b[0])), nil
	case 2:
		return uint64(binary.LittleEndian.Uint16(b)), nil
	case 3:
		return int64(int16(binary.LittleEndian.Uint16(b))), nil
	case 4:
		return uint64(binary.LittleEndian.Uint32(b)), nil
	case 5:
		return int64(int32(binary.LittleEndian.Uint32(b))), nil
	case 6:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b))), nil
	case 7:
		if b[0] > 1 {
			return nil, malformed(FormatGGUF, "%s is a bool with value %d", what, b[0])
		}
		return b[0] == 1, nil
	case 10:
		return binary.LittleEndian.Uint64(b), nil
	case 11:
		return int64(binary.LittleEndian.Uint64(b)), nil
	default: // 12
		return math.Float64frombits(binary.LittleEndian.Uint64(b)), nil
	}
}

// ParseGGUFHeader reads the header of the GGUF file of the given size read
// through r: version, metadata and tensor infos. It checks that counts and
// lengths fit in the file before allocating for them, that the data
// section starts inside the file and that every tensor starts there,
// aligned, and for the types whose layout is known (see GGUFTensor.Size)
// ends inside the file. Versions 1 to 3 are read; big-endian files are not.
// A file breaking these rules yields an error wrapping ErrMalformed that
// names the problem; a failing reader yields its error.
func ParseGGUFHeader(r io.ReaderAt, size int64) (*GGUF, error) {
	const f = FormatGGUF
	if size < 4 {
		return nil, malformed(f, "file is %d bytes, too short for the magic", size)
	}
	gr := &ggufReader{br: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 64<<10), size: size}
	magic, err := gr.read(4, "magic")
	if err != nil {
		return nil, err
	}
	if string(magic) != ggufMagic {
		return nil, malformed(f, "magic is %q, want %q", magic, ggufMagic)
	}
	version, err := gr.u32("version")
	if err != nil {
		return nil, err
	}
	if version < 1 || version > 3 {
		if v := bits.ReverseBytes32(version); v >= 1 && v <= 3 {
			return nil, malformed(f, "big-endian GGUF (version %d) is not supported", v)
		}
		return nil, malformed(f, "unsupported version %d (want 1 to 3)", version)
	}
	gr.v1 = version == 1
	g := &GGUF{Version: version, FileSize: size, Alignment: ggufDefaultAlignment}

	nTensors, err := gr.count("tensor count")
	if err != nil {
		return nil, err
	}
	nKV, err := gr.count("metadata count")
	if err != nil {
		return nil, err
	}
	// The smallest KV is an empty key, a type and a one-byte value; the
	// smallest tensor info is an empty name, no dims, a type and an offset.
	minKV, minTensor := gr.lenSize()+4+1, gr.lenSize()+4+4+8
	if nKV > uint64(gr.remaining()/minKV) {
		return nil, malformed(f, "metadata count %d cannot fit in the %d bytes left in the file", nKV, gr.remaining())
	}
	if nTensors > uint64(gr.remaining()/minTensor) {
		return nil, malformed(f, "tensor count %d cannot fit in the %d bytes left in the file", nTensors, gr.remaining())
	}

	g.Metadata = make([]GGUFKV, 0, min(nKV, ggufPrealloc))
	for i := uint64(0); i < nKV; i++ {
		key, err := gr.str(fmt.Sprintf("metadata key %d", i), ggufMaxName, true)
		if err != nil {
			return nil, err
		}
		typ, err := gr.u32(fmt.Sprintf("type of metadata %q", key))
		if err != nil {
			return nil, err
		}
		v, err := gr.value(typ, fmt.Sprintf("metadata %q", key), 0, true)
		if err != nil {
			return nil, err
		}
		g.Metadata = append(g.Metadata, GGUFKV{Key: key, Type: ggufTypeNames[typ], Value: v})
		if key == "general.alignment" {
			a, ok := v.(uint64)
			if !ok || typ != 4 {
				return nil, malformed(f, "general.alignment has type %s, want u32", ggufTypeNames[typ])
			}
			if a == 0 || a&(a-1) != 0 {
				return nil, malformed(f, "general.alignment %d is not a power of two", a)
			}
			g.Alignment = int64(a)
		}
	}

	g.Tensors = make([]GGUFTensor, 0, min(nTensors, ggufPrealloc))
	names := make(map[string]bool, min(nTensors, ggufPrealloc))
	for i := uint64(0); i < nTensors; i++ {
		name, err := gr.str(fmt.Sprintf("name of tensor %d", i), ggufMaxName, true)
		if err != nil {
			return nil, err
		}
		what := fmt.Sprintf("tensor %q", name)
		if names[name] {
			return nil, malformed(f, "%s appears twice", what)
		}
		names[name] = true
		nDims, err := gr.u32(what + " dim count")
		if err != nil {
			return nil, err
		}
		if nDims > ggufMaxDims {
			return nil, malformed(f, "%s has %d dims, more than %d", what, nDims, ggufMaxDims)
		}
		t := GGUFTensor{Name: name, Dims: make([]uint64, nDims), Size: -1}
		for d := range t.Dims {
			if t.Dims[d], err = gr.u64(what + " dims"); err != nil {
				return nil, err
			}
		}
		typ, err := gr.u32(what + " type")
		if err != nil {
			return nil, err
		}
		t.Type = GGMLType(typ)
		if t.Offset, err = gr.u64(what + " offset"); err != nil {
			return nil, err
		}
		g.Tensors = append(g.Tensors, t)
	}

	g.DataOffset = gr.pos
	if rem := g.DataOffset % g.Alignment; rem != 0 {
		g.DataOffset += g.Alignment - rem
	}
	if g.DataOffset > size {
		return nil, malformed(f, "data section would start at offset %d, past the end of the %d-byte file", g.DataOffset, size)
	}
	dataSize := uint64(size - g.DataOffset)
	for i := range g.Tensors {
		t := &g.Tensors[i]
		if t.Offset%uint64(g.Alignment) != 0 {
			return nil, malformed(f, "tensor %q offset %d is not a multiple of the alignment %d", t.Name, t.Offset, g.Alignment)
		}
		if t.Offset > dataSize {
			return nil, malformed(f, "tensor %q offset %d is past the end of the %d-byte data section", t.Name, t.Offset, dataSize)
		}
		n := uint64(1)
		for _, d := range t.Dims {
			hi, lo := bits.Mul64(n, d)
			if hi != 0 || lo > math.MaxInt64 {
				return nil, malformed(f, "tensor %q dims %v overflow", t.Name, t.Dims)
			}
			n = lo
		}
		blk, ok := ggmlBlocks[t.Type]
		if !ok {
			continue
		}
		if len(t.Dims) > 0 && t.Dims[0]%blk[0] != 0 {
			return nil, malformed(f, "tensor %q of type %s has first dim %d, not a multiple of the block size %d", t.Name, t.Type, t.Dims[0], blk[0])
		}
		hi, sz := bits.Mul64(n/blk[0], blk[1])
		if hi != 0 || sz > dataSize-t.Offset {
			return nil, malformed(f, "tensor %q (%s %v) at offset %d runs past the end of the %d-byte data section", t.Name, t.Type, t.Dims, t.Offset, dataSize)
		}
		t.Size = int64(sz)
	}
	return g, nil
}

// Lookup returns the value of metadata key and whether it is present.
func (g *GGUF) Lookup(key string) (any, bool) {
	for _, kv := range g.Metadata {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// NumParams returns the total number of elements of all tensors,
// saturating at math.MaxInt64.
func (g *GGUF) NumParams() int64 {
	var total uint64
	for _, t := range g.Tensors {
		n := uint64(1)
		for _, d := range t.Dims {
			hi, lo := bits.Mul64(n, d)
			if hi != 0 {
				return math.MaxInt64
			}
			n = lo
		}
		var carry uint64
		total, carry = bits.Add64(total, n, 0)
		if carry != 0 || total > math.MaxInt64 {
			return math.MaxInt64
		}
	}
	return int64(total)
}

// formatValue renders a metadata value for Summary.
func formatValue(v any) string {
	switch v := v.(type) {
	case string:
		return truncate(v, 80)
	case GGUFArray:
		parts := make([]string, len(v.Head))
		for i, e := range v.Head {
			parts[i] = formatValue(e)
		}
		more := ""
		if uint64(len(v.Head)) < v.Len {
			more = ", …"
		}
		return fmt.Sprintf("[%s × %d] [%s%s]", v.ElemType, v.Len, strings.Join(parts, ", "), more)
	default:
		return fmt.Sprint(v)
	}
}

// Summary writes a human-readable description of g to w: version, sizes,
// counts, metadata (arrays summarised) and the first tensors. Write errors
// are ignored.
func (g *GGUF) Summary(w io.Writer) {
	fmt.Fprintf(w, "format:      gguf v%d\n", g.Version)
	fmt.Fprintf(w, "file size:   %s (%d bytes)\n", humanBytes(g.FileSize), g.FileSize)
	fmt.Fprintf(w, "header size: %s (data at offset %d, alignment %d)\n", humanBytes(g.DataOffset), g.DataOffset, g.Alignment)
	fmt.Fprintf(w, "tensors:     %d\n", len(g.Tensors))
	fmt.Fprintf(w, "parameters:  %d\n", g.NumParams())
	fmt.Fprintf(w, "metadata: %d keys\n", len(g.Metadata))
	for _, kv := range g.Metadata {
		fmt.Fprintf(w, "  %s (%s) = %s\n", kv.Key, kv.Type, formatValue(kv.Value))
	}
	fmt.Fprintf(w, "tensors (in file order):\n")
	for i, t := range g.Tensors {
		if i == summaryTensors {
			fmt.Fprintf(w, "  … and %d more\n", len(g.Tensors)-i)
			break
		}
		size := "?"
		if t.Size >= 0 {
			size = humanBytes(t.Size)
		}
		fmt.Fprintf(w, "  %-40s %-8s %-20s %s\n", t.Name, t.Type, fmt.Sprint(t.Dims), size)
	}
}
