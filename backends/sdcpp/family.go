package sdcpp

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/genfleet/genfleet/modelformat"
)

// Which split models the engine can load depends on the model's family,
// because the engine tells the family (SD 1.x, SDXL, Flux, ...) from the
// names of the tensors in all of a model's files, after giving each file's
// names the prefix of its flag (--diffusion-model: model.diffusion_model.,
// --clip_l: clip_l., --vae: vae., --model: none). Most families are told
// by their diffusion model's own tensors. The UNet families (SD 1.x,
// SD 2.x, SDXL) are not: the engine tells them apart by the text
// encoder's token table, which it recognises only under a full
// checkpoint's names, so only in the file passed as --model. A text
// encoder passed as --clip_l keeps the clip_l. prefix and is never seen;
// the engine then stops with "get sd version from file failed". Checked
// against stable-diffusion.cpp 97d2990 (2026-08).

// tokenTables are the names under which the engine recognises a UNet
// model's text encoder (its token embedding), in a file given as --model.
var tokenTables = []string{
	"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
	"cond_stage_model.model.token_embedding.weight",
	"text_model.embeddings.token_embedding.weight",
	"te.text_model.embeddings.token_embedding.weight",
	"conditioner.embedders.0.model.token_embedding.weight",
	"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
}

// secondEncoder are name fragments by which the engine recognises SDXL's
// second text encoder anywhere in a model's files; with them it needs no
// token table.
var secondEncoder = []string{"conditioner.embedders.1", "cond_stage_model.1", "te.1"}

// unetBlocks marks a UNet diffusion model, under the engine's names.
const unetBlocks = "model.diffusion_model.input_blocks."

// diffusionPrefix is the prefix the engine gives the names of a file
// passed as --diffusion-model (unless they have it already).
const diffusionPrefix = "model.diffusion_model."

// fileTensors is what the family check needs of one model file.
type fileTensors struct {
	role, path string
	// names maps each tensor's name in the file to its innermost
	// dimension (the input width of a weight matrix).
	names map[string]int64
}

// CheckFamily refuses a split model that the engine cannot load because
// of how its files are split, before anything is uploaded. files maps
// each file's role to its path; the files are safetensors or GGUF (a
// PyTorch .ckpt cannot be read here, and a model with one is not
// checked). The error names the model's family, why the engine cannot
// load it, and what works instead. A single checkpoint (role model
// alone) always passes; so do the families the engine tells from their
// diffusion model.
func CheckFamily(files map[string]string) error {
	var ft []fileTensors
	for role, path := range files {
		names, err := readTensorNames(path)
		if errors.Is(err, modelformat.ErrUnknownFormat) {
			return nil // e.g. a .ckpt: its names are unknown here
		}
		if err != nil {
			return fmt.Errorf("reading the tensor names of %s: %w", path, err)
		}
		ft = append(ft, fileTensors{role: role, path: path, names: names})
	}
	slices.SortFunc(ft, func(a, b fileTensors) int { return strings.Compare(a.role, b.role) })
	return checkFamily(ft)
}

func checkFamily(files []fileTensors) error {
	var unet, textEncoder bool
	var contextWidth int64
	var clip []string
	var modelFile string
	for _, f := range files {
		prefix := ""
		switch f.role {
		case "model":
			modelFile = f.path
		case "diffusion_model":
			prefix = diffusionPrefix
		case "clip_l", "clip_g":
			clip = append(clip, f.role+" ("+f.path+")")
		}
		for name, ne0 := range f.names {
			for _, frag := range secondEncoder {
				if strings.Contains(name, frag) {
					return nil // SDXL, told by its second text encoder
				}
			}
			if f.role == "model" && slices.Contains(tokenTables, name) {
				textEncoder = true
			}
			if prefix != "" && !strings.HasPrefix(name, prefix) {
				name = prefix + name
			}
			if f.role == "model" || f.role == "diffusion_model" {
				if strings.HasPrefix(name, unetBlocks) {
					unet = true
				}
				if strings.HasPrefix(name, diffusionPrefix) && strings.HasSuffix(name, ".attn2.to_k.weight") {
					contextWidth = ne0
				}
			}
		}
	}
	if !unet || textEncoder {
		return nil
	}
	family := map[int64]string{768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}[contextWidth]
	if family == "" {
		family = "UNet (SD 1.x, SD 2.x or SDXL)"
	}
	var why string
	switch {
	case len(clip) > 0:
		why = "its text encoder is " + strings.Join(clip, " and ") + ", but"
	case modelFile != "":
		why = "the file with role model (" + modelFile + ") has no text encoder, and"
	default:
		why = "no file holds its text encoder, and"
	}
	return fmt.Errorf("engine %s cannot load this %s model split this way: %s stable-diffusion.cpp tells SD 1.x, "+
		"SD 2.x and SDXL apart by the text encoder's token table (%s), which it looks for only in the file with "+
		"role model, so it would stop with \"get sd version from file failed\"; give the text encoder role model "+
		"(--file diffusion_model=UNET --file model=TEXT_ENCODER --file vae=VAE), or push the whole checkpoint as one file",
		Engine, family, why, tokenTables[0])
}

// readTensorNames returns the tensor names of the safetensors or GGUF
// file at path with each tensor's innermost dimension, or an error
// wrapping modelformat.ErrUnknownFormat for another kind of file.
func readTensorNames(path string) (map[string]int64, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	format, err := modelformat.Detect(fh, st.Size())
	if err != nil {
		return nil, err
	}
	names := map[string]int64{}
	if format == modelformat.FormatGGUF {
		g, err := modelformat.ParseGGUFHeader(fh, st.Size())
		if err != nil {
			return nil, err
		}
		for _, t := range g.Tensors {
			names[t.Name] = 0
			if len(t.Dims) > 0 {
				names[t.Name] = int64(t.Dims[0])
			}
		}
		return names, nil
	}
	s, err := modelformat.ParseSafetensors(fh, st.Size())
	if err != nil {
		return nil, err
	}
	for _, t := range s.Tensors {
		names[t.Name] = 0
		if len(t.Shape) > 0 {
			names[t.Name] = t.Shape[len(t.Shape)-1]
		}
	}
	return names, nil
}
