package main

import (
	"bufio"
	"context"
	"image"
	"image/png"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/backends/sdcpp/sd1"
	"github.com/genfleet/genfleet/modelformat"
)

func TestModelsMakeSD1Flags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"size with sd1", []string{"--arch", "sd1", "--size", "1MiB", "--out", filepath.Join(dir, "a")}, 1, "--size applies to --arch refgen only"},
		{"split with refgen", []string{"--split", "--out", filepath.Join(dir, "a")}, 1, "--split applies to --arch sd1 only"},
		{"dtype with refgen", []string{"--arch", "refgen", "--dtype", "q8_0", "--out", filepath.Join(dir, "a")}, 1, "--dtype applies to --arch sd1 only"},
		{"unknown dtype", []string{"--arch", "sd1", "--dtype", "q5_1", "--out", filepath.Join(dir, "a")}, 1, `unknown type "q5_1" (choices: f16, q8_0, q4_0)`},
		{"unknown arch", []string{"--arch", "sdxl", "--out", filepath.Join(dir, "a")}, 1, `--arch "sdxl": want refgen, refgen-lora or sd1`},
		{"directory without split", []string{"--arch", "sd1", "--out", dir}, 1, "is a directory; give a file name, or --split"},
		{"no out", []string{"--arch", "sd1"}, 2, "--out is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(append([]string{"models", "make"}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want %d with %q\nstdout: %s\nstderr: %s", code, tc.code, tc.want, out, stderr)
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused makes left files: %v", entries)
	}
}

// writeNamesOnly writes, for each file of the sd1 split layout, a small
// safetensors file with the same tensor names (each tensor 1×innermost),
// and returns role → path.
func writeNamesOnly(t *testing.T, dir string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	for _, f := range sd1.Layout(true) {
		var specs []modelformat.TensorSpec
		for _, tn := range f.Tensors {
			n := tn.Shape[len(tn.Shape)-1]
			specs = append(specs, modelformat.TensorSpec{Name: f.TensorName(tn), DType: "F16", Shape: []int64{1, n},
				Write: func(w io.Writer) error { _, err := w.Write(make([]byte, 2*n)); return err }})
		}
		p := filepath.Join(dir, f.Name+".safetensors")
		fh, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		bw := bufio.NewWriter(fh)
		if err := modelformat.WriteSafetensors(bw, nil, specs); err != nil {
			t.Fatal(err)
		}
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		fh.Close()
		paths[f.Role] = p
	}
	return paths
}

// A split the engine cannot load is refused before anything is uploaded,
// with the reason and what works; the split `models make --split` writes
// is pushed.
func TestModelsPushChecksFamily(t *testing.T) {
	e := newPushEnv(t)
	p := writeNamesOnly(t, t.TempDir())
	code, out, stderr := e.run("models", "push", "--name", "sd1", "--engine", "sdcpp",
		"--file", "diffusion_model="+p["diffusion_model"], "--file", "clip_l="+p["model"], "--file", "vae="+p["vae"], "s3://pushmodels/sd1/")
	for _, w := range []string{"cannot load this SD 1.x model split this way", "its text encoder is clip_l (" + p["model"] + ")",
		"get sd version from file failed", "--file diffusion_model=UNET --file model=TEXT_ENCODER --file vae=VAE"} {
		if code != 1 || !strings.Contains(stderr, w) {
			t.Errorf("exit %d, want 1 with %q\nstdout: %s\nstderr: %s", code, w, out, stderr)
		}
	}
	if keys := e.keys(t); len(keys) != 0 {
		t.Errorf("refused push left objects: %v", keys)
	}

	code, out, stderr = e.run("models", "push", "--name", "sd1", "--engine", "sdcpp",
		"--file", "diffusion_model="+p["diffusion_model"], "--file", "model="+p["model"], "--file", "vae="+p["vae"], "s3://pushmodels/sd1/")
	if code != 0 || !strings.Contains(out, `registered "sd1" (engine sdcpp, 3 file(s))`) {
		t.Errorf("push of the split make writes: exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
	}
}

// sd1RoleFlags are the engine flags of the roles the sd1 files have.
var sd1RoleFlags = map[string]string{"model": "--model", "diffusion_model": "--diffusion-model", "vae": "--vae", "clip_l": "--clip_l"}

// runEngine runs sd-cli on the files (role → path) for one 64×64 image in
// one step, and returns the output PNG's path and what the engine printed.
func runEngine(t *testing.T, cli string, files map[string]string, dir string) (string, string, error) {
	t.Helper()
	outPNG := filepath.Join(dir, "out.png")
	args := []string{"--mmap", "-p", "a lovely cat", "-W", "64", "-H", "64", "--steps", "1", "--seed", "1", "-o", outPNG}
	for _, role := range []string{"model", "diffusion_model", "clip_l", "vae"} {
		if p, ok := files[role]; ok {
			args = append(args, sd1RoleFlags[role], p)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	t.Logf("%s %s: %v", cli, strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	return outPNG, string(out), err
}

var (
	mappedLine   = regexp.MustCompile(`memory-mapped (\d+) tensors`)
	generateLine = regexp.MustCompile(`generate_image completed in ([0-9.]+s)`)
)

// checkImage checks that the engine wrote a 64×64 PNG that is not flat
// (a NaN anywhere in the engine's numbers makes a black or flat image),
// and returns its pixels.
func checkImage(t *testing.T, path, log string) []uint8 {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatalf("no image: %v\n%s", err, log)
	}
	defer fh.Close()
	img, err := png.Decode(fh)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds() != image.Rect(0, 0, 64, 64) {
		t.Fatalf("image is %v, want 64×64", img.Bounds())
	}
	var px []uint8
	var sum, sum2 float64
	for y := range 64 {
		for x := range 64 {
			r, g, b, _ := img.At(x, y).RGBA()
			for _, v := range []uint32{r >> 8, g >> 8, b >> 8} {
				px = append(px, uint8(v))
				sum += float64(v)
				sum2 += float64(v) * float64(v)
			}
		}
	}
	n := float64(len(px))
	mean, std := sum/n, math.Sqrt(sum2/n-(sum/n)*(sum/n))
	t.Logf("image: mean %.1f, std %.1f", mean, std)
	if std < 8 || mean < 8 {
		t.Errorf("the image is flat or black: mean %.1f, std %.1f", mean, std)
	}
	return px
}

// checkLoad checks the engine told an SD 1.x model and used every tensor
// it loaded in place from the mapping: the UNet, the text encoder and the
// VAE's decoder (txt2img does not load the VAE's encoder).
func checkLoad(t *testing.T, log string) {
	t.Helper()
	if !strings.Contains(log, "Version: SD 1.x") {
		t.Errorf("the engine did not load an SD 1.x model:\n%s", log)
	}
	want := 0
	for _, tn := range sd1.Tensors() {
		if tn.Part != sd1.PartVAE || strings.Contains(tn.Name, ".decoder.") || strings.Contains(tn.Name, "post_quant_conv") {
			want++
		}
	}
	mapped := 0
	for _, m := range mappedLine.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		mapped += n
	}
	if mapped != want {
		t.Errorf("the engine mapped %d tensors in place, want %d:\n%s", mapped, want, log)
	}
	if m := generateLine.FindStringSubmatch(log); m != nil {
		t.Logf("engine: generate_image completed in %s", m[1])
	}
}

// The real engine loads what `models make --arch sd1` writes, single and
// split, in every type, and writes an image; it cannot load the split
// that push refuses. Runs when GENFLEET_SDCPP_CLI names
// stable-diffusion.cpp's sd-cli; writes 2 GB files, one at a time.
func TestModelsMakeSD1RealEngine(t *testing.T) {
	cli := os.Getenv("GENFLEET_SDCPP_CLI")
	if cli == "" {
		t.Skip("GENFLEET_SDCPP_CLI is not set: set it to stable-diffusion.cpp's sd-cli to check models make --arch sd1 against the real engine")
	}
	mk := func(t *testing.T, args ...string) {
		t.Helper()
		start := time.Now()
		code, out, stderr := runCLI(append([]string{"models", "make", "--arch", "sd1", "--seed", "1"}, args...)...)
		if code != 0 {
			t.Fatalf("models make: %d\n%s\n%s", code, out, stderr)
		}
		if !strings.Contains(stderr, `"event":"progress"`) {
			t.Errorf("no progress on stderr:\n%s", stderr)
		}
		t.Logf("models make %s: %v\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), out)
	}
	var singlePixels []uint8
	for _, d := range sd1.DTypes() {
		t.Run("single "+string(d), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "sd1"+d.Ext())
			mk(t, "--dtype", string(d), "--out", path)
			size, _ := sd1.Layout(false)[0].Size(sd1.Options{Seed: 1, DType: d})
			if st, err := os.Stat(path); err != nil || st.Size() != size {
				t.Fatalf("file: %v, %v; want %d bytes", st, err, size)
			}
			outPNG, log, err := runEngine(t, cli, map[string]string{"model": path}, dir)
			if err != nil {
				t.Fatalf("sd-cli: %v\n%s", err, log)
			}
			checkLoad(t, log)
			px := checkImage(t, outPNG, log)
			if d == sd1.F16 {
				singlePixels = px
			}
		})
	}
	t.Run("split f16", func(t *testing.T) {
		dir := t.TempDir()
		mk(t, "--split", "--out", dir)
		files := map[string]string{}
		for _, f := range sd1.Layout(true) {
			files[f.Role] = filepath.Join(dir, f.Name+".safetensors")
		}
		outPNG, log, err := runEngine(t, cli, files, dir)
		if err != nil {
			t.Fatalf("sd-cli: %v\n%s", err, log)
		}
		checkLoad(t, log)
		px := checkImage(t, outPNG, log)
		// Each tensor has the same bytes in both forms: so has the image.
		if singlePixels != nil && string(px) != string(singlePixels) {
			t.Error("the split model's image differs from the single file's")
		}

		// The text encoder as clip_l: push refuses, and the engine indeed
		// cannot load it.
		refused := map[string]string{"diffusion_model": files["diffusion_model"], "clip_l": files["model"], "vae": files["vae"]}
		code, out, stderr := runCLI("models", "push", "--name", "sd1", "--engine", "sdcpp",
			"--file", "diffusion_model="+refused["diffusion_model"], "--file", "clip_l="+refused["clip_l"], "--file", "vae="+refused["vae"],
			"s3://models/sd1/", "--registry", "s3://models/", "--s3-endpoint", "http://127.0.0.1:1", "--s3-access-key", "k", "--s3-secret-key", "s")
		if code != 1 || !strings.Contains(stderr, "cannot load this SD 1.x model split this way") {
			t.Errorf("push of the clip_l split: exit %d\n%s\n%s", code, out, stderr)
		}
		_, log, err = runEngine(t, cli, refused, dir)
		if err == nil || !strings.Contains(log, "get sd version from file failed") {
			t.Errorf("the engine loaded the split push refuses (%v):\n%s", err, log)
		}
	})
}
