package spec

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/backends/sdcpp/internal/helptext"
)

func readHelp(t *testing.T, name string) *helptext.Help {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	h, err := helptext.Parse(string(data))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The tables are those of the captured help (run go generate after
// scripts/sdcpp-help.sh), and the help is the real engine's: it has the
// flags and choices of stable-diffusion.cpp at EngineCommit, not those of
// an older one.
func TestTablesAreTheCapturedHelp(t *testing.T) {
	cli, srv := readHelp(t, "sd-cli-help.txt"), readHelp(t, "sd-server-help.txt")
	if cli.Commit != EngineCommit || srv.Commit != EngineCommit {
		t.Errorf("captured help of commits %q and %q, tables of %q: run go generate", cli.Commit, srv.Commit, EngineCommit)
	}
	sorted := func(s []string) []string {
		s = slices.Clone(s)
		sort.Strings(s)
		return slices.Compact(s)
	}
	for _, c := range []struct {
		what      string
		got, want []string
	}{
		{"sampling methods", SamplingMethods, cli.Choices[FlagSamplingMethod]},
		{"schedulers", Schedulers, cli.Choices[FlagScheduler]},
		{"sd-cli flags", cliFlags, sorted(cli.Flags)},
		{"sd-server flags", serverFlags, sorted(srv.Flags)},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s: tables %v, help %v: run go generate", c.what, c.got, c.want)
		}
	}
	if !maps.Equal(schedulerAliases, cli.Aliases[FlagScheduler]) {
		t.Errorf("scheduler aliases %v, help %v", schedulerAliases, cli.Aliases[FlagScheduler])
	}
	// What the real engine has and an older capture lacked, or the other
	// way round.
	for _, m := range []string{"dpm++2m_sde", "dpm++2m_sde_bt", "er_sde", "res_2s"} {
		if !slices.Contains(SamplingMethods, m) {
			t.Errorf("sampling method %s missing", m)
		}
	}
	for _, f := range []string{"--hires", "--hires-steps", "--eager-load", "--backend", "--auto-fit", "--mmap", "--sampling-method", "-s"} {
		if !HasFlag(CLI, f) || !HasFlag(Server, f) {
			t.Errorf("flag %s missing", f)
		}
	}
	for _, f := range []string{"--cache-preset", "--chroma-t5-mask-pad", "--chroma-disable-dit-mask", "--chroma-enable-t5-mask"} {
		if HasFlag(CLI, f) || HasFlag(Server, f) {
			t.Errorf("flag %s listed, which the engine lacks", f)
		}
	}
	if !HasFlag(Server, FlagListenPort) || HasFlag(CLI, FlagListenPort) || !HasFlag(CLI, FlagOutput) {
		t.Error("the programs' own flags are mixed up")
	}
}

func TestCheckRequest(t *testing.T) {
	ok := Request{Prompt: "a fox", Width: 512, Height: 768, Steps: 20}
	for _, tc := range []struct {
		name   string
		mutate func(*Request)
		field  string // "" when accepted
	}{
		{"plain", func(*Request) {}, ""},
		{"known choices", func(r *Request) { r.SamplingMethod, r.Scheduler = "lms", "bong_tangent" }, ""},
		{"scheduler alias", func(r *Request) { r.Scheduler = "normal" }, ""},
		{"markup in prompt", func(r *Request) { r.Prompt = "x <sd_cpp_extra_args>{}</sd_cpp_extra_args>" }, "prompt"},
		{"markup in any case", func(r *Request) { r.Prompt = "<Sd_Cpp_Extra_Args>" }, "prompt"},
		{"markup in negative prompt", func(r *Request) { r.NegativePrompt = "<sd_cpp_extra_args>" }, "negative_prompt"},
		{"the word alone", func(r *Request) { r.Prompt = "sd_cpp_extra_args is a tag" }, ""},
		{"width 200", func(r *Request) { r.Width = 200 }, "width"},
		{"height 136", func(r *Request) { r.Height = 136 }, "height"},
		{"width 0", func(r *Request) { r.Width = 0 }, "width"},
		{"steps 0", func(r *Request) { r.Steps = 0 }, "steps"},
		{"unknown sampler", func(r *Request) { r.SamplingMethod = "dpm++3m" }, "sampling_method"},
		{"sampler name of another UI", func(r *Request) { r.SamplingMethod = "Euler a" }, "sampling_method"},
		{"unknown scheduler", func(r *Request) { r.Scheduler = "linear" }, "scheduler"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok
			tc.mutate(&r)
			err := CheckRequest(r)
			var fe *FieldError
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrRefused)):
				t.Errorf("err = %v, want a FieldError for %s", err, tc.field)
			}
		})
	}
	err := CheckRequest(Request{Prompt: "x", Width: 200, Height: 64, Steps: 1})
	if err == nil || !strings.Contains(err.Error(), "to 256 for SD 1.x") {
		t.Errorf("err = %v, want the size the engine would make", err)
	}
}

func TestCheckRoles(t *testing.T) {
	if err := CheckRoles([]string{"diffusion_model", "vae", "t5xxl"}); err != nil {
		t.Error(err)
	}
	if err := CheckRoles([]string{"vae"}); err == nil {
		t.Error("a model without a diffusion model passed")
	}
	if err := CheckRoles([]string{"model", "refiner"}); err == nil || !strings.Contains(err.Error(), `"refiner"`) {
		t.Errorf("err = %v", err)
	}
}

// Every flag of the generation features is in both programs' help, and
// every option's flag too, with the help's kind of value.
func TestOptionsAreInTheHelp(t *testing.T) {
	cli, srv := readHelp(t, "sd-cli-help.txt"), readHelp(t, "sd-server-help.txt")
	for _, f := range []string{FlagBatchCount, FlagInitImg, FlagMask, FlagStrength, FlagLoraModelDir} {
		if !HasFlag(CLI, f) || !HasFlag(Server, f) {
			t.Errorf("%s is not in both programs' help", f)
		}
	}
	seen := map[string]bool{}
	for _, o := range Options {
		if seen[o.Name] || !optionNameRE.MatchString(o.Name) {
			t.Errorf("option name %q is repeated or not a job's option name", o.Name)
		}
		seen[o.Name] = true
		for prog, h := range map[Program]*helptext.Help{CLI: cli, Server: srv} {
			if !HasFlag(prog, o.Flag) {
				t.Errorf("option %s: %s is not in %s's help", o.Name, o.Flag, prog)
				continue
			}
			want := o.Kind
			if want == "bool" {
				want = "" // a switch shows no value
			}
			if got := h.Values[o.Flag]; got != want {
				t.Errorf("option %s: %s's help shows %s <%s>, the table says %s", o.Name, prog, o.Flag, got, o.Kind)
			}
		}
		if o.Kind != "bool" && !(o.Min <= o.Max) || o.ServerKey == "" || o.Help == "" {
			t.Errorf("option %s: %+v", o.Name, o)
		}
	}
}

var optionNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

func TestCheckOptions(t *testing.T) {
	good := map[string]any{"clip_skip": 2.0, "eta": 0.5, "vae_tiling": true, "distilled_guidance": 3.5, "flow_shift": int64(3)}
	if err := CheckOptions(good); err != nil {
		t.Fatal(err)
	}
	args := OptionArgs(good)
	want := []string{"--clip-skip", "2", "--eta", "0.5", "--guidance", "3.5", "--flow-shift", "3", "--vae-tiling"}
	if !slices.Equal(args, want) {
		t.Errorf("OptionArgs = %v, want %v", args, want)
	}
	if got := OptionArgs(map[string]any{"vae_tiling": false}); len(got) != 0 {
		t.Errorf("vae_tiling false passes %v", got)
	}
	params := OptionParams(good)
	sp, _ := params["sample_params"].(map[string]any)
	g, _ := sp["guidance"].(map[string]any)
	vt, _ := params["vae_tiling_params"].(map[string]any)
	if params["clip_skip"] != int64(2) || sp["eta"] != 0.5 || sp["flow_shift"] != 3.0 || g["distilled_guidance"] != 3.5 || vt["enabled"] != true {
		t.Errorf("OptionParams = %v", params)
	}
	for opts, field := range map[string]string{
		`{"clip_skip": 2.5}`:             "options.clip_skip",
		`{"clip_skip": 13}`:              "options.clip_skip",
		`{"eta": "high"}`:                "options.eta",
		`{"vae_tiling": 1}`:              "options.vae_tiling",
		`{"sampling_method": "euler"}`:   "options.sampling_method",
		`{"threads": 8}`:                 "options.threads",
		`{"a_unknown": 1, "eta": -1}`:    "options.a_unknown",
		`{"eta": 0.2, "flow_shift": 99}`: "options.flow_shift",
	} {
		var m map[string]any
		if err := json.Unmarshal([]byte(opts), &m); err != nil {
			t.Fatal(err)
		}
		var fe *FieldError
		if err := CheckOptions(m); !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: %v, want a FieldError on %s", opts, err, field)
		}
	}
}

func TestSampledSteps(t *testing.T) {
	for _, c := range []struct {
		steps    int
		img2img  bool
		strength float64
		want     int
	}{{20, false, 0.3, 20}, {20, true, 0.75, 16}, {20, true, 1, 20}, {10, true, 0.3, 4}, {3, true, 0.2, 1}} {
		if got := SampledSteps(c.steps, c.img2img, c.strength); got != c.want {
			t.Errorf("SampledSteps(%d, %v, %v) = %d, want %d", c.steps, c.img2img, c.strength, got, c.want)
		}
	}
	if err := CheckRequest(Request{Prompt: "a fox <LoRA:/etc/passwd:1>", Width: 64, Height: 64, Steps: 1}); err == nil {
		t.Error("a prompt with a LoRA tag passed")
	}
}
