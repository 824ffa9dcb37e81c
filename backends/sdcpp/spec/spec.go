// Package spec is what genfleet knows of stable-diffusion.cpp's interface,
// as data: the flags its programs take and the sampler and scheduler names
// they accept (generated from the programs' own --help, kept with the
// engine commit they came from), the file roles and the flag that passes
// each, and the rules a job must meet for the engine to run it exactly as
// asked (CheckRequest).
//
// It has no process code and imports nothing of genfleet's: the scheduler
// checks a job against it at submit, and the sdcpp backend checks again
// before it starts the engine (a producer may enqueue straight into Redis).
//
// The tables in tables_gen.go are generated from
// backends/sdcpp/testdata/sd-cli-help.txt and sd-server-help.txt; to take
// them from a new engine build, run scripts/sdcpp-help.sh (which captures
// the help and runs go generate).
package spec

//go:generate go run ../internal/helpgen -cli ../testdata/sd-cli-help.txt -server ../testdata/sd-server-help.txt -o tables_gen.go

import (
	"fmt"
	"slices"
	"strings"
)

// Engine is the engine name that manifests of stable-diffusion.cpp models
// carry.
const Engine = "sdcpp"

// Flags genfleet passes for a job's parameters and for how the engine runs.
// Each is in the captured help of the program that gets it
// (TestFlagsAreInTheHelp).
const (
	FlagPrompt         = "--prompt"
	FlagNegativePrompt = "--negative-prompt"
	FlagWidth          = "--width"
	FlagHeight         = "--height"
	FlagSteps          = "--steps"
	FlagSeed           = "--seed"
	FlagCFGScale       = "--cfg-scale"
	FlagSamplingMethod = "--sampling-method"
	FlagScheduler      = "--scheduler"
	FlagOutput         = "--output"
	// FlagMmap makes the engine map the model files read-only instead of
	// reading them into private memory, so that every engine process on a
	// host shares the page cache the worker's model cache fills.
	FlagMmap = "--mmap"
	// Server-only flags.
	FlagListenIP   = "--listen-ip"
	FlagListenPort = "--listen-port"
)

// roleFlags maps a manifest file's role to the engine flag that passes it.
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

// Roles lists the file roles the engine takes, sorted.
func Roles() []string {
	r := make([]string, 0, len(roleFlags))
	for k := range roleFlags {
		r = append(r, k)
	}
	slices.Sort(r)
	return r
}

// RoleFlag returns the flag that passes a file of role to the engine, and
// whether there is one.
func RoleFlag(role string) (string, bool) {
	f, ok := roleFlags[role]
	return f, ok
}

// CheckRoles checks the roles of a model's files: each one a role the
// engine takes, and a "model" or a "diffusion_model" among them.
// Duplicates are the caller's to refuse.
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

// Program names the engine's programs, whose flags differ.
type Program string

const (
	CLI    Program = "sd-cli"
	Server Program = "sd-server"
)

// HasFlag reports whether prog's help lists flag (a long "--x" or a short
// "-x" name).
func HasFlag(prog Program, flag string) bool {
	switch prog {
	case CLI:
		return slices.Contains(cliFlags, flag)
	case Server:
		return slices.Contains(serverFlags, flag)
	}
	return false
}
