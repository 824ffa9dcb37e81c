package refgen

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/modelformat"
)

func makeLoRA(tb testing.TB, o LoRAOptions) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := MakeLoRA(&buf, o); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func TestMakeLoRADeterministic(t *testing.T) {
	a := makeLoRA(t, LoRAOptions{Seed: 5})
	b := makeLoRA(t, LoRAOptions{Seed: 5})
	c := makeLoRA(t, LoRAOptions{Seed: 6})
	if !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("MakeLoRA is not a function of its options")
	}
	l, err := OpenLoRA(a)
	if err != nil {
		t.Fatal(err)
	}
	if l.Rank != 4 || len(l.Targets()) != 1 || l.Targets()[0] != "blocks.000.weight" {
		t.Fatalf("opened %+v", l.Targets())
	}
	for _, o := range []LoRAOptions{{Rank: -1}, {Cols: 12}, {Rows: 1 << 20, Cols: 1 << 10}, {Targets: []string{"tail"}}, {Targets: []string{"blocks.000.weight", "blocks.000.weight"}}} {
		if err := MakeLoRA(&bytes.Buffer{}, o); err == nil {
			t.Errorf("MakeLoRA(%+v) accepted", o)
		}
	}
}

// The LoRA's part of a step's sweep, computed from its factors, is the
// sweep of the model's weights with the delta added to them: the
// definition, checked against weights that are materialised here.
func TestLoRADeltaIsTheSweepOfTheAdaptedWeights(t *testing.T) {
	const params = 3*ChunkParams/2 + 3
	w := make([]byte, 4*params)
	fillWeights(w, 9, 0)
	m := &Model{Params: params, weights: w}
	o := LoRAOptions{Seed: 3, Rank: 3, Rows: 40, Cols: 64}
	l, err := OpenLoRA(makeLoRA(t, o))
	if err != nil {
		t.Fatal(err)
	}
	d, err := l.laneDelta(m)
	if err != nil {
		t.Fatal(err)
	}
	const alpha = 0.8
	adapted := append([]byte(nil), w...)
	tg := l.targets[0]
	for row := range o.Rows {
		for col := range o.Cols {
			var delta float64
			for k := range o.Rank {
				delta += float64(f32At(tg.up, row*o.Rank+k)) * float64(f32At(tg.down, k*o.Cols+col))
			}
			i := row*o.Cols + col
			v := float64(f32At(adapted, i)) + alpha*delta
			putF32(adapted, i, float32(v))
		}
	}
	var c [Lanes]float64
	for j := range c {
		c[j] = float64(float32(0.3*float64(j) - 1))
	}
	base := referenceSweep(w, &c)
	want := referenceSweep(adapted, &c)
	for j := range Lanes {
		got := base[j] + c[j]*alpha*d[j]
		// float32 rounding of the materialised weights is the only
		// difference: a few ulps of each of rows·cols weights.
		if diff := math.Abs(got - want[j]); diff > 1e-4*math.Max(1, math.Abs(want[j])) {
			t.Errorf("lane %d: from the factors %v, from adapted weights %v", j, got, want[j])
		}
	}
}

func putF32(b []byte, i int, v float32) {
	bits := math.Float32bits(v)
	b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(bits), byte(bits>>8), byte(bits>>16), byte(bits>>24)
}

// A job with a LoRA gives other bytes than without, the same bytes every
// time, and (at weight 0) the bytes without; the model's weights stay in a
// read-only mapping: a write to them would fault.
func TestLoRAChangesTheImageReproducibly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := os.WriteFile(path, makeModel(t, MinSize, 1), 0o444); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := syscall.Mmap(int(f.Fd()), 0, MinSize, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(data)
	m, err := Open(data)
	if err != nil {
		t.Fatal(err)
	}
	lora := makeLoRA(t, LoRAOptions{Seed: 1})
	run := func(ls ...backends.LoRA) []byte {
		g, err := m.NewGeneration("sha256:x", baseParams)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.ApplyLoRAs(ls); err != nil {
			t.Fatal(err)
		}
		for !g.Done() {
			if err := g.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		return g.Render().Pix
	}
	plain := run()
	with := run(backends.LoRA{Name: "style", Weight: 0.8, File: backends.File{Data: lora}})
	again := run(backends.LoRA{Name: "style", Weight: 0.8, File: backends.File{Data: lora}})
	zero := run(backends.LoRA{Name: "style", Weight: 0, File: backends.File{Data: lora}})
	other := run(backends.LoRA{Name: "style", Weight: -0.8, File: backends.File{Data: lora}})
	switch {
	case bytes.Equal(plain, with):
		t.Fatal("the LoRA did not change the image")
	case !bytes.Equal(with, again):
		t.Fatal("the same job with the LoRA gave different bytes")
	case !bytes.Equal(plain, zero):
		t.Fatal("a LoRA at weight 0 changed the image")
	case bytes.Equal(with, other):
		t.Fatal("the LoRA's weight does not matter")
	}
}

func TestLoRAErrors(t *testing.T) {
	m, err := Open(makeModel(t, MinSize, 1))
	if err != nil {
		t.Fatal(err)
	}
	good := makeLoRA(t, LoRAOptions{})
	far := makeLoRA(t, LoRAOptions{Targets: []string{"blocks.001.weight"}})
	big := makeLoRA(t, LoRAOptions{Rows: 64, Cols: 512})
	loraFile := func(meta map[string]string, specs ...modelformat.TensorSpec) []byte {
		var buf bytes.Buffer
		if err := modelformat.WriteSafetensors(&buf, meta, specs); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	meta := map[string]string{MetaFamily: LoRAFamily, MetaLoRARank: "2"}
	t2 := zeros2
	for name, data := range map[string][]byte{
		"not safetensors":   []byte("hello"),
		"a model":           makeModel(t, MinSize, 1),
		"no rank":           loraFile(map[string]string{MetaFamily: LoRAFamily}, t2("blocks.000.weight.lora_down", 2, 8), t2("blocks.000.weight.lora_up", 4, 2)),
		"up without down":   loraFile(meta, t2("blocks.000.weight.lora_up", 4, 2)),
		"down without up":   loraFile(meta, t2("blocks.000.weight.lora_down", 2, 8)),
		"cols not lanes":    loraFile(meta, t2("blocks.000.weight.lora_down", 2, 12), t2("blocks.000.weight.lora_up", 4, 2)),
		"rank mismatch":     loraFile(meta, t2("blocks.000.weight.lora_down", 3, 8), t2("blocks.000.weight.lora_up", 4, 2)),
		"stray tensor":      loraFile(meta, t2("blocks.000.weight.lora_down", 2, 8), t2("blocks.000.weight.lora_up", 4, 2), t2("x", 1, 1)),
		"not a block":       loraFile(meta, t2("tail.lora_down", 2, 8), t2("tail.lora_up", 4, 2)),
		"block name padded": loraFile(meta, t2("blocks.0000.weight.lora_down", 2, 8), t2("blocks.0000.weight.lora_up", 4, 2)),
	} {
		if _, err := OpenLoRA(data); !errors.Is(err, backends.ErrBadModel) {
			t.Errorf("%s: OpenLoRA = %v, want ErrBadModel", name, err)
		}
	}
	for name, data := range map[string][]byte{"a block the model lacks": far, "more than the block": big} {
		g, err := m.NewGeneration("", baseParams)
		if err != nil {
			t.Fatal(err)
		}
		err = g.ApplyLoRAs([]backends.LoRA{{Name: "x", Weight: 1, File: backends.File{Data: data}}})
		if !errors.Is(err, backends.ErrBadModel) {
			t.Errorf("%s: ApplyLoRAs = %v, want ErrBadModel", name, err)
		}
	}
	g, _ := m.NewGeneration("", baseParams)
	_ = g.Step(context.Background())
	l, _ := OpenLoRA(good)
	if err := g.ApplyLoRA(l, 1); err == nil {
		t.Error("ApplyLoRA after a step accepted")
	}
}

func zeros2(name string, a, b int64) modelformat.TensorSpec {
	return modelformat.TensorSpec{Name: name, DType: "F32", Shape: []int64{a, b}, Write: func(w io.Writer) error {
		_, err := w.Write(make([]byte, 4*a*b))
		return err
	}}
}

// FuzzOpenLoRA: any bytes either open as a LoRA whose factors lie inside
// the data, or fail with ErrBadModel; never a panic.
func FuzzOpenLoRA(f *testing.F) {
	f.Add(makeLoRA(f, LoRAOptions{}))
	f.Add(makeLoRA(f, LoRAOptions{Rank: 1, Rows: 1, Cols: 8, Targets: []string{"blocks.000.weight", "blocks.002.weight"}}))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := OpenLoRA(data)
		if err != nil {
			if !errors.Is(err, backends.ErrBadModel) {
				t.Fatalf("error %v does not wrap ErrBadModel", err)
			}
			return
		}
		m := &Model{Params: 4 * BlockParams}
		_, _ = l.laneDelta(m)
	})
}

func solid(w, h int, c color.Color) image.Image {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	return img
}

// Image to image: strength 0 gives the init image, strength 1 the
// text-to-image picture, a black mask keeps the init image where it is
// black; inputs of the wrong size are refused.
func TestBlend(t *testing.T) {
	m, err := Open(makeModel(t, MinSize, 1))
	if err != nil {
		t.Fatal(err)
	}
	w, h := baseParams.Width, baseParams.Height
	init := &backends.Image{Image: solid(w, h, color.NRGBA{10, 200, 30, 255})}
	txt := generate(t, m, "", baseParams)
	p := baseParams
	p.InitImage = init
	p.Strength = 0
	for i, v := range generate(t, m, "", p).Pix {
		want := []uint8{10, 200, 30, 255}[i%4]
		if v != want {
			t.Fatalf("strength 0: byte %d is %d, want the init image's %d", i, v, want)
		}
	}
	p.Strength = 1
	if !bytes.Equal(generate(t, m, "", p).Pix, txt.Pix) {
		t.Fatal("strength 1 without a mask is not the text-to-image picture")
	}
	p.Strength = 0.5
	half := generate(t, m, "", p)
	if bytes.Equal(half.Pix, txt.Pix) || !bytes.Equal(half.Pix, generate(t, m, "", p).Pix) {
		t.Fatal("strength 0.5 is not a reproducible blend")
	}
	// Left half black (kept), right half white (changed).
	mask := image.NewGray(image.Rect(0, 0, w, h))
	for y := range h {
		for x := w / 2; x < w; x++ {
			mask.SetGray(x, y, color.Gray{255})
		}
	}
	p.Strength, p.Mask = 1, &backends.Image{Image: mask}
	in := generate(t, m, "", p)
	for y := range h {
		for x := range w {
			got := in.NRGBAAt(x, y)
			want := txt.NRGBAAt(x, y)
			if x < w/2 {
				want = color.NRGBA{10, 200, 30, 255}
			}
			if got != want {
				t.Fatalf("inpainting at (%d,%d) = %v, want %v", x, y, got, want)
			}
		}
	}
	for name, q := range map[string]backends.Params{
		"small init":     {InitImage: &backends.Image{Image: solid(w-8, h, color.White)}, Strength: 1},
		"small mask":     {InitImage: init, Mask: &backends.Image{Image: solid(w, h-8, color.White)}, Strength: 1},
		"mask only":      {Mask: &backends.Image{Image: solid(w, h, color.White)}},
		"strength 2":     {InitImage: init, Strength: 2},
		"engine options": {Options: map[string]any{"clip_skip": 2.0}},
	} {
		pp := baseParams
		pp.InitImage, pp.Mask, pp.Strength, pp.Options = q.InitImage, q.Mask, q.Strength, q.Options
		if _, err := m.NewGeneration("", pp); !errors.Is(err, backends.ErrBadParams) {
			t.Errorf("%s: NewGeneration = %v, want ErrBadParams", name, err)
		}
	}
}
