package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/backends/sdcpp/spec"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/openai"
	"github.com/genfleet/genfleet/uploads"
)

// engineFeatures lists what an engine's backends do beyond one
// text-to-image picture, as the engine's package declares it: the job
// fields (init_image, mask, loras) a job for one of its models may use.
// Several images per job need no feature: every backend makes them.
func engineFeatures(eng string) []string {
	switch eng {
	case modelcache.EngineBuiltin:
		return refgen.Features
	case spec.Engine:
		return spec.Features
	}
	return nil
}

// usedFeatures lists the features req uses, each with the field that asks
// for it.
func usedFeatures(req *job.Request) []string {
	var f []string
	if req.InitImage != "" {
		f = append(f, backends.FeatureInitImage)
	}
	if req.Mask != "" {
		f = append(f, backends.FeatureMask)
	}
	if len(req.LoRAs) > 0 {
		f = append(f, backends.FeatureLoRAs)
	}
	return f
}

// refuse is the submitError of a job admitGeneration refuses.
func refuse(code int, field, outcome string, err error) *submitError {
	return &submitError{code: code, field: field, err: err, outcome: outcome}
}

// admitGeneration checks what req asks beyond one text-to-image picture.
// With the model's manifest (man; nil when the registry was not asked or
// could not be reached): the model is of kind model, its engine has every
// feature the job uses, and each LoRA is a registered LoRA of the same
// engine. Always: the init image and mask exist and are PNG or JPEG of the
// job's size. It returns the LoRAs' file digests (for routing), or why the
// job is refused. An S3 or registry fault does not refuse the job: the
// worker checks the same again.
func (s *Server) admitGeneration(ctx context.Context, man *modelcache.Manifest, req *job.Request) ([]string, *submitError) {
	var loraDigests []string
	if man != nil {
		if k := man.KindName(); k != modelcache.KindModel {
			return nil, refuse(http.StatusBadRequest, "model", "invalid",
				fmt.Errorf("model: %q is a %s, not a model a job runs; name it in \"loras\" to apply it to a model", req.Model, k))
		}
		eng := man.EngineName()
		have := engineFeatures(eng)
		for _, f := range usedFeatures(req) {
			if !slices.Contains(have, f) {
				return nil, refuse(http.StatusBadRequest, f, "invalid",
					fmt.Errorf("%s: model %q runs on engine %s, which does not take %s (it takes: %s)", f, req.Model, eng, f, listOrNone(have)))
			}
		}
		if field, err := checkOptions(eng, req); err != nil {
			return nil, refuse(http.StatusBadRequest, field, "invalid", err)
		}
		for i, l := range req.LoRAs {
			field := fmt.Sprintf("loras[%d].model", i)
			lm, err := s.resolve(ctx, l.Model)
			switch {
			case errors.Is(err, modelcache.ErrModelNotFound):
				return nil, refuse(http.StatusNotFound, field, "unknown_model", fmt.Errorf("%s: %w", field, err))
			case errors.Is(err, modelcache.ErrBadManifest):
				return nil, refuse(http.StatusUnprocessableEntity, field, "bad_model", fmt.Errorf("%s: %w", field, err))
			case errors.Is(err, modelcache.ErrInvalidRef):
				return nil, refuse(http.StatusBadRequest, field, "invalid", fmt.Errorf("%s: %w", field, err))
			case err != nil:
				s.log.Warn("LoRA check failed; accepting job", "lora", l.Model, "err", err)
				loraDigests = nil
				continue
			}
			// A raw s3:// ref has no manifest to say its kind: it is taken
			// as a LoRA of the model's engine, and the backend checks it.
			if lm.Name != "" && lm.KindName() != modelcache.KindLoRA {
				return nil, refuse(http.StatusBadRequest, field, "invalid",
					fmt.Errorf("%s: %q is a %s, not a LoRA (push LoRAs with `genfleet models push --kind lora`)", field, l.Model, lm.KindName()))
			}
			if lm.Name != "" && lm.EngineName() != eng {
				return nil, refuse(http.StatusBadRequest, field, "invalid",
					fmt.Errorf("%s: LoRA %q is for engine %s, model %q runs on %s", field, l.Model, lm.EngineName(), req.Model, eng))
			}
			for _, f := range lm.Files {
				if f.Digest != "" {
					loraDigests = append(loraDigests, f.Digest)
				}
			}
		}
	}
	if req.InitImage != "" {
		if _, _, err := s.uploads.LoadJob(ctx, req); err != nil {
			var fe *job.FieldError
			if errors.As(err, &fe) {
				return nil, refuse(http.StatusBadRequest, fe.Field, "invalid", err)
			}
			s.log.Warn("input image check failed; accepting job", "init_image", req.InitImage, "err", err)
		}
	}
	return loraDigests, nil
}

// checkOptions checks req's engine options against the table of engine
// eng (docs/engines.md); it returns the field ("options.<name>") of the
// first one the engine does not take. The built-in engine takes none;
// stable-diffusion.cpp those of spec.Options.
func checkOptions(eng string, req *job.Request) (string, error) {
	if len(req.Options) == 0 {
		return "", nil
	}
	if eng == spec.Engine {
		err := spec.CheckOptions(req.Options)
		var fe *spec.FieldError
		if errors.As(err, &fe) {
			return fe.Field, fmt.Errorf("%s: model %q runs on stable-diffusion.cpp: %s", fe.Field, req.Model, fe.Message)
		}
		return "", err
	}
	names := slices.Sorted(maps.Keys(req.Options))
	field := "options." + names[0]
	return field, fmt.Errorf("%s: model %q runs on engine %s, which takes no engine options", field, req.Model, eng)
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none of them"
	}
	return fmt.Sprint(l)
}

// newUploads is the scheduler's store of input images.
func newUploads(cfg Config) *uploads.Store {
	return &uploads.Store{S3: cfg.S3, Root: cfg.Uploads, MaxBytes: cfg.MaxUploadBytes}
}

// mountOpenAI serves OpenAI's images API (package openai) on mux. Its
// requests reach genfleet's API through inner, the API's handler without
// authentication: mux's routes are behind it already.
func (s *Server) mountOpenAI(mux *http.ServeMux, inner http.Handler) error {
	oa, err := openai.New(openai.Config{API: inner, DefaultModel: s.cfg.OpenAIDefaultModel, ModelAliases: s.cfg.OpenAIModelAliases, Wait: s.cfg.OpenAIWait,
		MaxFormBytes: 3*max(s.cfg.MaxUploadBytes, uploads.DefaultMaxBytes) + 1<<20, Logger: s.log})
	if err != nil {
		return err
	}
	s.route(mux, "POST /v1/images/generations", oa.Generations)
	s.route(mux, "POST /v1/images/edits", oa.Edits)
	return nil
}
