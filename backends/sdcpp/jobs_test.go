package sdcpp

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/sdcpp/spec"
)

func pngFile(t *testing.T, w, h int, c color.Color) *backends.Image {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(c), image.Point{}, draw.Src)
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return &backends.Image{Data: buf.Bytes(), Format: "png", Digest: "sha256:x", Image: img}
}

func pixels(img image.Image) []byte {
	n := image.NewNRGBA(img.Bounds())
	draw.Draw(n, n.Bounds(), img, img.Bounds().Min, draw.Src)
	return n.Pix
}

// loraFile writes a LoRA as the cache holds it: a blob without extension.
func loraFile(t *testing.T, name string, data []byte) backends.LoRA {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sha256-"+name)
	if data == nil {
		writeSafetensors(t, p, "lora_unet_down_blocks_0.lora_down.weight", "lora_unet_down_blocks_0.lora_up.weight")
	} else if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
	return backends.LoRA{Name: name, Weight: 0.5, File: backends.File{Name: name + ".safetensors", Digest: "sha256:" + name + "0123", Path: p}}
}

// The features reach the engine the way it takes them, in both of its
// programs: n images in one run whose image k is the image of seed+k
// alone, an init image, mask and strength, LoRAs from the run's LoRA
// directory, options; progress counts every image's steps; the two
// programs make the same images; nothing is left behind.
func TestBatchAndFeatures(t *testing.T) {
	m, _ := model(t, "sd15", "model")
	m.LoRAs = []backends.LoRA{loraFile(t, "style", nil)}
	p := params()
	p.N, p.Strength = 3, 0.5
	p.InitImage = pngFile(t, p.Width, p.Height, color.NRGBA{200, 30, 30, 255})
	p.Mask = pngFile(t, p.Width, p.Height, color.White)
	p.Options = map[string]any{"clip_skip": 2.0, "vae_tiling": true, "eta": 0.25}
	sampled := spec.SampledSteps(p.Steps, true, p.Strength)

	results := map[string][][]byte{}
	for _, mode := range []string{ModeProcess, ModeServer} {
		t.Run(mode, func(t *testing.T) {
			log := engineLog(t)
			b := newBackend(t, Config{Mode: mode})
			var prog progressLog
			imgs, err := b.GenerateBatch(t.Context(), m, p, prog.fn)
			if err != nil {
				t.Fatal(err)
			}
			if len(imgs) != 3 {
				t.Fatalf("%d images, want 3", len(imgs))
			}
			var got [][]byte
			for _, img := range imgs {
				got = append(got, pixels(img))
			}
			results[mode] = got
			steps := strings.Fields(prog.String())
			if want := 3 * sampled; len(steps) != want || steps[len(steps)-1] != fmtStep(want, want) {
				t.Errorf("progress %q, want 1/%d … %d/%d", prog.String(), want, want, want)
			}
			runs := log()
			var all []string
			for _, r := range runs {
				all = append(all, r.Args...)
			}
			joined := strings.Join(all, " ")
			// An image-to-image job runs the engine once per image (its
			// batch would sample the init image with the first seed only).
			switch mode {
			case ModeProcess:
				if len(runs) != 3 {
					t.Fatalf("%d engine runs for 3 image-to-image images, want 3: %+v", len(runs), runs)
				}
				args := runs[1].Args
				for flag, want := range map[string]string{spec.FlagSeed: "43", spec.FlagStrength: "0.5", "--clip-skip": "2", "--eta": "0.25"} {
					if got, _ := argValue(args, flag); got != want {
						t.Errorf("%s = %q, want %q", flag, got, want)
					}
				}
				if slices.Contains(args, spec.FlagBatchCount) {
					t.Errorf("an image-to-image run got %s: %v", spec.FlagBatchCount, args)
				}
				for _, f := range []string{spec.FlagInitImg, spec.FlagMask, spec.FlagLoraModelDir, "--vae-tiling"} {
					if !slices.Contains(args, f) {
						t.Errorf("no %s in %v", f, args)
					}
				}
				if prompt, _ := argValue(args, spec.FlagPrompt); !strings.Contains(prompt, "<lora:style0123.safetensors:0.5>") {
					t.Errorf("prompt %q lacks the LoRA's tag", prompt)
				}
			case ModeServer:
				for _, want := range []string{"img2img", "batch_size=1", "seed=42", "seed=43", "seed=44", "lora=[{style0123.safetensors 0.5}]", "init_images=1", "mask=true",
					`"clip_skip":2`, `"eta":0.25`, `"vae_tiling_params":{"enabled":true}`} {
					if !strings.Contains(joined, want) {
						t.Errorf("the server's requests %q lack %q", joined, want)
					}
				}
			}
			// Image k is the image of seed+k alone.
			one := p
			one.N, one.Seed = 1, p.Seed+1
			img, err := b.Generate(t.Context(), m, one, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pixels(img), got[1]) || bytes.Equal(got[0], got[1]) {
				t.Error("image 1 of the batch is not the image of seed+1 alone, or two seeds gave one image")
			}
			// Without the LoRA, another image.
			noLoRA := m
			noLoRA.LoRAs = nil
			img, err = b.Generate(t.Context(), noLoRA, one, nil)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(pixels(img), got[1]) {
				t.Error("the LoRA did not change the image")
			}
			b.Close()
			left, _ := filepath.Glob(filepath.Join(b.cfg.TmpDir, "*"))
			if len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
	if len(results) == 2 && !slices.EqualFunc(results[ModeProcess], results[ModeServer], bytes.Equal) {
		t.Error("sd-cli and sd-server made different images for one job")
	}
}

// A text-to-image job of n images is one engine run with the engine's
// batch count, whose image k is the image of seed+k alone; the engine's
// own batch of an image-to-image job is not (it samples the init image
// once, with the first seed), which is why such jobs run per image.
func TestTextToImageBatchIsOneRun(t *testing.T) {
	m, _ := model(t, "sd15", "model")
	for _, mode := range []string{ModeProcess, ModeServer} {
		t.Run(mode, func(t *testing.T) {
			log := engineLog(t)
			b := newBackend(t, Config{Mode: mode})
			p := params()
			p.N = 4
			var prog progressLog
			imgs, err := b.GenerateBatch(t.Context(), m, p, prog.fn)
			if err != nil || len(imgs) != 4 {
				t.Fatalf("%d images, %v", len(imgs), err)
			}
			if got := prog.String(); !strings.HasSuffix(got, " 24/24") || len(strings.Fields(got)) != 24 {
				t.Errorf("progress %q, want 1/24 … 24/24", got)
			}
			runs := log()
			switch mode {
			case ModeProcess:
				if len(runs) != 1 {
					t.Fatalf("%d engine runs, want 1", len(runs))
				}
				if got, _ := argValue(runs[0].Args, spec.FlagBatchCount); got != "4" {
					t.Errorf("%s = %q, want 4", spec.FlagBatchCount, got)
				}
			case ModeServer:
				var reqs int
				for _, r := range runs {
					if len(r.Args) > 0 && r.Args[0] == "txt2img" {
						reqs++
						if !slices.Contains(r.Args, "batch_size=4") {
							t.Errorf("request %v lacks batch_size=4", r.Args)
						}
					}
				}
				if reqs != 1 {
					t.Errorf("%d requests, want 1", reqs)
				}
			}
			one := p
			one.N, one.Seed = 1, p.Seed+2
			img, err := b.Generate(t.Context(), m, one, nil)
			if err != nil || !bytes.Equal(pixels(img), pixels(imgs[2])) {
				t.Errorf("image 2 of the batch is not the image of seed+2 alone (%v)", err)
			}
			// The engine's own batch with an init image: image 1 is not
			// the job of seed+1 alone.
			p.InitImage, p.Strength = pngFile(t, p.Width, p.Height, color.Black), 0.5
			margs, _ := modelArgs(m)
			batch, err := b.run(t.Context(), m, margs, p, nil)
			if err != nil || len(batch) != 4 {
				t.Fatalf("an engine batch with an init image: %d images, %v", len(batch), err)
			}
			one.InitImage, one.Strength, one.Seed = p.InitImage, p.Strength, p.Seed+1
			img, err = b.Generate(t.Context(), m, one, nil)
			if err != nil || bytes.Equal(pixels(img), pixels(batch[1])) {
				t.Errorf("the stand-in's image-to-image batch gave image 1 the image of seed+1 alone (%v): it no longer does what the engine does", err)
			}
		})
	}
}

func fmtStep(step, total int) string { return fmt.Sprintf("%d/%d", step, total) }

// A LoRA file the engine cannot read fails the job for good (the engine
// itself would go on without it); one it does not find is retried.
func TestLoRATrouble(t *testing.T) {
	m, _ := model(t, "sd15", "model")
	for _, mode := range []string{ModeProcess, ModeServer} {
		t.Run(mode, func(t *testing.T) {
			b := newBackend(t, Config{Mode: mode})
			bad := m
			bad.LoRAs = []backends.LoRA{loraFile(t, "garbage", []byte("not a lora"))}
			if _, err := b.Generate(t.Context(), bad, params(), nil); !errors.Is(err, backends.ErrBadModel) || !strings.Contains(err.Error(), "load lora tensors") {
				t.Errorf("an unreadable LoRA: %v, want ErrBadModel with the engine's line", err)
			}
		})
	}
	b := newBackend(t, Config{Mode: ModeProcess})
	gone := m
	gone.LoRAs = []backends.LoRA{loraFile(t, "gone", nil)}
	os.Remove(gone.LoRAs[0].File.Path)
	_, err := b.Generate(t.Context(), gone, params(), nil)
	if err == nil || errors.Is(err, backends.ErrBadModel) || errors.Is(err, backends.ErrBadParams) || !strings.Contains(err.Error(), "can not found lora") {
		t.Errorf("a LoRA not found: %v, want a retried error with the engine's line", err)
	}
	// Refused before the engine runs.
	for name, mutate := range map[string]func(*backends.Params){
		"option not in the table": func(p *backends.Params) { p.Options = map[string]any{"threads": 8.0} },
		"init image of another size": func(p *backends.Params) {
			p.InitImage, p.Strength = pngFile(t, 64, 64, color.Black), 0.5
		},
		"strength above 1": func(p *backends.Params) {
			p.InitImage, p.Strength = pngFile(t, 64, 128, color.Black), 1.5
		},
		"LoRA tag in the prompt": func(p *backends.Params) { p.Prompt = "a cat <lora:/etc/passwd:1>" },
	} {
		p := params()
		mutate(&p)
		if _, err := b.Generate(t.Context(), m, p, nil); !errors.Is(err, backends.ErrBadParams) {
			t.Errorf("%s: %v, want ErrBadParams", name, err)
		}
	}
}

// The engine's features are named as the backends package names them.
func TestFeatureNames(t *testing.T) {
	want := []string{backends.FeatureInitImage, backends.FeatureMask, backends.FeatureLoRAs}
	if !slices.Equal(spec.Features, want) {
		t.Errorf("spec.Features = %v, want %v", spec.Features, want)
	}
}
