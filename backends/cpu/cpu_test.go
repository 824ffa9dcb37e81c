package cpu

import (
	"github.com/genfleet/genfleet/internal/testenv"

	"bytes"
	"context"
	"errors"
	"image"
	"runtime"
	"testing"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/refgen"
)

func makeModel(tb testing.TB, size int64) backends.Model {
	tb.Helper()
	var buf bytes.Buffer
	buf.Grow(int(size))
	if err := refgen.Make(&buf, size, 1); err != nil {
		tb.Fatal(err)
	}
	return backends.Model{Files: []backends.File{{Digest: "sha256:0123", Data: buf.Bytes(), Path: "unused"}}}
}

var params = backends.Params{Prompt: "a quiet harbour", Width: 40, Height: 24, Steps: 5, Seed: 3, Guidance: 7}

func generate(t *testing.T, m backends.Model, p backends.Params) *image.NRGBA {
	t.Helper()
	b, err := New()
	if err != nil {
		t.Fatal(err)
	}
	img, err := b.Generate(context.Background(), m, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	nrgba, ok := img.(*image.NRGBA)
	if !ok {
		t.Fatalf("Generate returned %T, want *image.NRGBA", img)
	}
	return nrgba
}

func TestRegistered(t *testing.T) {
	b, err := backends.New("cpu")
	if err != nil {
		t.Fatal(err)
	}
	if b.Name() != "cpu" || b.DeviceClass() != "cpu" {
		t.Errorf("Name %q DeviceClass %q", b.Name(), b.DeviceClass())
	}
}

func TestGenerate(t *testing.T) {
	m := makeModel(t, 1<<20)
	base := generate(t, m, params)
	if got := base.Bounds(); got != image.Rect(0, 0, params.Width, params.Height) {
		t.Errorf("bounds %v, want %dx%d", got, params.Width, params.Height)
	}
	tests := []struct {
		name string
		edit func(*backends.Params)
		same bool
	}{
		{"identical request", func(*backends.Params) {}, true},
		{"other seed", func(p *backends.Params) { p.Seed = 4 }, false},
		{"other prompt", func(p *backends.Params) { p.Prompt = "a loud harbour" }, false},
		{"other negative prompt", func(p *backends.Params) { p.NegativePrompt = "boats" }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := params
			tc.edit(&p)
			same := bytes.Equal(generate(t, m, p).Pix, base.Pix)
			if same != tc.same {
				t.Errorf("pixels identical = %v, want %v", same, tc.same)
			}
		})
	}
}

func TestGenerateSizes(t *testing.T) {
	m := makeModel(t, refgen.MinSize)
	for _, size := range [][2]int{{64, 64}, {8, 120}, {1, 1}} {
		p := params
		p.Width, p.Height = size[0], size[1]
		if got := generate(t, m, p).Bounds(); got != image.Rect(0, 0, size[0], size[1]) {
			t.Errorf("bounds %v, want %dx%d", got, size[0], size[1])
		}
	}
}

func TestGenerateDeterministicAcrossGOMAXPROCS(t *testing.T) {
	m := makeModel(t, 3<<20+2) // several chunks, so both procs sweep
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	one := generate(t, m, params)
	runtime.GOMAXPROCS(2)
	two := generate(t, m, params)
	if !bytes.Equal(one.Pix, two.Pix) {
		t.Error("pixels differ between GOMAXPROCS=1 and 2")
	}
}

func TestGenerateProgressAndCancel(t *testing.T) {
	m := makeModel(t, refgen.MinSize)
	b, _ := New()

	var calls [][2]int
	if _, err := b.Generate(context.Background(), m, params, func(step, total int) {
		calls = append(calls, [2]int{step, total})
	}); err != nil {
		t.Fatal(err)
	}
	if len(calls) != params.Steps || calls[0] != [2]int{1, params.Steps} || calls[len(calls)-1] != [2]int{params.Steps, params.Steps} {
		t.Errorf("progress calls %v, want 1..%d of %[2]d", calls, params.Steps)
	}

	ctx, cancel := context.WithCancel(context.Background())
	last := 0
	img, err := b.Generate(ctx, m, params, func(step, total int) {
		last = step
		if step == 2 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || img != nil {
		t.Errorf("cancelled at step 2: got %v, %v; want nil, context.Canceled", img, err)
	}
	if last != 2 {
		t.Errorf("ran to step %d after cancelling at step 2", last)
	}

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := b.Generate(ctx, m, params, func(int, int) { t.Error("progress called on a cancelled context") }); !errors.Is(err, context.Canceled) {
		t.Errorf("pre-cancelled: got %v, want context.Canceled", err)
	}
}

func TestGenerateBadModel(t *testing.T) {
	b, _ := New()
	for name, data := range map[string][]byte{
		"empty":       nil,
		"text":        []byte("this is not a model at all"),
		"gguf":        []byte("GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
		"safetensors": []byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := b.Generate(context.Background(), backends.Model{Files: []backends.File{{Data: data}}}, params, nil)
			if !errors.Is(err, backends.ErrBadModel) {
				t.Errorf("got %v, want ErrBadModel", err)
			}
		})
	}
	p := params
	p.Steps = 0
	if _, err := b.Generate(context.Background(), makeModel(t, refgen.MinSize), p, nil); err == nil || errors.Is(err, backends.ErrBadModel) {
		t.Errorf("zero steps: got %v, want a parameter error that is not ErrBadModel", err)
	}
}

// TestGenerateDoesNotCopyWeights checks that memory allocated per call is
// a small fraction of the model: the weights are read in place.
func TestGenerateDoesNotCopyWeights(t *testing.T) {
	size := int64(32 << 20)
	if testenv.RaceEnabled {
		size = 4 << 20
	}
	m := makeModel(t, size)
	b, _ := New()
	p := params
	p.Steps = 2
	run := func() {
		if _, err := b.Generate(context.Background(), m, p, nil); err != nil {
			t.Fatal(err)
		}
	}
	run() // warm up
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const runs = 3
	for range runs {
		run()
	}
	runtime.ReadMemStats(&after)
	perCall := (after.TotalAlloc - before.TotalAlloc) / runs
	if perCall > uint64(size/64) {
		t.Errorf("Generate allocates %d bytes per call with a %d-byte model; the weights must not be copied", perCall, size)
	}
	t.Logf("%d bytes allocated per call", perCall)
}

// BenchmarkGenerate reports the weight sweep rate: bytes/s counts the
// model size once per step.
func BenchmarkGenerate(b *testing.B) {
	const size = 64 << 20
	m := makeModel(b, size)
	be, _ := New()
	p := backends.Params{Prompt: "benchmark", Width: 64, Height: 64, Steps: 10, Seed: 1, Guidance: 7.5}
	b.SetBytes(size * int64(p.Steps))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := be.Generate(context.Background(), m, p, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// GenerateAll makes n images, image k the picture of seed+k alone, with
// progress over all of them; LoRAs and an init image reach the engine.
func TestGenerateAllAndFeatures(t *testing.T) {
	m := makeModel(t, 1<<20)
	b, _ := New()
	p := params
	p.N = 3
	var last [2]int
	imgs, err := backends.GenerateAll(context.Background(), b, m, p, func(step, total int) { last = [2]int{step, total} })
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 3 || last != [2]int{3 * p.Steps, 3 * p.Steps} {
		t.Fatalf("%d images, last progress %v", len(imgs), last)
	}
	for k, img := range imgs {
		q := params
		q.Seed = params.Seed + int64(k)
		if !bytes.Equal(img.(*image.NRGBA).Pix, generate(t, m, q).Pix) {
			t.Errorf("image %d differs from a job with seed %d alone", k, q.Seed)
		}
	}
	for _, f := range []string{backends.FeatureInitImage, backends.FeatureMask, backends.FeatureLoRAs} {
		if !backends.Supports(b, f) {
			t.Errorf("cpu does not list %s", f)
		}
	}
	var lora bytes.Buffer
	if err := refgen.MakeLoRA(&lora, refgen.LoRAOptions{Seed: 2}); err != nil {
		t.Fatal(err)
	}
	withLoRA := m
	withLoRA.LoRAs = []backends.LoRA{{Name: "style", Weight: 1, File: backends.File{Data: lora.Bytes()}}}
	if bytes.Equal(generate(t, withLoRA, params).Pix, generate(t, m, params).Pix) {
		t.Error("the LoRA did not change the image")
	}
	withLoRA.LoRAs[0].File.Data = m.Files[0].Data // a model, not a LoRA
	if _, err := b.Generate(context.Background(), withLoRA, params, nil); !errors.Is(err, backends.ErrBadModel) {
		t.Errorf("a model given as a LoRA: %v, want ErrBadModel", err)
	}
}
