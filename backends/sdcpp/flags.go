package sdcpp

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/genfleet/genfleet/backends"
)

// The mapping from genfleet's model files and job parameters to the
// engine's flags lives here and nowhere else. Every flag is one that
// stable-diffusion.cpp documents in its help (the copies the tests check
// against are in testdata/, with the version they were taken from).

// roleFlags maps a manifest file's role to the engine flag that passes it.
// A model is either one checkpoint (role "model") or split components with
// at least a diffusion model.
var roleFlags = map[string]string{
	"model":                      "--model",
	"diffusion_model":            "--diffusion-model",
	"high_noise_diffusion_model": "--high-noise-diffusion-model",
	"vae":                        "--vae",
	"taesd":                      "--taesd",
	"clip_l":                     "--clip_l",
	"clip_g":                     "--clip_g",
	"t5xxl":                      "--t5xxl",
	"llm":                        "--llm",
	"llm_vision":                 "--llm_vision",
	"clip_vision":                "--clip_vision",
	"control_net":                "--control-net",
	"upscale_model":              "--upscale-model",
}

// Roles lists the file roles the backend accepts, sorted.
func Roles() []string {
	r := make([]string, 0, len(roleFlags))
	for k := range roleFlags {
		r = append(r, k)
	}
	slices.Sort(r)
	return r
}

// Flags for the job's parameters and for how the engine runs.
const (
	flagPrompt         = "--prompt"
	flagNegativePrompt = "--negative-prompt"
	flagWidth          = "--width"
	flagHeight         = "--height"
	flagSteps          = "--steps"
	flagSeed           = "--seed"
	flagCFGScale       = "--cfg-scale"
	flagSamplingMethod = "--sampling-method"
	flagScheduler      = "--scheduler"
	flagOutput         = "--output"
	// flagMmap makes the engine map the model files read-only instead of
	// reading them into private memory, so that every engine process on a
	// host shares the page cache the worker's model cache fills.
	flagMmap = "--mmap"
	// Server-only flags.
	flagListenIP   = "--listen-ip"
	flagListenPort = "--listen-port"
)

// SamplingMethods and Schedulers are the values the engine's help lists
// for --sampling-method and --scheduler. A job that names another value
// fails before the engine starts, with the list in the error.
var (
	SamplingMethods = []string{"euler", "euler_a", "heun", "dpm2", "dpm++2s_a", "dpm++2m", "dpm++2mv2",
		"ipndm", "ipndm_v", "lcm", "ddim_trailing", "tcd", "res_multistep", "res_2s"}
	Schedulers = []string{"discrete", "karras", "exponential", "ays", "gits", "smoothstep",
		"sgm_uniform", "simple", "kl_optimal", "lcm", "bong_tangent"}
)

// CheckRoles checks the roles of a model's files against the flag table:
// each one a role the engine takes, and a "model" or a "diffusion_model"
// among them. (`genfleet models push` checks with it before uploading; the
// backend again before running.) Duplicates are the caller's to refuse.
func CheckRoles(roles []string) error {
	main := false
	for _, r := range roles {
		if _, ok := roleFlags[r]; !ok {
			return fmt.Errorf("engine %s has no role %q; roles: %s", Engine, r, strings.Join(Roles(), ", "))
		}
		main = main || r == "model" || r == "diffusion_model"
	}
	if !main {
		return fmt.Errorf("engine %s needs a file with role model or diffusion_model", Engine)
	}
	return nil
}

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
	if err := CheckRoles(roles); err != nil {
		return nil, fmt.Errorf("sdcpp: model %q: %w: %w", m.Name, err, backends.ErrBadModel)
	}
	var args []string
	for i, f := range m.Files {
		args = append(args, roleFlags[roles[i]], f.Path)
	}
	return args, nil
}

// checkParams rejects what the engine would refuse or silently ignore.
func checkParams(p backends.Params) error {
	switch {
	case p.Width < 1 || p.Height < 1:
		return fmt.Errorf("sdcpp: image size %dx%d: %w", p.Width, p.Height, backends.ErrBadParams)
	case p.Steps < 1:
		return fmt.Errorf("sdcpp: steps %d: %w", p.Steps, backends.ErrBadParams)
	case p.SamplingMethod != "" && !slices.Contains(SamplingMethods, p.SamplingMethod):
		return fmt.Errorf("sdcpp: sampling_method %q is not one of %s: %w",
			p.SamplingMethod, strings.Join(SamplingMethods, ", "), backends.ErrBadParams)
	case p.Scheduler != "" && !slices.Contains(Schedulers, p.Scheduler):
		return fmt.Errorf("sdcpp: scheduler %q is not one of %s: %w",
			p.Scheduler, strings.Join(Schedulers, ", "), backends.ErrBadParams)
	}
	return nil
}

// genArgs are the flags of one generation.
func genArgs(p backends.Params) []string {
	args := []string{
		flagPrompt, p.Prompt,
		flagWidth, strconv.Itoa(p.Width),
		flagHeight, strconv.Itoa(p.Height),
		flagSteps, strconv.Itoa(p.Steps),
		flagSeed, strconv.FormatInt(p.Seed, 10),
		flagCFGScale, strconv.FormatFloat(p.Guidance, 'g', -1, 64),
	}
	if p.NegativePrompt != "" {
		args = append(args, flagNegativePrompt, p.NegativePrompt)
	}
	if p.SamplingMethod != "" {
		args = append(args, flagSamplingMethod, p.SamplingMethod)
	}
	if p.Scheduler != "" {
		args = append(args, flagScheduler, p.Scheduler)
	}
	return args
}

// cliArgs is the whole command line of a one-shot run after the program:
// the model, the operator's extra flags, the job's parameters, the output
// and --mmap.
func cliArgs(model, extra []string, p backends.Params, output string) []string {
	args := append([]string{}, model...)
	args = append(args, extra...)
	args = append(args, genArgs(p)...)
	return append(args, flagOutput, output, flagMmap)
}

// serverArgs is the command line of an engine server for one model.
func serverArgs(model, extra []string, port int) []string {
	args := append([]string{flagListenIP, "127.0.0.1", flagListenPort, strconv.Itoa(port)}, model...)
	args = append(args, extra...)
	return append(args, flagMmap)
}

// txt2img is the body of a request to the server's /sdapi/v1/txt2img.
type txt2img struct {
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
}

func txt2imgRequest(p backends.Params) txt2img {
	return txt2img{
		Prompt: p.Prompt, NegativePrompt: p.NegativePrompt,
		Width: p.Width, Height: p.Height, Steps: p.Steps,
		CFGScale: p.Guidance, Seed: p.Seed, BatchSize: 1,
		SamplerName: p.SamplingMethod, Scheduler: p.Scheduler,
	}
}
