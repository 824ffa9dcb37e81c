package spec

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// SizeMultiple is what a job's width and height must be a multiple of.
//
// stable-diffusion.cpp rounds a size that is not a multiple of its model's
// spatial multiple up to the next one, with only a warning in its log
// ("align generation request up 200x136 to 256x192 (multiple=64)"): the
// job would come back larger than asked. The multiple is the VAE's scale
// factor times the diffusion model's down factor (its
// get_vae_scale_factor and get_diffusion_model_down_factor): 8 × 8 = 64
// for the UNet families (SD 1.x, SD 2.x, SDXL), 8 or 16 for the DiT
// families (SD3, Flux: 8 × 1; Flux 2: 16 × 1; Wan: 8 × 2). The family is
// known only once the engine has read the weights, and a job is checked
// before that; 64 is a multiple of every family's, so a size that passes is
// never rounded, whatever the model.
const SizeMultiple = 64

// ExtraArgsTag opens the markup that stable-diffusion.cpp's server reads
// out of a prompt and applies as generation parameters
// (<sd_cpp_extra_args>{"width":128,…}</sd_cpp_extra_args>, in its
// routes_sdapi.cpp): width, height, steps, seed, batch count, images and
// more, past every check genfleet makes on the job. A prompt with it is
// refused; it never reaches the engine.
const ExtraArgsTag = "<sd_cpp_extra_args>"

// Request is the part of a job the engine's rules concern.
type Request struct {
	Prompt         string
	NegativePrompt string
	Width, Height  int
	Steps          int
	SamplingMethod string // "" for the engine's default
	Scheduler      string // "" for the engine's default
}

// FieldError says which field of a job the engine cannot take, and why.
type FieldError struct {
	Field   string // the job field's JSON name
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// ErrRefused is wrapped by every error CheckRequest returns.
var ErrRefused = errors.New("request not runnable by stable-diffusion.cpp as asked")

func (e *FieldError) Unwrap() error { return ErrRefused }

// CheckRequest returns a *FieldError for the first field that the engine
// would not run exactly as asked: a prompt carrying ExtraArgsTag (or
// LoRATag), a size
// it would round (SizeMultiple), a step count below 1, a sampling method
// or scheduler its help does not list. nil means the engine takes it.
func CheckRequest(r Request) error {
	for _, p := range [...]struct{ field, v string }{{"prompt", r.Prompt}, {"negative_prompt", r.NegativePrompt}} {
		if hasExtraArgsTag(p.v) {
			return &FieldError{p.field, fmt.Sprintf("contains %s, which stable-diffusion.cpp's server reads as parameters that override the job's (size, steps, seed, batch count, …); remove the tag", ExtraArgsTag)}
		}
	}
	if strings.Contains(strings.ToLower(r.Prompt), LoRATag) {
		return &FieldError{"prompt", fmt.Sprintf("contains %s…>, which stable-diffusion.cpp reads as a LoRA file to load; name LoRAs in \"loras\"", LoRATag)}
	}
	for _, s := range [...]struct {
		field string
		v     int
	}{{"width", r.Width}, {"height", r.Height}} {
		if s.v < 1 || s.v%SizeMultiple != 0 {
			return &FieldError{s.field, fmt.Sprintf("must be a multiple of %d for stable-diffusion.cpp models, got %d (the engine would round it up, to %d for SD 1.x, SD 2.x and SDXL)",
				SizeMultiple, s.v, roundUp(s.v))}
		}
	}
	if r.Steps < 1 {
		return &FieldError{"steps", fmt.Sprintf("must be at least 1, got %d", r.Steps)}
	}
	if r.SamplingMethod != "" && !slices.Contains(SamplingMethods, r.SamplingMethod) {
		return &FieldError{"sampling_method", fmt.Sprintf("%q is not one of stable-diffusion.cpp's sampling methods: %s",
			r.SamplingMethod, strings.Join(SamplingMethods, ", "))}
	}
	if r.Scheduler != "" && !IsScheduler(r.Scheduler) {
		return &FieldError{"scheduler", fmt.Sprintf("%q is not one of stable-diffusion.cpp's schedulers: %s",
			r.Scheduler, strings.Join(Schedulers, ", "))}
	}
	return nil
}

// IsScheduler reports whether the engine takes name as a scheduler: one of
// Schedulers or an alias its help lists ("normal" for "discrete").
func IsScheduler(name string) bool {
	_, alias := schedulerAliases[name]
	return alias || slices.Contains(Schedulers, name)
}

// hasExtraArgsTag reports whether s carries the engine's parameter markup.
// The engine matches the tag exactly; any letter case is refused here.
func hasExtraArgsTag(s string) bool {
	return strings.Contains(strings.ToLower(s), ExtraArgsTag)
}

// roundUp is the size the engine would make of v: the next multiple of
// SizeMultiple.
func roundUp(v int) int {
	if v < 1 {
		return SizeMultiple
	}
	return (v + SizeMultiple - 1) / SizeMultiple * SizeMultiple
}
