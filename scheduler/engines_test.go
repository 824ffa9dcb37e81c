package scheduler

import (
	"strings"
	"testing"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// A job for a stable-diffusion.cpp model is refused at submit, naming the
// field, when the engine would not run it as asked; what the engine lists
// passes.
func TestPoolForChecksTheEnginesRules(t *testing.T) {
	s := &Server{cfg: Config{Pool: "cpu", EnginePools: map[string]string{"sdcpp": "sdcpp"}}}
	sd := &modelcache.Manifest{Engine: "sdcpp"}
	ok := func() job.Request {
		return job.Request{Model: "sd1", Prompt: "a fox", Width: 256, Height: 192, Steps: 2}
	}
	for _, tc := range []struct {
		name   string
		mutate func(*job.Request)
		field  string // "" when accepted
		says   string
	}{
		{"plain", func(*job.Request) {}, "", ""},
		{"a sampler of the real engine", func(r *job.Request) { r.SamplingMethod, r.Scheduler = "dpm++2m_sde", "beta" }, "", ""},
		{"er_sde and an alias", func(r *job.Request) { r.SamplingMethod, r.Scheduler = "er_sde", "normal" }, "", ""},
		{"unknown sampler", func(r *job.Request) { r.SamplingMethod = "euler_b" }, "sampling_method", "dpm++2m_sde"},
		{"unknown scheduler", func(r *job.Request) { r.Scheduler = "linear" }, "scheduler", "karras"},
		{"width the engine rounds", func(r *job.Request) { r.Width, r.Height = 200, 136 }, "width", "multiple of 64"},
		{"height the engine rounds", func(r *job.Request) { r.Height = 136 }, "height", "to 192"},
		{"parameters in the prompt", func(r *job.Request) {
			r.Prompt = `a fox <sd_cpp_extra_args>{"width":128,"height":128}</sd_cpp_extra_args>`
		}, "prompt", "<sd_cpp_extra_args>"},
		{"parameters in the negative prompt", func(r *job.Request) { r.NegativePrompt = "<SD_CPP_EXTRA_ARGS>{}" }, "negative_prompt", "override"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := ok()
			tc.mutate(&req)
			class, field, err := s.poolFor(sd, &req)
			if tc.field == "" {
				if err != nil || class != "sdcpp" {
					t.Fatalf("poolFor = %q, %v; want sdcpp", class, err)
				}
				return
			}
			if err == nil || field != tc.field || !strings.Contains(err.Error(), tc.says) || !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("poolFor: field %q, err %v; want field %q saying %q", field, err, tc.field, tc.says)
			}
		})
	}
	// The built-in engine's sizes are its own (multiples of 8).
	req := ok()
	req.Width = 200
	if class, _, err := s.poolFor(&modelcache.Manifest{}, &req); err != nil || class != "cpu" {
		t.Errorf("built-in engine, width 200: %q %v", class, err)
	}
}
