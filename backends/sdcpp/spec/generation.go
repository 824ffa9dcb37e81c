package spec

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// What a job may ask of stable-diffusion.cpp beyond one text-to-image
// picture: several images per run (its batch count), image to image and
// inpainting (its init image, mask and strength), LoRAs (its LoRA
// directory and, in a prompt for sd-cli, <lora:name:weight> tags; in a
// request to sd-server, its "lora" list) and the engine options of the
// Options table.

// Features are the job fields beyond a text-to-image picture the engine
// takes (backends.FeatureInitImage, FeatureMask, FeatureLoRAs; this
// package imports nothing of genfleet's, so they are spelt here, and a
// test holds them to the backends' names).
var Features = []string{"init_image", "mask", "loras"}

// Flags for the generation features. Each is in both programs' captured
// help (TestGenerationFlagsAreInTheHelp).
const (
	FlagBatchCount   = "--batch-count"
	FlagInitImg      = "--init-img"
	FlagMask         = "--mask"
	FlagStrength     = "--strength"
	FlagLoraModelDir = "--lora-model-dir"
)

// LoRATag opens the prompt markup sd-cli reads as a LoRA to load,
// <lora:path:weight>, when it runs with --lora-model-dir (genfleet's
// LoRAs are passed so): a path relative to that directory, or absolute.
// A prompt with it is refused, or a job could load any file of the
// worker's host as a LoRA; a job names LoRAs in "loras".
const LoRATag = "<lora:"

// Option is an engine option a job may set in "options". The same flag
// sets it on both programs; sd-cli gets it on its command line, sd-server
// per request in the parameters it reads from a prompt's
// <sd_cpp_extra_args> markup (SDGenerationParams::from_json_str in the
// engine's examples/common), at ServerKey.
type Option struct {
	Name string
	// Kind is the value's kind: "int", "float" (the help's placeholder)
	// or "bool" (a switch: true passes the flag, false leaves the
	// engine's default, off).
	Kind string
	// Min and Max bound a number.
	Min, Max float64
	Flag     string
	// ServerKey is the value's place in the server's parameters JSON,
	// dot-separated: "sample_params.eta".
	ServerKey string
	Help      string
}

// Options are the engine options a job may set, by name. docs/engines.md
// lists them; TestOptionsAreInTheHelp holds each flag and kind to the
// programs' help.
var Options = []Option{
	{Name: "clip_skip", Kind: "int", Min: 1, Max: 12, Flag: "--clip-skip", ServerKey: "clip_skip",
		Help: "ignore the last layers of the CLIP text encoder: 1 ignores none, 2 one layer (default: the model family's; 1 for SD 1.x, 2 for SD 2.x)"},
	{Name: "eta", Kind: "float", Min: 0, Max: 1, Flag: "--eta", ServerKey: "sample_params.eta",
		Help: "noise multiplier of the sampler (default: the sampler's; 1 for euler_a, 0 for ddim_trailing)"},
	{Name: "distilled_guidance", Kind: "float", Min: 0, Max: 30, Flag: "--guidance", ServerKey: "sample_params.guidance.distilled_guidance",
		Help: "distilled guidance scale of models with a guidance input, such as Flux (default 3.5)"},
	{Name: "flow_shift", Kind: "float", Min: 0, Max: 20, Flag: "--flow-shift", ServerKey: "sample_params.flow_shift",
		Help: "shift of flow models such as SD3.x and Wan (default: the model's)"},
	{Name: "vae_tiling", Kind: "bool", Flag: "--vae-tiling", ServerKey: "vae_tiling_params.enabled",
		Help: "decode the image in tiles, to use less memory"},
}

// OptionNamed returns the option called name, and whether there is one.
func OptionNamed(name string) (Option, bool) {
	i := slices.IndexFunc(Options, func(o Option) bool { return o.Name == name })
	if i < 0 {
		return Option{}, false
	}
	return Options[i], true
}

// OptionNames lists the options' names, in table order.
func OptionNames() []string {
	out := make([]string, len(Options))
	for i, o := range Options {
		out[i] = o.Name
	}
	return out
}

// CheckOptions returns a *FieldError ("options.<name>") for the first
// option, by name, that the table has not or whose value is not of its
// kind and range.
func CheckOptions(opts map[string]any) error {
	names := make([]string, 0, len(opts))
	for n := range opts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := optionValue(n, opts[n]); err != nil {
			return err
		}
	}
	return nil
}

// optionValue checks the value v of option name and returns it as the
// engine takes it: a bool, an int64 or a float64.
func optionValue(name string, v any) (any, error) {
	field := "options." + name
	o, ok := OptionNamed(name)
	if !ok {
		switch name {
		case "sampling_method", "scheduler":
			return nil, &FieldError{field, fmt.Sprintf("is a field of the job, not an option: give %q at the top level", name)}
		}
		return nil, &FieldError{field, fmt.Sprintf("is not an option of stable-diffusion.cpp that a job may set; options: %s", strings.Join(OptionNames(), ", "))}
	}
	if o.Kind == "bool" {
		b, ok := v.(bool)
		if !ok {
			return nil, &FieldError{field, fmt.Sprintf("must be true or false, got %v", v)}
		}
		return b, nil
	}
	f, ok := number(v)
	if !ok || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, &FieldError{field, fmt.Sprintf("must be a number, got %v", v)}
	}
	if f < o.Min || f > o.Max {
		return nil, &FieldError{field, fmt.Sprintf("must be between %g and %g, got %g", o.Min, o.Max, f)}
	}
	if o.Kind == "int" {
		if f != math.Trunc(f) {
			return nil, &FieldError{field, fmt.Sprintf("must be a whole number, got %g", f)}
		}
		return int64(f), nil
	}
	return f, nil
}

// number returns v as a float64, for the numeric kinds JSON decoding and
// Go producers give.
func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int32:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint32:
		return float64(x), true
	case uint64:
		return float64(x), true
	}
	return 0, false
}

// OptionArgs returns sd-cli's flags for opts, in table order; opts must
// have passed CheckOptions.
func OptionArgs(opts map[string]any) []string {
	var args []string
	for _, o := range Options {
		v, ok := opts[o.Name]
		if !ok {
			continue
		}
		val, err := optionValue(o.Name, v)
		if err != nil {
			continue
		}
		switch x := val.(type) {
		case bool:
			if x {
				args = append(args, o.Flag)
			}
		case int64:
			args = append(args, o.Flag, fmt.Sprint(x))
		case float64:
			args = append(args, o.Flag, fmt.Sprint(x))
		}
	}
	return args
}

// OptionParams returns the server's parameters for opts, nested at each
// option's ServerKey: {"sample_params": {"eta": 0.5}, …}; nil for none.
// opts must have passed CheckOptions.
func OptionParams(opts map[string]any) map[string]any {
	var out map[string]any
	for _, o := range Options {
		v, ok := opts[o.Name]
		if !ok {
			continue
		}
		val, err := optionValue(o.Name, v)
		if err != nil {
			continue
		}
		if out == nil {
			out = map[string]any{}
		}
		m := out
		keys := strings.Split(o.ServerKey, ".")
		for _, k := range keys[:len(keys)-1] {
			next, ok := m[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[k] = next
			}
			m = next
		}
		m[keys[len(keys)-1]] = val
	}
	return out
}

// SampledSteps is the number of steps the engine samples, and so the
// total of its progress bar, for steps: all of them for text to image;
// for image to image t_enc + 1, where t_enc (its "target t_enc is … steps")
// is steps × strength rounded down in the engine's float32, one fewer when
// that is all of them: the engine keeps the last t_enc + 2 of its steps + 1
// sigmas.
func SampledSteps(steps int, img2img bool, strength float64) int {
	if !img2img {
		return steps
	}
	t := int(float32(steps) * float32(strength))
	if t == steps {
		t--
	}
	return t + 1
}
