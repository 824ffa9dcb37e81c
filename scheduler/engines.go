package scheduler

import (
	"errors"
	"fmt"

	"github.com/genfleet/genfleet/backends/sdcpp/spec"
	"github.com/genfleet/genfleet/job"
)

// checkEngine refuses at submit what engine eng cannot run exactly as
// asked, naming the request field; the worker's backend checks the same
// again (a producer may enqueue straight into Redis). Only
// stable-diffusion.cpp has such rules (spec.CheckRequest: the sampler and
// scheduler names it lists, sizes it would round, the prompt markup its
// server reads as parameters); the built-in engine's are poolFor's.
func checkEngine(eng string, req *job.Request) (field string, err error) {
	if eng != spec.Engine {
		return "", nil
	}
	err = spec.CheckRequest(spec.Request{
		Prompt: req.Prompt, NegativePrompt: req.NegativePrompt,
		Width: req.Width, Height: req.Height, Steps: req.Steps,
		SamplingMethod: req.SamplingMethod, Scheduler: req.Scheduler,
	})
	var fe *spec.FieldError
	if errors.As(err, &fe) {
		return fe.Field, fmt.Errorf("%s: model %q runs on stable-diffusion.cpp: %s", fe.Field, req.Model, fe.Message)
	}
	return "", err
}
