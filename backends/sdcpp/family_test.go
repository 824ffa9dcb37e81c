package sdcpp

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/backends/sdcpp/spec"
	"github.com/genfleet/genfleet/modelformat"
)

// Tensor names of the files in familyCases: a few of each part, enough
// for the engine to tell the family, under the names the part has in a
// full checkpoint (full) or in a file of its own (bare).
var (
	sd1UNetBare = map[string]int64{
		"input_blocks.0.0.weight":                                 3,
		"input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": 768,
		"middle_block.1.proj_in.weight":                           1,
		"output_blocks.7.1.proj_in.weight":                        1,
		"out.2.weight":                                            3,
	}
	sd1TextEncoderFull = map[string]int64{
		"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":      768,
		"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight":        768,
		"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight":   768,
		"cond_stage_model.transformer.text_model.encoder.layers.11.layer_norm1.weight":   768,
		"cond_stage_model.transformer.text_model.final_layer_norm.weight":                768,
		"cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.bias": 768,
	}
	textEncoderHF = map[string]int64{
		"text_model.embeddings.token_embedding.weight":    768,
		"text_model.final_layer_norm.weight":              768,
		"text_model.encoder.layers.0.mlp.fc1.weight":      768,
		"text_model.embeddings.position_embedding.weight": 768,
	}
	vaeBare  = map[string]int64{"decoder.conv_in.weight": 3, "decoder.conv_out.weight": 3, "post_quant_conv.weight": 1}
	fluxBare = map[string]int64{
		"double_blocks.0.img_attn.qkv.weight": 3072,
		"single_blocks.0.linear1.weight":      3072,
		"img_in.weight":                       64,
	}
)

// prefixed returns names with prefix put before each.
func prefixed(prefix string, names map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range names {
		out[prefix+k] = v
	}
	return out
}

// withWidth returns names with the cross-attention input width set to w.
func withWidth(names map[string]int64, w int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range names {
		if strings.HasSuffix(k, "attn2.to_k.weight") {
			v = w
		}
		out[k] = v
	}
	return out
}

func merge(ms ...map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// familyCases are splits of models by family, with whether the engine
// loads them (refuse false) or stops because it cannot tell the family.
// TestFamilyCheckAgreesWithEngine runs the real engine on each.
func familyCases() []struct {
	name   string
	files  map[string]map[string]int64 // role → tensor names → innermost dim
	refuse bool
	want   []string
} {
	sd1Full := merge(prefixed("model.diffusion_model.", sd1UNetBare), sd1TextEncoderFull, prefixed("first_stage_model.", vaeBare))
	te1024 := map[string]int64{"cond_stage_model.model.token_embedding.weight": 1024, "cond_stage_model.model.ln_final.weight": 1024}
	return []struct {
		name   string
		files  map[string]map[string]int64
		refuse bool
		want   []string
	}{
		{"SD 1.x checkpoint", map[string]map[string]int64{"model": sd1Full}, false, nil},
		{"SD 1.x text encoder as model", map[string]map[string]int64{
			"diffusion_model": sd1UNetBare, "model": sd1TextEncoderFull, "vae": vaeBare}, false, nil},
		{"SD 1.x UNet and text encoder as model, VAE apart", map[string]map[string]int64{
			"model": merge(prefixed("model.diffusion_model.", sd1UNetBare), sd1TextEncoderFull), "vae": vaeBare}, false, nil},
		{"SD 1.x Hugging Face text encoder as model", map[string]map[string]int64{
			"diffusion_model": sd1UNetBare, "model": textEncoderHF, "vae": vaeBare}, false, nil},
		{"SD 1.x text encoder as clip_l", map[string]map[string]int64{
			"diffusion_model": sd1UNetBare, "clip_l": sd1TextEncoderFull, "vae": vaeBare}, true,
			[]string{"SD 1.x", "its text encoder is clip_l (", "get sd version from file failed", "give the text encoder role model"}},
		{"SD 1.x Hugging Face text encoder as clip_l", map[string]map[string]int64{
			"diffusion_model": prefixed("model.diffusion_model.", sd1UNetBare), "clip_l": textEncoderHF, "vae": vaeBare}, true,
			[]string{"SD 1.x", "clip_l"}},
		{"SD 1.x without text encoder", map[string]map[string]int64{
			"diffusion_model": sd1UNetBare, "vae": vaeBare}, true,
			[]string{"SD 1.x", "no file holds its text encoder"}},
		{"SD 1.x with a VAE as model", map[string]map[string]int64{
			"diffusion_model": sd1UNetBare, "model": prefixed("first_stage_model.", vaeBare)}, true,
			[]string{"SD 1.x", "the file with role model (", "has no text encoder"}},
		{"SD 2.x text encoder as clip_l", map[string]map[string]int64{
			"diffusion_model": withWidth(sd1UNetBare, 1024), "clip_l": te1024}, true,
			[]string{"SD 2.x", "clip_l"}},
		{"SD 2.x text encoder as model", map[string]map[string]int64{
			"diffusion_model": withWidth(sd1UNetBare, 1024), "model": te1024}, false, nil},
		{"SDXL text encoders as clip_l and clip_g", map[string]map[string]int64{
			"diffusion_model": withWidth(sd1UNetBare, 2048), "clip_l": textEncoderHF,
			"clip_g": {"text_model.embeddings.token_embedding.weight": 1280}}, true,
			[]string{"SDXL", "clip_g (", "clip_l ("}},
		{"SDXL text encoders as model", map[string]map[string]int64{
			"diffusion_model": withWidth(sd1UNetBare, 2048), "model": merge(
				prefixed("conditioner.embedders.0.transformer.", textEncoderHF),
				map[string]int64{"conditioner.embedders.1.model.token_embedding.weight": 1280})}, false, nil},
		{"Flux", map[string]map[string]int64{
			"diffusion_model": fluxBare, "clip_l": textEncoderHF, "vae": vaeBare,
			"t5xxl": {"encoder.block.0.layer.0.SelfAttention.q.weight": 4096}}, false, nil},
	}
}

// writeNames writes a safetensors file (or, for names ending in .gguf, a
// GGUF file) with a small F32 tensor for each name, whose innermost
// dimension is the given width.
func writeNames(t *testing.T, path string, names map[string]int64) {
	t.Helper()
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range names {
			if !yield(k) {
				return
			}
		}
	})
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriter(fh)
	zeros := func(n int64) func(io.Writer) error {
		return func(w io.Writer) error { _, err := w.Write(make([]byte, 4*n)); return err }
	}
	if strings.HasSuffix(path, ".gguf") {
		var specs []modelformat.GGUFTensorSpec
		for _, k := range keys {
			specs = append(specs, modelformat.GGUFTensorSpec{Name: k, Type: 0, Dims: []uint64{uint64(names[k]), 2}, Write: zeros(2 * names[k])})
		}
		err = modelformat.WriteGGUF(bw, nil, specs)
	} else {
		var specs []modelformat.TensorSpec
		for _, k := range keys {
			specs = append(specs, modelformat.TensorSpec{Name: k, DType: "F32", Shape: []int64{2, names[k]}, Write: zeros(2 * names[k])})
		}
		err = modelformat.WriteSafetensors(bw, nil, specs)
	}
	if err == nil {
		err = bw.Flush()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// writeCase writes a case's files into dir, safetensors or GGUF, and
// returns role → path.
func writeCase(t *testing.T, dir string, files map[string]map[string]int64, ext string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	for role, names := range files {
		p := filepath.Join(dir, role+ext)
		writeNames(t, p, names)
		paths[role] = p
	}
	return paths
}

func TestCheckFamily(t *testing.T) {
	for _, tc := range familyCases() {
		for _, ext := range []string{".safetensors", ".gguf"} {
			t.Run(tc.name+ext, func(t *testing.T) {
				err := CheckFamily(writeCase(t, t.TempDir(), tc.files, ext))
				if !tc.refuse {
					if err != nil {
						t.Fatalf("refused a split the engine loads: %v", err)
					}
					return
				}
				if err == nil {
					t.Fatal("accepted a split the engine cannot load")
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q: %v", w, err)
					}
				}
			})
		}
	}
}

// A file whose names cannot be read here (a PyTorch .ckpt) leaves the
// model unchecked; a file that breaks its format is an error.
func TestCheckFamilyUnreadable(t *testing.T) {
	dir := t.TempDir()
	unet := filepath.Join(dir, "unet.safetensors")
	writeNames(t, unet, sd1UNetBare)
	ckpt := filepath.Join(dir, "te.ckpt")
	if err := os.WriteFile(ckpt, []byte("PK\x03\x04 a zip"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckFamily(map[string]string{"diffusion_model": unet, "model": ckpt}); err != nil {
		t.Errorf("a .ckpt text encoder: %v", err)
	}
	bad := filepath.Join(dir, "bad.gguf")
	if err := os.WriteFile(bad, []byte("GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := CheckFamily(map[string]string{"diffusion_model": unet, "clip_l": bad})
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a malformed file: %v", err)
	}
}

// versionLine is what the engine prints once it has told the family, and
// the error it stops with when it cannot.
var (
	versionLine   = regexp.MustCompile(`Version: ([^\n]*)`)
	versionFailed = "get sd version from file failed"
)

// The family check refuses exactly the splits that the real engine cannot
// tell the family of. Runs when GENFLEET_SDCPP_CLI names stable-diffusion.cpp's
// sd-cli; the files carry names only, so the engine stops soon after
// telling the family, which is all this test reads.
func TestFamilyCheckAgreesWithEngine(t *testing.T) {
	cli := os.Getenv("GENFLEET_SDCPP_CLI")
	if cli == "" {
		t.Skip("GENFLEET_SDCPP_CLI is not set: set it to stable-diffusion.cpp's sd-cli to check against the real engine")
	}
	for _, tc := range familyCases() {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			paths := writeCase(t, dir, tc.files, ".safetensors")
			args := []string{"-W", "64", "-H", "64", "--steps", "1", "-o", filepath.Join(dir, "out.png"), "-p", "x"}
			for _, role := range slices.Sorted(func(yield func(string) bool) {
				for r := range paths {
					if !yield(r) {
						return
					}
				}
			}) {
				flag, _ := spec.RoleFlag(role)
				args = append(args, flag, paths[role])
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			out, _ := exec.CommandContext(ctx, cli, args...).CombinedOutput()
			m := versionLine.FindSubmatch(out)
			engineRefused := strings.Contains(string(out), versionFailed)
			if m == nil && !engineRefused {
				t.Fatalf("the engine neither told the family nor failed to:\n%s", out)
			}
			if m != nil {
				t.Logf("engine: Version: %s", m[1])
			}
			if engineRefused != tc.refuse {
				t.Errorf("engine refused: %v, the case says %v:\n%s", engineRefused, tc.refuse, out)
			}
			err := CheckFamily(paths)
			if (err != nil) != engineRefused {
				t.Errorf("CheckFamily: %v; engine refused: %v", err, engineRefused)
			}
		})
	}
}
