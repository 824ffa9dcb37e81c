package sdcpp

import (
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
// (spec.CheckRequest): the scheduler checks the same at submit, but a
// producer may enqueue straight into Redis.
func checkParams(p backends.Params) error {
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

// genArgs are the flags of one generation.
func genArgs(p backends.Params) []string {
	args := []string{
		spec.FlagPrompt, p.Prompt,
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
// the model, the operator's extra flags, the job's parameters, the output
// and, unless noMmap, --mmap.
func cliArgs(model, extra []string, p backends.Params, output string, noMmap bool) []string {
	args := append([]string{}, model...)
	args = append(args, extra...)
	args = append(args, genArgs(p)...)
	args = append(args, spec.FlagOutput, output)
	return append(args, mmapArg(noMmap)...)
}

// serverArgs is the command line of an engine server for one model.
func serverArgs(model, extra []string, port int, noMmap bool) []string {
	args := append([]string{spec.FlagListenIP, "127.0.0.1", spec.FlagListenPort, strconv.Itoa(port)}, model...)
	args = append(args, extra...)
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
