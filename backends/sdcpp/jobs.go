package sdcpp

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/sdcpp/spec"
)

// What a job asks beyond one text-to-image picture, as the engine takes
// it (package spec has the flags and the option table):
//
//   - n images: the engine's batch count, one run; image k has seed
//     seed+k, as the engine seeds each image of a batch ("generating
//     image: k/n - seed …"), and is the image of that seed alone. Not so
//     with an init image: the engine samples the init image's latent once
//     per batch, from the first seed, so image k of an image-to-image batch
//     is not the job of seed+k alone; such a job runs the engine once per
//     image (on a server that keeps the model loaded, one request each);
//   - an init image, a mask and a strength: sd-cli gets them as files
//     (--init-img, --mask) and --strength; sd-server as base64 in an
//     /sdapi/v1/img2img request ("init_images", "mask",
//     "denoising_strength");
//   - LoRAs: the engine loads them from its LoRA directory
//     (--lora-model-dir). The cache's blobs have no file extension, which
//     the engine needs to find them, so a run's LoRA directory holds a
//     link per LoRA, named by its digest, to the blob the worker holds.
//     sd-cli reads <lora:name:weight> tags that genfleet appends to the
//     prompt; sd-server a "lora" list of {"path", "multiplier"}, after its
//     list of LoRAs is refreshed (GET /sdapi/v1/loras);
//   - engine options: sd-cli flags; for sd-server, parameters in
//     <sd_cpp_extra_args> markup that genfleet appends to the prompt (a
//     job's own prompt may not carry it: spec.CheckRequest).

// checkFeatures refuses, before the engine runs, inputs the engine would
// not run exactly as asked, wrapping backends.ErrBadParams: options not
// in the table, input images not of the job's size, a strength outside
// 0..1, LoRAs without a file in the cache.
func checkFeatures(m backends.Model, p backends.Params) error {
	bad := backends.ErrBadParams
	if err := spec.CheckOptions(p.Options); err != nil {
		return fmt.Errorf("sdcpp: %w: %w", err, bad)
	}
	if p.N < 0 || p.N > 64 {
		return fmt.Errorf("sdcpp: n %d: %w", p.N, bad)
	}
	if p.Mask != nil && p.InitImage == nil {
		return fmt.Errorf("sdcpp: mask without init_image: %w", bad)
	}
	for _, in := range []struct {
		field string
		img   *backends.Image
	}{{"init_image", p.InitImage}, {"mask", p.Mask}} {
		if in.img == nil {
			continue
		}
		if in.img.Image == nil || len(in.img.Data) == 0 {
			return fmt.Errorf("sdcpp: %s has no image: %w", in.field, bad)
		}
		// The engine would resize another size to the job's.
		if b := in.img.Image.Bounds(); b.Dx() != p.Width || b.Dy() != p.Height {
			return fmt.Errorf("sdcpp: %s is %dx%d, the job is %dx%d: %w", in.field, b.Dx(), b.Dy(), p.Width, p.Height, bad)
		}
	}
	if p.InitImage != nil && (math.IsNaN(p.Strength) || p.Strength < 0 || p.Strength > 1) {
		return fmt.Errorf("sdcpp: strength %v is outside 0..1: %w", p.Strength, bad)
	}
	for _, l := range m.LoRAs {
		if l.File.Path == "" || loraLinkName(l) == "" {
			return fmt.Errorf("sdcpp: LoRA %q has no file in the cache: %w", l.Name, backends.ErrBadModel)
		}
		if math.IsNaN(l.Weight) || math.IsInf(l.Weight, 0) {
			return fmt.Errorf("sdcpp: LoRA %q weight %v: %w", l.Name, l.Weight, bad)
		}
	}
	return nil
}

// images is how many images p asks for.
func images(p backends.Params) int { return max(p.N, 1) }

// sampledSteps is the total of the engine's progress bar for p.
func sampledSteps(p backends.Params) int {
	return spec.SampledSteps(p.Steps, p.InitImage != nil, p.Strength)
}

// loraLinkName is the name of the link to LoRA l in a run's LoRA
// directory: its digest's hex, with the extension the engine looks for.
func loraLinkName(l backends.LoRA) string {
	hex := strings.TrimPrefix(l.File.Digest, "sha256:")
	for _, c := range hex {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return ""
		}
	}
	if hex == "" {
		return ""
	}
	ext := ".safetensors"
	if strings.EqualFold(filepath.Ext(l.File.Name), ".gguf") {
		ext = ".gguf"
	}
	return hex + ext
}

// linkLoRAs links each LoRA's blob into dir under loraLinkName; remove
// takes the links away again.
func linkLoRAs(dir string, ls []backends.LoRA) (names []string, remove func(), err error) {
	var made []string
	remove = func() {
		for _, p := range made {
			os.Remove(p)
		}
	}
	for _, l := range ls {
		name := loraLinkName(l)
		p := filepath.Join(dir, name)
		os.Remove(p) // a link a killed run left
		if err := os.Symlink(l.File.Path, p); err != nil {
			remove()
			return nil, nil, fmt.Errorf("sdcpp: link LoRA %q into %s: %w", l.Name, dir, err)
		}
		made = append(made, p)
		names = append(names, name)
	}
	return names, remove, nil
}

// loraTags are sd-cli's prompt tags for the LoRAs linked as names,
// appended to the prompt without a space: the engine takes them out, and
// the prompt it encodes is the job's, as sd-server gets it.
func loraTags(names []string, ls []backends.LoRA) string {
	var b strings.Builder
	for i, n := range names {
		fmt.Fprintf(&b, "<lora:%s:%s>", n, strconv.FormatFloat(ls[i].Weight, 'g', -1, 64))
	}
	return b.String()
}

// runFiles are the files of one sd-cli run beside the model's.
type runFiles struct {
	initImage, mask string // "" when the job has none
	loraDir         string // "" when the job has no LoRAs
	loras           []string
}

// writeRunFiles writes the job's input images into dir and links its
// LoRAs into dir/loras.
func writeRunFiles(dir string, m backends.Model, p backends.Params) (runFiles, error) {
	var rf runFiles
	for _, in := range []struct {
		img  *backends.Image
		name string
		dst  *string
	}{{p.InitImage, "init", &rf.initImage}, {p.Mask, "mask", &rf.mask}} {
		if in.img == nil {
			continue
		}
		path := filepath.Join(dir, in.name+"."+imageExt(in.img.Format))
		if err := os.WriteFile(path, in.img.Data, 0o600); err != nil {
			return rf, fmt.Errorf("sdcpp: write the %s image: %w", in.name, err)
		}
		*in.dst = path
	}
	if len(m.LoRAs) > 0 {
		rf.loraDir = filepath.Join(dir, "loras")
		if err := os.Mkdir(rf.loraDir, 0o700); err != nil {
			return rf, fmt.Errorf("sdcpp: %w", err)
		}
		names, _, err := linkLoRAs(rf.loraDir, m.LoRAs)
		if err != nil {
			return rf, err
		}
		rf.loras = names
	}
	return rf, nil
}

func imageExt(format string) string {
	if format == "jpeg" {
		return "jpg"
	}
	return "png"
}

// featureArgs are sd-cli's flags for the job's features.
func featureArgs(p backends.Params, rf runFiles) []string {
	var args []string
	if n := images(p); n > 1 {
		args = append(args, spec.FlagBatchCount, strconv.Itoa(n))
	}
	if rf.initImage != "" {
		args = append(args, spec.FlagInitImg, rf.initImage, spec.FlagStrength, strconv.FormatFloat(p.Strength, 'g', -1, 64))
	}
	if rf.mask != "" {
		args = append(args, spec.FlagMask, rf.mask)
	}
	if rf.loraDir != "" {
		args = append(args, spec.FlagLoraModelDir, rf.loraDir)
	}
	return append(args, spec.OptionArgs(p.Options)...)
}

// outputPaths are the files sd-cli writes for n images to output
// (".../output.png"): output itself for one, output_0.png … for more
// (its save_results).
func outputPaths(output string, n int) []string {
	if n == 1 {
		return []string{output}
	}
	base := strings.TrimSuffix(output, filepath.Ext(output))
	out := make([]string, n)
	for k := range out {
		out[k] = base + "_" + strconv.Itoa(k) + filepath.Ext(output)
	}
	return out
}
