package modelformat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
)

// ggufBuilder assembles GGUF bytes field by field (version 2+ layout).
type ggufBuilder struct{ b []byte }

func (g *ggufBuilder) u32(v uint32) *ggufBuilder {
	g.b = binary.LittleEndian.AppendUint32(g.b, v)
	return g
}
func (g *ggufBuilder) u64(v uint64) *ggufBuilder {
	g.b = binary.LittleEndian.AppendUint64(g.b, v)
	return g
}
func (g *ggufBuilder) str(s string) *ggufBuilder {
	g.u64(uint64(len(s)))
	g.b = append(g.b, s...)
	return g
}
func (g *ggufBuilder) raw(p ...byte) *ggufBuilder { g.b = append(g.b, p...); return g }

// header starts a file: magic, version, tensor and KV counts.
func ggufHeader(version uint32, tensors, kvs uint64) *ggufBuilder {
	g := &ggufBuilder{}
	g.raw('G', 'G', 'U', 'F').u32(version).u64(tensors).u64(kvs)
	return g
}

// tensor appends a tensor info.
func (g *ggufBuilder) tensor(name string, typ uint32, offset uint64, dims ...uint64) *ggufBuilder {
	g.str(name).u32(uint32(len(dims)))
	for _, d := range dims {
		g.u64(d)
	}
	return g.u32(typ).u64(offset)
}

// pad aligns to 32 and appends n data bytes.
func (g *ggufBuilder) data(n int) []byte {
	for len(g.b)%32 != 0 {
		g.b = append(g.b, 0)
	}
	return append(g.b, make([]byte, n)...)
}

// validGGUF is a small v3 file with every value type.
func validGGUF() []byte {
	g := ggufHeader(3, 2, 9)
	g.str("general.architecture").u32(8).str("llama")
	g.str("general.alignment").u32(4).u32(32)
	g.str("u8").u32(0).raw(200)
	g.str("i16").u32(3).raw(0xff, 0xff)
	g.str("f32").u32(6).u32(math.Float32bits(0.5))
	g.str("ok").u32(7).raw(1)
	g.str("i64").u32(11).u64(uint64(math.MaxUint64)) // -1
	g.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(10)
	for i := range 10 {
		g.str(fmt.Sprintf("tok%d", i))
	}
	g.str("scores").u32(9).u32(6).u64(20)
	for i := range 20 {
		g.u32(math.Float32bits(float32(i)))
	}
	g.tensor("token_embd.weight", 0, 0, 4, 2)  // F32, 32 bytes
	g.tensor("blk.0.attn_q.weight", 8, 32, 64) // Q8_0, 2 blocks = 68 bytes
	return g.data(32 + 68)
}

func TestParseGGUFHeader(t *testing.T) {
	file := validGGUF()
	g, err := ParseGGUFHeader(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	if g.Version != 3 || g.Alignment != 32 || g.DataOffset%32 != 0 || g.FileSize != int64(len(file)) {
		t.Errorf("got version %d alignment %d data offset %d size %d", g.Version, g.Alignment, g.DataOffset, g.FileSize)
	}
	if g.DataOffset+100 != int64(len(file)) {
		t.Errorf("data offset %d, want %d", g.DataOffset, len(file)-100)
	}
	wantKV := map[string]string{
		"general.architecture":  "string llama",
		"general.alignment":     "u32 32",
		"u8":                    "u8 200",
		"i16":                   "i16 -1",
		"f32":                   "f32 0.5",
		"ok":                    "bool true",
		"i64":                   "i64 -1",
		"tokenizer.ggml.tokens": "array {string 10 [tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7]}",
		"scores":                "array {f32 20 [0 1 2 3 4 5 6 7]}",
	}
	if len(g.Metadata) != len(wantKV) {
		t.Errorf("got %d KVs, want %d", len(g.Metadata), len(wantKV))
	}
	for _, kv := range g.Metadata {
		if got := kv.Type + " " + fmt.Sprint(kv.Value); got != wantKV[kv.Key] {
			t.Errorf("%s = %s, want %s", kv.Key, got, wantKV[kv.Key])
		}
	}
	if v, ok := g.Lookup("general.architecture"); !ok || v != "llama" {
		t.Errorf("Lookup = %v, %v", v, ok)
	}
	if _, ok := g.Lookup("nope"); ok {
		t.Error("Lookup found a missing key")
	}
	want := []GGUFTensor{
		{Name: "token_embd.weight", Dims: []uint64{4, 2}, Type: 0, Offset: 0, Size: 32},
		{Name: "blk.0.attn_q.weight", Dims: []uint64{64}, Type: 8, Offset: 32, Size: 68},
	}
	if fmt.Sprint(g.Tensors) != fmt.Sprint(want) {
		t.Errorf("tensors %v, want %v", g.Tensors, want)
	}
	if g.NumParams() != 72 {
		t.Errorf("NumParams = %d, want 72", g.NumParams())
	}

	var out strings.Builder
	g.Summary(&out)
	for _, s := range []string{
		"format:      gguf v3",
		"tensors:     2",
		"parameters:  72",
		`general.architecture (string) = "llama"`,
		`tokenizer.ggml.tokens (array) = [string × 10] ["tok0", "tok1", "tok2", "tok3", "tok4", "tok5", "tok6", "tok7", …]`,
		"blk.0.attn_q.weight                      Q8_0     [64]",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("summary lacks %q:\n%s", s, out.String())
		}
	}
}

func TestParseGGUFHeaderVersion1(t *testing.T) {
	// Version 1 uses 32-bit counts and lengths.
	g := &ggufBuilder{}
	g.raw('G', 'G', 'U', 'F').u32(1).u32(1).u32(1)
	g.u32(4).raw([]byte("name")...).u32(8).u32(2).raw('h', 'i')
	g.u32(1).raw('t').u32(1).u64(4).u32(0).u64(0)
	file := g.data(16)
	got, err := ParseGGUFHeader(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || len(got.Metadata) != 1 || got.Metadata[0].Value != "hi" || len(got.Tensors) != 1 || got.Tensors[0].Size != 16 {
		t.Errorf("got %+v", got)
	}
}

// malformedGGUF are inputs ParseGGUFHeader must reject. The fuzz test
// seeds from them too.
func malformedGGUF() []struct {
	name string
	file []byte
	want string
} {
	kv := func(tensors, kvs uint64) *ggufBuilder { return ggufHeader(3, tensors, kvs) }
	return []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "too short for the magic"},
		{"bad magic", []byte("GGML\x03\x00\x00\x00"), `magic is "GGML", want "GGUF"`},
		{"truncated version", []byte("GGUF\x03"), "file ends at offset 5, inside version"},
		{"version 0", ggufHeader(0, 0, 0).b, "unsupported version 0"},
		{"version 4", ggufHeader(4, 0, 0).b, "unsupported version 4"},
		{"big endian", ggufHeader(0x03000000, 0, 0).b, "big-endian GGUF (version 3) is not supported"},
		{"huge tensor count", ggufHeader(3, 1<<60, 0).b, "tensor count 1152921504606846976 cannot fit"},
		{"huge kv count", ggufHeader(3, 0, ^uint64(0)).b, "metadata count 18446744073709551615 cannot fit"},
		{"key longer than file", kv(0, 1).u64(1000).raw(make([]byte, 16)...).b, "metadata key 0 at offset 32 claims 1000 bytes, more than the 16 left"},
		{"key over name limit", kv(0, 1).u64(1 << 20).raw(make([]byte, 16)...).b, "is 1048576 bytes long, over the 65536-byte limit"},
		{"unknown value type", kv(0, 1).str("k").u32(13).raw(make([]byte, 16)...).b, `metadata "k" has unknown value type 13`},
		{"bad bool", kv(0, 1).str("k").u32(7).raw(2).b, `metadata "k" is a bool with value 2`},
		{"truncated value", kv(0, 1).str("k").u32(10).raw(1, 2).b, `file ends at offset 39, inside metadata "k"`},
		{"array count too big", kv(0, 1).str("k").u32(9).u32(4).u64(1 << 40).raw(make([]byte, 16)...).b, `metadata "k" claims 1099511627776 elements of type u32`},
		{"string array too big", kv(0, 1).str("k").u32(9).u32(8).u64(3).str("a").b, `metadata "k" claims 3 elements of type string`},
		{"array bad element type", kv(0, 1).str("k").u32(9).u32(99).u64(0).b, `metadata "k" has unknown element type 99`},
		{"arrays nested too deep", kv(0, 1).str("k").u32(9).u32(9).u64(1).u32(9).u64(1).u32(9).u64(1).u32(9).u64(1).u32(9).u64(0).raw(make([]byte, 64)...).b, "nests arrays more than 4 deep"},
		{"alignment wrong type", kv(0, 1).str("general.alignment").u32(10).u64(32).b, "general.alignment has type u64, want u32"},
		{"alignment not power of two", kv(0, 1).str("general.alignment").u32(4).u32(24).b, "general.alignment 24 is not a power of two"},
		{"too many dims", kv(1, 0).str("t").u32(17).raw(make([]byte, 200)...).b, `tensor "t" has 17 dims, more than 16`},
		{"duplicate tensor", (func() []byte { return kv(2, 0).tensor("t", 0, 0, 1).tensor("t", 0, 32, 1).data(64) })(), `tensor "t" appears twice`},
		{"misaligned offset", kv(1, 0).tensor("t", 0, 4, 1).data(64), `tensor "t" offset 4 is not a multiple of the alignment 32`},
		{"offset past end", kv(1, 0).tensor("t", 99, 64, 1).data(32), `tensor "t" offset 64 is past the end of the 32-byte data section`},
		{"tensor past end", kv(1, 0).tensor("t", 0, 0, 9).data(32), `tensor "t" (F32 [9]) at offset 0 runs past the end of the 32-byte data section`},
		{"dims overflow", kv(1, 0).tensor("t", 0, 0, 1<<32, 1<<32).data(32), `tensor "t" dims [4294967296 4294967296] overflow`},
		{"block size", kv(1, 0).tensor("t", 2, 0, 33).data(64), `first dim 33, not a multiple of the block size 32`},
		{"data section past end", kv(1, 0).tensor("t", 0, 0, 1).b, "data section would start at offset"},
	}
}

func TestParseGGUFHeaderMalformed(t *testing.T) {
	for _, tc := range malformedGGUF() {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseGGUFHeader(bytes.NewReader(tc.file), int64(len(tc.file)))
			if err == nil {
				t.Fatalf("parsed %+v, want error containing %q", g, tc.want)
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

func TestParseGGUFHeaderReaderErrors(t *testing.T) {
	if _, err := ParseGGUFHeader(errReaderAt{}, 100); err == nil || errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("failing reader: got %v", err)
	}
	file := validGGUF()
	if _, err := ParseGGUFHeader(bytes.NewReader(file[:40]), int64(len(file))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short reader: got %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestDetect(t *testing.T) {
	var st bytes.Buffer
	if err := WriteSafetensors(&st, nil, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		file []byte
		want string
		err  string
	}{
		{"safetensors", st.Bytes(), FormatSafetensors, ""},
		{"gguf", validGGUF(), FormatGGUF, ""},
		{"gguf magic only", []byte("GGUF"), FormatGGUF, ""},
		{"tiny", []byte("GG"), "", "too short"},
		{"zip", []byte("PK\x03\x04 some zip file"), "", "neither a GGUF magic nor a safetensors header"},
		{"safetensors cut in its header", withLen(1000, []byte("{}")), FormatSafetensors, ""},
		{"safetensors length over the limit", withLen(MaxSafetensorsHeader+1, []byte("{}")), "", "neither"},
		{"safetensors not brace", withLen(2, []byte("[]")), "", "neither"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Detect(bytes.NewReader(tc.file), int64(len(tc.file)))
			if tc.err != "" {
				if !errors.Is(err, ErrUnknownFormat) || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("got %q, %v; want ErrUnknownFormat containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func BenchmarkParseGGUFHeader(b *testing.B) {
	g := ggufHeader(3, 1, 1)
	g.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(100000)
	for i := range 100000 {
		g.str(fmt.Sprintf("token-%d", i))
	}
	g.tensor("t", 0, 0, 8)
	file := g.data(32)
	b.SetBytes(int64(len(file)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseGGUFHeader(bytes.NewReader(file), int64(len(file))); err != nil {
			b.Fatal(err)
		}
	}
}
