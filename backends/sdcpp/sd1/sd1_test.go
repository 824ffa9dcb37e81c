package sd1

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/modelformat"
)

// expected is one line of testdata/sd1-expected-tensors.tsv: a tensor the
// engine creates for an SD 1.x checkpoint, the ggml type it creates it
// with when no file says otherwise, and its dimensions innermost first.
type expected struct {
	typ string
	ne  [4]int64
}

// expectedTensors reads the engine's list, dumped from stable-diffusion.cpp
// at the commit its header line names.
func expectedTensors(t *testing.T) map[string]expected {
	t.Helper()
	f, err := os.Open("testdata/sd1-expected-tensors.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	if h := sc.Text(); !strings.HasPrefix(h, "# stable-diffusion.cpp 97d2990") {
		t.Fatalf("header line %q does not name the engine commit", h)
	}
	out := map[string]expected{}
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) != 7 || cols[0] != "EXPECT" {
			t.Fatalf("bad line %q", sc.Text())
		}
		e := expected{typ: cols[2]}
		for i := range e.ne {
			if e.ne[i], err = strconv.ParseInt(cols[3+i], 10, 64); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
		}
		out[cols[1]] = e
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// wantStorage is the type a checkpoint of type d must store a tensor in
// for the engine to use it as it is. The dump shows each tensor in the
// type the engine creates it with when no file gives one: a type the
// engine fixes (convolutions and the token table f16; norms, biases and
// the position table f32), which the file must match, except for linear
// weights (2-D, f32 in the dump), which the engine creates in the file's
// type, so a checkpoint of type d gives them d.
func wantStorage(name string, e expected, d DType) string {
	switch {
	case e.typ == "f16":
		return StorageF16
	case e.ne[1] > 1 && e.ne[2] == 1 && !strings.HasSuffix(name, ".position_embedding.weight"):
		return map[DType]string{F16: StorageF16, Q8_0: StorageQ8_0, Q4_0: StorageQ4_0}[d]
	}
	return StorageF32
}

// enginePrefix is the prefix the engine gives the names of a file passed
// with role's flag, as it ends up after the engine's name conversion
// (--vae names get "vae.", which it converts to "first_stage_model.").
var enginePrefix = map[string]string{"model": "", "diffusion_model": "model.diffusion_model.", "vae": "first_stage_model."}

// headerOnly reads as a file whose first bytes are the header and the
// rest zeros: enough for the header parsers, without making the data.
type headerOnly struct {
	h    []byte
	size int64
}

func (r headerOnly) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.size-off))
	clear(p[:n])
	if off < int64(len(r.h)) {
		copy(p[:n], r.h[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fileTensor is a tensor as a written file's header describes it.
type fileTensor struct {
	name, storage string
	ne            [4]int64
}

// parsedHeader parses the header f would be written with, with the
// format's own parser, as a file of the size f would have.
func parsedHeader(t *testing.T, f File, o Options) []fileTensor {
	t.Helper()
	h, err := f.header(o)
	if err != nil {
		t.Fatal(err)
	}
	size, err := f.Size(o)
	if err != nil {
		t.Fatal(err)
	}
	r := headerOnly{h, size}
	var out []fileTensor
	pad := func(dims []int64) (ne [4]int64) {
		if len(dims) > 4 {
			t.Fatalf("%d dims", len(dims))
		}
		for i := range ne {
			ne[i] = 1
			if i < len(dims) {
				ne[i] = dims[i]
			}
		}
		return ne
	}
	if o.dtype() == F16 {
		st, err := modelformat.ParseSafetensors(r, size)
		if err != nil {
			t.Fatal(err)
		}
		if st.Tensors[len(st.Tensors)-1].End != size {
			t.Fatalf("tensors end at %d, file is %d bytes", st.Tensors[len(st.Tensors)-1].End, size)
		}
		for _, ts := range st.Tensors {
			shape := slices.Clone(ts.Shape) // outermost first
			slices.Reverse(shape)
			out = append(out, fileTensor{ts.Name, ts.DType, pad(shape)})
		}
		return out
	}
	g, err := modelformat.ParseGGUFHeader(r, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, gt := range g.Tensors {
		dims := make([]int64, len(gt.Dims))
		for i, d := range gt.Dims {
			dims[i] = int64(d)
		}
		out = append(out, fileTensor{gt.Name, gt.Type.String(), pad(dims)})
	}
	return out
}

// Every tensor of every file, single and split, in every type, against
// the engine's list: each expected tensor exactly once, under the name
// the engine gives it, with its dimensions and the type it is used in.
func TestTensorsMatchEngine(t *testing.T) {
	want := expectedTensors(t)
	if len(want) != 1130 {
		t.Fatalf("%d expected tensors, want 1130", len(want))
	}
	for _, d := range DTypes() {
		for _, split := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/split=%v", d, split), func(t *testing.T) {
				seen := map[string]bool{}
				for _, f := range Layout(split) {
					prefix, ok := enginePrefix[f.Role]
					if !ok {
						t.Fatalf("file %s has role %q", f.Name, f.Role)
					}
					for _, ft := range parsedHeader(t, f, Options{Seed: 1, DType: d}) {
						name := ft.name
						if !strings.HasPrefix(name, prefix) {
							name = prefix + name
						}
						e, ok := want[name]
						switch {
						case !ok:
							t.Errorf("%s: %s (engine name %s) is not a tensor the engine expects", f.Name, ft.name, name)
							continue
						case seen[name]:
							t.Errorf("%s: %s written twice", f.Name, name)
						}
						seen[name] = true
						if ft.ne != e.ne {
							t.Errorf("%s: %s has dims %v, the engine expects %v", f.Name, name, ft.ne, e.ne)
						}
						if w := wantStorage(name, e, d); ft.storage != w {
							t.Errorf("%s: %s is %s, want %s (engine type %s)", f.Name, name, ft.storage, w, e.typ)
						}
					}
				}
				for name := range want {
					if !seen[name] {
						t.Errorf("%s is missing", name)
					}
				}
			})
		}
	}
}

// The split files hold the three parts under the names their roles need,
// and the single file holds everything under the checkpoint's names.
func TestLayout(t *testing.T) {
	single := Layout(false)
	if len(single) != 1 || single[0].Role != "model" || len(single[0].Tensors) != len(Tensors()) {
		t.Fatalf("single layout: %d files", len(single))
	}
	split := Layout(true)
	roles := map[string]Part{"diffusion_model": PartUNet, "model": PartTextEncoder, "vae": PartVAE}
	if len(split) != len(roles) {
		t.Fatalf("split layout has %d files, want %d", len(split), len(roles))
	}
	n := 0
	for _, f := range split {
		for _, tn := range f.Tensors {
			if tn.Part != roles[f.Role] {
				t.Errorf("%s (%s) holds %s of part %s", f.Name, f.Role, tn.Name, tn.Part)
			}
		}
		for _, name := range f.Names() {
			if strings.HasPrefix(name, "model.diffusion_model.") && f.Role != "model" || strings.HasPrefix(name, "first_stage_model.") {
				t.Errorf("%s (%s) keeps the checkpoint prefix on %s", f.Name, f.Role, name)
			}
		}
		n += len(f.Tensors)
	}
	if n != len(Tensors()) {
		t.Errorf("split files hold %d tensors, the checkpoint %d", n, len(Tensors()))
	}
}

// errEnough stops a write once the test has the bytes it wants.
var errEnough = errors.New("enough")

// capture keeps the bytes from off to off+n of what is written to it.
type capture struct {
	off, n, pos int64
	buf         bytes.Buffer
}

func (c *capture) Write(p []byte) (int, error) {
	start, end := c.pos, c.pos+int64(len(p))
	c.pos = end
	lo, hi := max(start, c.off), min(end, c.off+c.n)
	if lo < hi {
		c.buf.Write(p[lo-start : hi-start])
	}
	if c.pos >= c.off+c.n {
		return len(p), errEnough
	}
	return len(p), nil
}

// dataPrefix returns n bytes of f's data (after the header) written with
// o, without writing the rest of the file.
func dataPrefix(t *testing.T, f File, o Options, n int64) []byte {
	t.Helper()
	h, err := f.header(o)
	if err != nil {
		t.Fatal(err)
	}
	c := &capture{off: int64(len(h)), n: n}
	if err := f.Write(c, o, nil); !errors.Is(err, errEnough) {
		t.Fatalf("write: %v", err)
	}
	if int64(c.buf.Len()) != n {
		t.Fatalf("captured %d bytes, want %d", c.buf.Len(), n)
	}
	return c.buf.Bytes()
}

// The same seed gives the same bytes, another seed other bytes, for every
// type; a tensor has the same bytes in the single file and a split one.
func TestDeterministicPerSeed(t *testing.T) {
	const n = 3 << 20 // past the first tensors, into the first convolutions
	single := Layout(false)[0]
	for _, d := range DTypes() {
		a := sha256.Sum256(dataPrefix(t, single, Options{Seed: 7, DType: d}, n))
		b := sha256.Sum256(dataPrefix(t, single, Options{Seed: 7, DType: d}, n))
		c := sha256.Sum256(dataPrefix(t, single, Options{Seed: 8, DType: d}, n))
		if a != b {
			t.Errorf("%s: seed 7 twice gave different bytes", d)
		}
		if a == c {
			t.Errorf("%s: seeds 7 and 8 gave the same bytes", d)
		}
		ha, _ := single.header(Options{Seed: 7, DType: d})
		hb, _ := single.header(Options{Seed: 7, DType: d})
		if !bytes.Equal(ha, hb) {
			t.Errorf("%s: seed 7 twice gave different headers", d)
		}
	}

	// The UNet file starts with the same tensors as the single file.
	unet := Layout(true)[0]
	if unet.Tensors[0].Name != single.Tensors[0].Name {
		t.Fatalf("the split UNet starts with %s, the single file with %s", unet.Tensors[0].Name, single.Tensors[0].Name)
	}
	if !bytes.Equal(dataPrefix(t, unet, Options{Seed: 7}, n), dataPrefix(t, single, Options{Seed: 7}, n)) {
		t.Error("the UNet's tensors differ between the split and the single file")
	}
}

// Size is what Write writes, and the written file parses, for a small
// file of each type, whose tensor sizes do not all fill the alignment.
func TestSizeAndRoundTrip(t *testing.T) {
	var small []Tensor
	for _, tn := range Tensors() {
		if tn.NumElements() <= 1<<16 && len(small) < 40 {
			small = append(small, tn)
		}
	}
	f := File{Role: "model", Name: "small", Tensors: small}
	for _, d := range DTypes() {
		o := Options{Seed: 3, DType: d}
		var buf bytes.Buffer
		var last int64
		if err := f.Write(&buf, o, func(done int64) { last = done }); err != nil {
			t.Fatal(err)
		}
		size, err := f.Size(o)
		if err != nil {
			t.Fatal(err)
		}
		if int64(buf.Len()) != size {
			t.Errorf("%s: wrote %d bytes, Size says %d", d, buf.Len(), size)
		}
		if last > size {
			t.Errorf("%s: progress reported %d of %d bytes", d, last, size)
		}
		r := bytes.NewReader(buf.Bytes())
		if d == F16 {
			_, err = modelformat.ParseSafetensors(r, size)
		} else {
			_, err = modelformat.ParseGGUFHeader(r, size)
		}
		if err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
}

// tensorValues makes tn's values in storage type st and decodes the
// first of them, up to 1 MiB of data.
func tensorValues(t *testing.T, tn Tensor, st string) []float64 {
	t.Helper()
	c := &capture{n: min(storageBytes(st, tn.NumElements()), 34*18<<10)}
	if err := tn.writeData(c, st, 5, make([]byte, chunkBytes)); err != nil && !errors.Is(err, errEnough) {
		t.Fatal(err)
	}
	b := c.buf.Bytes()
	if int64(len(b)) != c.n {
		t.Fatalf("%s: %d bytes", tn.Name, len(b))
	}
	var v []float64
	switch st {
	case StorageF16:
		for i := 0; i < len(b); i += 2 {
			v = append(v, f16ToF64(uint16(b[i])|uint16(b[i+1])<<8))
		}
	case StorageF32:
		for i := 0; i < len(b); i += 4 {
			v = append(v, float64(math.Float32frombits(uint32(b[i])|uint32(b[i+1])<<8|uint32(b[i+2])<<16|uint32(b[i+3])<<24)))
		}
	case StorageQ8_0, StorageQ4_0:
		blk := 34
		if st == StorageQ4_0 {
			blk = 18
		}
		for i := 0; i < len(b); i += blk {
			d := f16ToF64(uint16(b[i]) | uint16(b[i+1])<<8)
			codes := b[i+2 : i+blk]
			if st == StorageQ8_0 {
				for _, c := range codes {
					v = append(v, d*float64(int8(c)))
				}
				continue
			}
			lo, hi := make([]float64, 16), make([]float64, 16)
			for j, c := range codes {
				lo[j], hi[j] = d*float64(int(c&15)-8), d*float64(int(c>>4)-8)
			}
			v = append(append(v, lo...), hi...)
		}
	}
	return v
}

func f16ToF64(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, mant := int(h>>10&31), float64(h&1023)
	switch exp {
	case 0:
		return sign * mant * math.Pow(2, -24)
	case 31:
		if mant != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * (1 + mant/1024) * math.Pow(2, float64(exp-15))
}

// The values have the spreads the engine needs to compute finite,
// non-flat images: weights about 1/sqrt(fan-in), norms about 1, biases
// small; in every storage type.
func TestValueSpreads(t *testing.T) {
	find := func(name string) Tensor {
		for _, tn := range Tensors() {
			if tn.Name == name {
				return tn
			}
		}
		t.Fatalf("no tensor %s", name)
		return Tensor{}
	}
	conv := find("model.diffusion_model.input_blocks.1.0.in_layers.2.weight")
	linear := find("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
	tests := []struct {
		tn        Tensor
		st        string
		mean, std float64
	}{
		{conv, StorageF16, 0, 1 / math.Sqrt(320*9)},
		{linear, StorageF16, 0, 1 / math.Sqrt(768)},
		{linear, StorageQ8_0, 0, 1 / math.Sqrt(768)},
		{linear, StorageQ4_0, 0, 1 / math.Sqrt(768)},
		{find("model.diffusion_model.out.0.weight"), StorageF32, normWeightMean, normWeightStd},
		{find("model.diffusion_model.out.0.bias"), StorageF32, 0, biasStd},
		{find("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"), StorageF16, 0, tokenEmbedStd},
		{find("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"), StorageF32, 0, positionEmbedStd},
	}
	for _, tc := range tests {
		v := tensorValues(t, tc.tn, tc.st)
		var sum, sum2 float64
		for _, x := range v {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				t.Fatalf("%s %s: value %v", tc.tn.Name, tc.st, x)
			}
			sum += x
			sum2 += x * x
		}
		n := float64(len(v))
		mean := sum / n
		std := math.Sqrt(sum2/n - mean*mean)
		// The spread of n draws is within 4 standard errors; q4_0 codes
		// are coarse, their spread within 15%.
		tol := max(0.03, 4/math.Sqrt(2*n))
		if tc.st == StorageQ4_0 {
			tol = 0.15
		}
		if math.Abs(mean-tc.mean) > 4*tc.std/math.Sqrt(n)+1e-3*tc.std || math.Abs(std-tc.std) > tol*tc.std {
			t.Errorf("%s %s: mean %.5g std %.5g, want about %.5g and %.5g", tc.tn.Name, tc.st, mean, std, tc.mean, tc.std)
		}
	}
}

func TestF32ToF16(t *testing.T) {
	tests := []struct {
		f float32
		h uint16
	}{
		{0, 0x0000},
		{float32(math.Copysign(0, -1)), 0x8000},
		{1, 0x3c00},
		{-2, 0xc000},
		{0.1, 0x2e66},
		{65504, 0x7bff},
		{65520, 0x7c00}, // rounds up past the largest half
		{1e6, 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{float32(math.NaN()), 0x7e00},
		{6.103515625e-05, 0x0400},  // smallest normal
		{5.960464477539063e-08, 1}, // smallest subnormal
		{2.9802322387695312e-08, 0},
		{1 + 1.0/2048, 0x3c00}, // a tie rounds to even (down)
		{1 + 3.0/2048, 0x3c02}, // a tie rounds to even (up)
		{2 - 1.0/4096, 0x4000}, // a carry into the exponent
	}
	for _, tc := range tests {
		if got := f32ToF16(tc.f); got != tc.h {
			t.Errorf("f32ToF16(%g) = %#04x, want %#04x", tc.f, got, tc.h)
		}
	}
	// Every half converts back to itself.
	for h := range 1 << 16 {
		x := f16ToF64(uint16(h))
		if math.IsNaN(x) {
			continue
		}
		if got := f32ToF16(float32(x)); got != uint16(h) {
			t.Fatalf("f32ToF16(%g) = %#04x, want %#04x", x, got, h)
		}
	}
}

func TestParseDType(t *testing.T) {
	for _, d := range DTypes() {
		if got, err := ParseDType(string(d)); err != nil || got != d {
			t.Errorf("ParseDType(%q) = %q, %v", d, got, err)
		}
	}
	if _, err := ParseDType("q5_1"); err == nil || !strings.Contains(err.Error(), "f16, q8_0, q4_0") {
		t.Errorf("ParseDType(q5_1): %v", err)
	}
}
