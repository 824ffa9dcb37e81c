package refgen

import (
	"context"
	"encoding/binary"
	"errors"
	"image"
	"math"
	"runtime"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/backends"
)

var baseParams = backends.Params{Prompt: "a lighthouse in fog", Width: 48, Height: 32, Steps: 4, Seed: 11, Guidance: 7.5}

// generate runs every step and renders.
func generate(t testing.TB, m *Model, digest string, p backends.Params) *image.NRGBA {
	t.Helper()
	g, err := m.NewGeneration(digest, p)
	if err != nil {
		t.Fatal(err)
	}
	for !g.Done() {
		if err := g.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return g.Render()
}

func withProcs(n int, f func()) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n))
	f()
}

// referenceSweep is the sweep as the package doc defines it, written as
// plainly as possible.
func referenceSweep(w []byte, c *[Lanes]float64) [Lanes]float64 {
	var total [Lanes]float64
	n := len(w) / 4
	for first := 0; first < n; first += ChunkParams {
		var part [Lanes]float64
		for i := first; i < min(first+ChunkParams, n); i++ {
			part[(i-first)%Lanes] += float64(math.Float32frombits(binary.LittleEndian.Uint32(w[4*i:]))) * c[(i-first)%Lanes]
		}
		for j := range Lanes {
			total[j] += part[j]
		}
	}
	return total
}

func TestSweepMatchesReference(t *testing.T) {
	tests := []struct {
		name   string
		params int64
		round  int
	}{
		{"one chunk, ragged lanes", 100003, roundChunks},
		{"three chunks", 2*ChunkParams + 5, roundChunks},
		{"rounds of two chunks", 4*ChunkParams + 1, 2},
		{"rounds of one chunk", 3*ChunkParams - 1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := make([]byte, 4*tc.params)
			fillWeights(w, 77, 0)
			m := &Model{Params: tc.params, weights: w}
			g, err := m.NewGeneration("", baseParams)
			if err != nil {
				t.Fatal(err)
			}
			g.round = tc.round
			c := g.coefficients(1)
			want := referenceSweep(w, &c)
			for _, procs := range []int{1, 2, 3} {
				withProcs(procs, func() {
					got, err := g.sweep(context.Background(), &c)
					if err != nil {
						t.Fatal(err)
					}
					if got != want {
						t.Errorf("GOMAXPROCS=%d: sweep = %v, reference %v", procs, got, want)
					}
				})
			}
		})
	}
}

func TestGenerationDeterministicAcrossGOMAXPROCS(t *testing.T) {
	m, err := Open(makeModel(t, 2<<20+1, 8))
	if err != nil {
		t.Fatal(err)
	}
	var one, two *image.NRGBA
	withProcs(1, func() { one = generate(t, m, "sha256:ab", baseParams) })
	withProcs(2, func() { two = generate(t, m, "sha256:ab", baseParams) })
	if string(one.Pix) != string(two.Pix) {
		t.Error("images differ between GOMAXPROCS=1 and 2")
	}
}

// meanAbsDiff is the mean absolute difference of two images' RGB bytes.
func meanAbsDiff(a, b *image.NRGBA) float64 {
	var sum float64
	for i := range a.Pix {
		sum += math.Abs(float64(a.Pix[i]) - float64(b.Pix[i]))
	}
	return sum / float64(len(a.Pix)) * 4 / 3
}

func TestGenerationVaries(t *testing.T) {
	m, err := Open(makeModel(t, 1<<20, 8))
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(makeModel(t, 1<<20, 9))
	if err != nil {
		t.Fatal(err)
	}
	base := generate(t, m, "sha256:ab", baseParams)
	if again := generate(t, m, "sha256:ab", baseParams); string(again.Pix) != string(base.Pix) {
		t.Fatal("the same request gave different images")
	}
	vary := func(f func(*backends.Params)) backends.Params {
		p := baseParams
		f(&p)
		return p
	}
	tests := []struct {
		name   string
		model  *Model
		digest string
		p      backends.Params
	}{
		{"seed", m, "sha256:ab", vary(func(p *backends.Params) { p.Seed++ })},
		{"prompt", m, "sha256:ab", vary(func(p *backends.Params) { p.Prompt = "a lighthouse in sun" })},
		{"negative prompt", m, "sha256:ab", vary(func(p *backends.Params) { p.NegativePrompt = "blurry" })},
		{"guidance", m, "sha256:ab", vary(func(p *backends.Params) { p.Guidance = 2 })},
		{"steps", m, "sha256:ab", vary(func(p *backends.Params) { p.Steps = 5 })},
		{"digest", m, "sha256:cd", baseParams},
		{"weights", other, "sha256:ab", baseParams},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := generate(t, tc.model, tc.digest, tc.p)
			if d := meanAbsDiff(base, img); d < 4 {
				t.Errorf("changing the %s moved pixels by %.2f on average, want a clear difference", tc.name, d)
			}
		})
	}
}

func TestRender(t *testing.T) {
	m, err := Open(makeModel(t, MinSize, 1))
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range [][2]int{{1, 1}, {3, 200}, {200, 3}, {64, 64}} {
		p := baseParams
		p.Width, p.Height = size[0], size[1]
		img := generate(t, m, "", p)
		if got := img.Bounds(); got != image.Rect(0, 0, size[0], size[1]) {
			t.Errorf("bounds %v, want %dx%d", got, size[0], size[1])
		}
		for i := 3; i < len(img.Pix); i += 4 {
			if img.Pix[i] != 255 {
				t.Fatalf("%dx%d: pixel %d is not opaque", size[0], size[1], i/4)
			}
		}
	}
	// A flat image means the palette or latent collapsed.
	p := baseParams
	p.Width, p.Height = 64, 64
	img := generate(t, m, "", p)
	lo, hi := [3]uint8{255, 255, 255}, [3]uint8{}
	for i := 0; i < len(img.Pix); i += 4 {
		for c := range 3 {
			lo[c], hi[c] = min(lo[c], img.Pix[i+c]), max(hi[c], img.Pix[i+c])
		}
	}
	if spread := max(int(hi[0])-int(lo[0]), int(hi[1])-int(lo[1]), int(hi[2])-int(lo[2])); spread < 40 {
		t.Errorf("colours span only %d levels (%v..%v)", spread, lo, hi)
	}
}

func TestStep(t *testing.T) {
	m, err := Open(makeModel(t, MinSize, 1))
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.NewGeneration("", baseParams)
	if err != nil {
		t.Fatal(err)
	}
	if g.Steps() != baseParams.Steps || g.StepsDone() != 0 || g.Done() {
		t.Fatalf("new generation: steps %d done %d", g.Steps(), g.StepsDone())
	}
	for i := 1; i <= baseParams.Steps; i++ {
		if err := g.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
		if g.StepsDone() != i {
			t.Fatalf("after step %d StepsDone = %d", i, g.StepsDone())
		}
	}
	if err := g.Step(context.Background()); !errors.Is(err, ErrStepsDone) {
		t.Errorf("extra Step = %v, want ErrStepsDone", err)
	}

	g, _ = m.NewGeneration("", baseParams)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 2 {
		if err := g.Step(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Step with a cancelled context = %v, want context.Canceled", err)
		}
	}
	if g.StepsDone() != 0 {
		t.Errorf("cancelled step counted: StepsDone = %d", g.StepsDone())
	}
	if err := g.Step(context.Background()); !errors.Is(err, context.Canceled) {
		t.Errorf("Step after an interrupted one = %v, want the interruption's error", err)
	}
}

func TestNewGenerationErrors(t *testing.T) {
	m, err := Open(makeModel(t, MinSize, 1))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(*backends.Params)
		want string
	}{
		{"zero width", func(p *backends.Params) { p.Width = 0 }, "image size 0x32 is outside 1..8192"},
		{"huge height", func(p *backends.Params) { p.Height = 10000 }, "image size 48x10000"},
		{"zero steps", func(p *backends.Params) { p.Steps = 0 }, "steps 0 is outside 1..1000"},
		{"too many steps", func(p *backends.Params) { p.Steps = 1001 }, "steps 1001"},
		{"NaN guidance", func(p *backends.Params) { p.Guidance = math.NaN() }, "guidance NaN is not a finite number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := baseParams
			tc.edit(&p)
			if _, err := m.NewGeneration("", p); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func BenchmarkStep(b *testing.B) {
	m, err := Open(makeModel(b, 64<<20, 1))
	if err != nil {
		b.Fatal(err)
	}
	p := baseParams
	p.Steps = MaxSteps
	g, err := m.NewGeneration("", p)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(m.Weights())))
	for b.Loop() {
		if g.Done() {
			g, _ = m.NewGeneration("", p)
		}
		if err := g.Step(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRender512(b *testing.B) {
	m, err := Open(makeModel(b, MinSize, 1))
	if err != nil {
		b.Fatal(err)
	}
	p := baseParams
	p.Width, p.Height = 512, 512
	g, err := m.NewGeneration("", p)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		g.Render()
	}
}
