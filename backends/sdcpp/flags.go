package sdcpp

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/sdcpp/spec"
)

// The mapping from genfleet's model files and job parameters to the
// engine's flags lives here and nowhere else; the flags, the engine's
// choices and the rules a job must meet are data in package spec,
// generated from the engine's own help.

// Roles lists the file roles the backend accepts, sorted (spec.Roles).
func Roles() []string { return spec.Roles() }

// CheckRoles checks the roles of a model's files (spec.CheckRoles):
// `genfleet models push` checks with it before uploading, the backend
// again before running.
func CheckRoles(roles []string) error { return spec.CheckRoles(roles) }

// modelArgs returns the model's files in the order the engine gets them,
// with their flags, or an error wrapping backends.ErrBadModel.
func modelArgs(m backends.Model) ([]string, error) {
	if len(m.Files) == 0 {
		return nil, fmt.Errorf("sdcpp: model %q has no files: %w", m.Name, backends.ErrBadModel)
	}
	roles := make([]string, len(m.Files))
	seen := map[string]bool{}
	for i, f := range m.Files {
		roles[i] = f.Role
		if roles[i] == "" && i == 0 {
			roles[i] = "model"
		}
		if seen[roles[i]] {
			return nil, fmt.Errorf("sdcpp: model %q has two files with role %q: %w", m.Name, roles[i], backends.ErrBadModel)
		}
		seen[roles[i]] = true
		if f.Path == "" {
			return nil, fmt.Errorf("sdcpp: model %q: file %q has no path in the cache: %w", m.Name, f.Name, backends.ErrBadModel)
		}
	}
	if err := spec.CheckRoles(roles); err != nil {
		return nil, fmt.Errorf("sdcpp: model %q: %w: %w", m.Name, err, backends.ErrBadModel)
	}
	var args []string
	for i, f := range m.Files {
		flag, _ := spec.RoleFlag(roles[i])
		args = append(args, flag, f.Path)
	}
	return args, nil
}

// checkParams refuses what the engine would not run exactly as asked
// (spec.CheckRequest, checkFeatures): the scheduler checks the same at
// submit, but a producer may enqueue straight into Redis.
func checkParams(m backends.Model, p backends.Params) error {
	if err := checkFeatures(m, p); err != nil {
		return err
	}
	err := spec.CheckRequest(spec.Request{
		Prompt: p.Prompt, NegativePrompt: p.NegativePrompt,
		Width: p.Width, Height: p.Height, Steps: p.Steps,
		SamplingMethod: p.SamplingMethod, Scheduler: p.Scheduler,
	})
	if err != nil {
		return fmt.Errorf("sdcpp: %w: %w", err, backends.ErrBadParams)
	}
	return nil
}

// genArgs are the flags of one generation; prompt is the job's, with
// whatever genfleet appends to it.
func genArgs(p backends.Params, prompt string) []string {
	args := []string{
		spec.FlagPrompt, prompt,
		spec.FlagWidth, strconv.Itoa(p.Width),
		spec.FlagHeight, strconv.Itoa(p.Height),
		spec.FlagSteps, strconv.Itoa(p.Steps),
		spec.FlagSeed, strconv.FormatInt(p.Seed, 10),
		spec.FlagCFGScale, strconv.FormatFloat(p.Guidance, 'g', -1, 64),
	}
	if p.NegativePrompt != "" {
		args = append(args, spec.FlagNegativePrompt, p.NegativePrompt)
	}
	if p.SamplingMethod != "" {
		args = append(args, spec.FlagSamplingMethod, p.SamplingMethod)
	}
	if p.Scheduler != "" {
		args = append(args, spec.FlagScheduler, p.Scheduler)
	}
	return args
}

// cliArgs is the whole command line of a one-shot run after the program:
// the model, the operator's extra flags, the job's parameters (its LoRAs
// as tags in the prompt), its features' flags (rf: its files), the output
// and, unless noMmap, --mmap.
func cliArgs(model, extra []string, p backends.Params, ls []backends.LoRA, rf runFiles, output string, noMmap bool) []string {
	args := append([]string{}, model...)
	args = append(args, extra...)
	args = append(args, genArgs(p, p.Prompt+loraTags(rf.loras, ls))...)
	args = append(args, featureArgs(p, rf)...)
	args = append(args, spec.FlagOutput, output)
	return append(args, mmapArg(noMmap)...)
}

// serverArgs is the command line of an engine server for one model, whose
// LoRA directory is loraDir.
func serverArgs(model, extra []string, port int, loraDir string, noMmap bool) []string {
	args := append([]string{spec.FlagListenIP, "127.0.0.1", spec.FlagListenPort, strconv.Itoa(port)}, model...)
	args = append(args, extra...)
	args = append(args, spec.FlagLoraModelDir, loraDir)
	return append(args, mmapArg(noMmap)...)
}

// mmapArg is --mmap, or nothing when Config.NoMmap asks for the engine's
// private copies.
func mmapArg(noMmap bool) []string {
	if noMmap {
		return nil
	}
	return []string{spec.FlagMmap}
}

// sdapiRequest is the body of a request to the server's
// /sdapi/v1/txt2img, or with an init image /sdapi/v1/img2img (its
// routes_sdapi.cpp reads these fields).
type sdapiRequest struct {
	Prompt         string  `json:"prompt"`
	NegativePrompt string  `json:"negative_prompt,omitempty"`
	Width          int     `json:"width"`
	Height         int     `json:"height"`
	Steps          int     `json:"steps"`
	CFGScale       float64 `json:"cfg_scale"`
	Seed           int64   `json:"seed"`
	BatchSize      int     `json:"batch_size"`
	SamplerName    string  `json:"sampler_name,omitempty"`
	Scheduler      string  `json:"scheduler,omitempty"`
	// InitImages and Mask are base64 image files; DenoisingStrength is
	// the strength (img2img only).
	InitImages        []string    `json:"init_images,omitempty"`
	Mask              string      `json:"mask,omitempty"`
	DenoisingStrength *float64    `json:"denoising_strength,omitempty"`
	LoRA              []sdapiLoRA `json:"lora,omitempty"`
}

// sdapiLoRA is a LoRA of a request: a path in the server's LoRA directory.
type sdapiLoRA struct {
	Path       string  `json:"path"`
	Multiplier float64 `json:"multiplier"`
}

// sdapiPath is the server route that runs p.
func sdapiPath(p backends.Params) string {
	if p.InitImage != nil {
		return "/sdapi/v1/img2img"
	}
	return "/sdapi/v1/txt2img"
}

// newSdapiRequest is the request for p, with the LoRAs ls linked in the
// server's LoRA directory as loras; the job's engine options go in
// <sd_cpp_extra_args> markup at the end of the prompt.
func newSdapiRequest(p backends.Params, ls []backends.LoRA, loras []string) sdapiRequest {
	prompt := p.Prompt
	if params := spec.OptionParams(p.Options); params != nil {
		b, _ := json.Marshal(params)
		prompt += spec.ExtraArgsTag + string(b) + "</" + spec.ExtraArgsTag[1:]
	}
	r := sdapiRequest{
		Prompt: prompt, NegativePrompt: p.NegativePrompt,
		Width: p.Width, Height: p.Height, Steps: p.Steps,
		CFGScale: p.Guidance, Seed: p.Seed, BatchSize: images(p),
		SamplerName: p.SamplingMethod, Scheduler: p.Scheduler,
	}
	if p.InitImage != nil {
		r.InitImages = []string{base64.StdEncoding.EncodeToString(p.InitImage.Data)}
		s := p.Strength
		r.DenoisingStrength = &s
		if p.Mask != nil {
			r.Mask = base64.StdEncoding.EncodeToString(p.Mask.Data)
		}
	}
	for i, name := range loras {
		r.LoRA = append(r.LoRA, sdapiLoRA{Path: name, Multiplier: ls[i].Weight})
	}
	return r
}
