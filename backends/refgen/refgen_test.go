package refgen

import (
	"github.com/genfleet/genfleet/internal/testenv"

	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/modelformat"
)

// makeModel returns the bytes of a reference model.
func makeModel(tb testing.TB, size int64, seed uint64) []byte {
	tb.Helper()
	var buf bytes.Buffer
	buf.Grow(int(size))
	if err := Make(&buf, size, seed); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func TestMakeExactSize(t *testing.T) {
	for _, size := range []int64{MinSize, MinSize + 1, MinSize + 2, MinSize + 3, MinSize + 4, MinSize + 7, 1<<20 + 5, 3<<20 + 2} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := makeModel(t, size, 42)
			if int64(len(data)) != size {
				t.Fatalf("Make wrote %d bytes, want %d", len(data), size)
			}
			st, err := modelformat.ParseSafetensors(bytes.NewReader(data), size)
			if err != nil {
				t.Fatal(err)
			}
			if st.DataOffset%8 != 0 {
				t.Errorf("data starts at %d, not 8-aligned", st.DataOffset)
			}
			last := st.Tensors[len(st.Tensors)-1]
			if last.End != size {
				t.Errorf("last tensor ends at %d, want the file end %d (no gaps)", last.End, size)
			}
			if wantTail := (size - st.DataOffset) % 4; (last.Name == tailName) != (wantTail != 0) || (wantTail != 0 && last.Size() != wantTail) {
				t.Errorf("last tensor %+v, want a %d-byte tail", last, wantTail)
			}
			m, err := Open(data)
			if err != nil {
				t.Fatal(err)
			}
			if m.Seed != 42 || m.Params != (size-st.DataOffset)/4 || int64(len(m.Weights())) != 4*m.Params {
				t.Errorf("Open: seed %d params %d weights %d bytes", m.Seed, m.Params, len(m.Weights()))
			}
			if st.Metadata[MetaPad] != strings.Repeat(" ", len(st.Metadata[MetaPad])) {
				t.Errorf("pad metadata %q is not spaces", st.Metadata[MetaPad])
			}
		})
	}
}

func TestMakeTooSmall(t *testing.T) {
	err := Make(io.Discard, MinSize-1, 1)
	if err == nil || !strings.Contains(err.Error(), "below the minimum of 65536") {
		t.Errorf("got %v, want a below-minimum error", err)
	}
}

func TestMakeDeterministic(t *testing.T) {
	a := makeModel(t, 1<<20, 9)
	b := makeModel(t, 1<<20, 9)
	c := makeModel(t, 1<<20, 10)
	if !bytes.Equal(a, b) {
		t.Error("same size and seed gave different files")
	}
	if bytes.Equal(a, c) {
		t.Error("different seeds gave the same file")
	}
	// The weight stream is integer arithmetic and exact float32 scaling,
	// so this digest holds on every platform. It changes only if the
	// family's file format does.
	sum := sha256.Sum256(makeModel(t, MinSize+3, 1))
	if got, want := hex.EncodeToString(sum[:]), goldenMinModel; got != want {
		t.Errorf("sha256 of the %d-byte seed-1 model = %s, want %s", MinSize+3, got, want)
	}
}

const goldenMinModel = "cc65697547b655c44f35a74160fb39d66bdcaf7bf3f4910cf49af3ae1ef1645a"

func TestWeightsFollowSpec(t *testing.T) {
	const seed = 1234
	m, err := Open(makeModel(t, 1<<20+3, seed))
	if err != nil {
		t.Fatal(err)
	}
	w := m.Weights()
	lo, hi := float32(1), float32(-1)
	for i := int64(0); i < m.Params; i++ {
		v := math.Float32frombits(binary.LittleEndian.Uint32(w[4*i:]))
		lo, hi = min(lo, v), max(hi, v)
		if v < -1 || v >= 1 {
			t.Fatalf("weight %d = %v, outside [-1, 1)", i, v)
		}
		if i%4099 == 0 || i == m.Params-1 {
			r := splitmix64(seed, uint64(i/2))
			if i%2 == 1 {
				r >>= 32
			}
			want := float32(int32(uint32(r))>>8) / (1 << 23)
			if v != want {
				t.Fatalf("weight %d = %v, spec says %v", i, v, want)
			}
		}
	}
	if lo > -0.99 || hi < 0.99 {
		t.Errorf("weights span [%v, %v], want close to [-1, 1)", lo, hi)
	}
}

// prefixWriter keeps the first bytes written and counts the rest.
type prefixWriter struct {
	prefix []byte
	keep   int
	n      int64
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if room := p.keep - len(p.prefix); room > 0 {
		p.prefix = append(p.prefix, b[:min(room, len(b))]...)
	}
	p.n += int64(len(b))
	return len(b), nil
}

// ReadAt serves the kept prefix, enough for ParseSafetensors.
func (p *prefixWriter) ReadAt(b []byte, off int64) (int, error) {
	if off >= int64(len(p.prefix)) {
		return 0, io.EOF
	}
	n := copy(b, p.prefix[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func TestMakeSplitsBlocks(t *testing.T) {
	if testing.Short() || testenv.RaceEnabled {
		t.Skip("writes 130 MiB: skipped with -short and -race")
	}
	size := int64(2*BlockParams*4 + 1<<20 + 1)
	var pw prefixWriter
	pw.keep = 64 << 10
	if err := Make(&pw, size, 5); err != nil {
		t.Fatal(err)
	}
	if pw.n != size {
		t.Fatalf("wrote %d bytes, want %d", pw.n, size)
	}
	st, err := modelformat.ParseSafetensors(&pw, size)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tt := range st.Tensors {
		got = append(got, fmt.Sprintf("%s %s %v", tt.Name, tt.DType, tt.Shape))
	}
	params := (size - st.DataOffset) / 4
	want := []string{
		fmt.Sprintf("blocks.000.weight F32 [%d]", BlockParams),
		fmt.Sprintf("blocks.001.weight F32 [%d]", BlockParams),
		fmt.Sprintf("blocks.002.weight F32 [%d]", params-2*BlockParams),
		fmt.Sprintf("tail U8 [%d]", (size-st.DataOffset)%4),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tensors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// writeFile writes a safetensors file with refgen-like contents, for
// Open's error cases.
func writeFile(t *testing.T, meta map[string]string, specs ...modelformat.TensorSpec) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := modelformat.WriteSafetensors(&buf, meta, specs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zeros(name, dtype string, n int64) modelformat.TensorSpec {
	size, _ := modelformat.DTypeSize(dtype)
	return modelformat.TensorSpec{Name: name, DType: dtype, Shape: []int64{n}, Write: func(w io.Writer) error {
		_, err := w.Write(make([]byte, n*size))
		return err
	}}
}

func TestOpenErrors(t *testing.T) {
	meta := func(params string, kv ...string) map[string]string {
		m := map[string]string{MetaFamily: Family, MetaSeed: "1", MetaParams: params, MetaBlockParams: fmt.Sprint(BlockParams)}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "model is not a valid safetensors file: safetensors: file is 0 bytes"},
		{"gguf", []byte("GGUF\x03\x00\x00\x00 and more bytes"), "model is not a valid safetensors file"},
		{"other safetensors", writeFile(t, map[string]string{"format": "pt"}, zeros("w", "F32", 4)),
			`model is not a genfleet reference model (metadata genfleet.family = "", want "genfleet-refgen-v1")`},
		{"other family", writeFile(t, map[string]string{MetaFamily: "genfleet-refgen-v2"}, zeros("w", "F32", 4)),
			`(metadata genfleet.family = "genfleet-refgen-v2", want "genfleet-refgen-v1")`},
		{"bad seed", writeFile(t, meta("4", MetaSeed, "-1"), zeros("blocks.000.weight", "F32", 4)), `metadata genfleet.refgen.seed = "-1" is not a uint64`},
		{"bad params", writeFile(t, meta("0"), zeros("blocks.000.weight", "F32", 4)), `metadata genfleet.refgen.params = "0" is not a positive count`},
		{"other block size", writeFile(t, meta("4", MetaBlockParams, "1024"), zeros("blocks.000.weight", "F32", 4)), `metadata genfleet.refgen.block_params = "1024", this version reads only 16777216`},
		{"no blocks", writeFile(t, meta("4")), "model has no weight blocks"},
		{"wrong name", writeFile(t, meta("4"), zeros("blocks.001.weight", "F32", 4)), `tensor 0 (by offset) is "blocks.001.weight", want "blocks.000.weight"`},
		{"wrong dtype", writeFile(t, meta("4"), zeros("blocks.000.weight", "F16", 4)), `tensor "blocks.000.weight" is F16[4], want F32 [n]`},
		{"short middle block", writeFile(t, meta("8"), zeros("blocks.000.weight", "F32", 4), zeros("blocks.001.weight", "F32", 4)), `tensor "blocks.000.weight" has 4 weights, want 16777216`},
		{"params mismatch", writeFile(t, meta("5"), zeros("blocks.000.weight", "F32", 4)), `blocks hold 4 weights, metadata genfleet.refgen.params says 5`},
		{"extra tensor", writeFile(t, meta("4"), zeros("blocks.000.weight", "F32", 4), zeros("palette", "F32", 3)), `tensor 1 (by offset) is "palette", want "blocks.001.weight"`},
		{"big tail", writeFile(t, meta("4"), zeros("blocks.000.weight", "F32", 4), zeros("tail", "U8", 4)), `tensor "tail" is U8[4], want U8 of at most 3 bytes`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Open(tc.data)
			if err == nil {
				t.Fatalf("Open = %+v, want error", m)
			}
			if !errors.Is(err, backends.ErrBadModel) {
				t.Errorf("error %q does not wrap backends.ErrBadModel", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestOpenDoesNotCopy(t *testing.T) {
	data := makeModel(t, 1<<20, 3)
	m, err := Open(data)
	if err != nil {
		t.Fatal(err)
	}
	w := m.Weights()
	off := int(m.Header.Tensors[0].Begin)
	if &w[0] != &data[off] {
		t.Error("Weights does not alias the data given to Open")
	}
	if cap(w) != len(w) {
		t.Errorf("Weights has cap %d > len %d: an append could write into the mapping", cap(w), len(w))
	}
	allocs := testing.AllocsPerRun(10, func() {
		if _, err := Open(data); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 200 {
		t.Errorf("Open makes %v allocations per call", allocs)
	}
}

func BenchmarkMake(b *testing.B) {
	const size = 64 << 20
	b.SetBytes(size)
	for b.Loop() {
		if err := Make(io.Discard, size, 1); err != nil {
			b.Fatal(err)
		}
	}
}
