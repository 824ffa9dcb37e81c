package worker

import (
	"context"
	"fmt"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/uploads"
)

// The parts of the pipeline for what a job asks beyond one text-to-image
// picture: LoRAs, input images, and the backend's features.

// resolveLoRAs resolves the job's LoRAs, in order, and checks what the
// scheduler checked at submit (a producer may enqueue straight into
// Redis): the job's model is a model, and each LoRA a LoRA of its engine.
// Errors name the field; those no retry can mend wrap job.ErrInvalid or
// the registry's permanent errors.
func (w *Worker) resolveLoRAs(ctx context.Context, req *job.Request, man *modelcache.Manifest) ([]*modelcache.Manifest, error) {
	if k := man.KindName(); k != modelcache.KindModel {
		return nil, &job.FieldError{Field: "model", Message: fmt.Sprintf("%q is a %s, not a model a job runs", req.Model, k)}
	}
	out := make([]*modelcache.Manifest, 0, len(req.LoRAs))
	for i, l := range req.LoRAs {
		field := fmt.Sprintf("loras[%d].model", i)
		lm, err := w.cfg.Registry.Resolve(ctx, l.Model)
		if err != nil {
			return nil, fmt.Errorf("%s: resolve LoRA %q: %w", field, l.Model, err)
		}
		if lm.Name != "" && lm.KindName() != modelcache.KindLoRA {
			return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("%q is a %s, not a LoRA", l.Model, lm.KindName())}
		}
		if len(lm.Files) != 1 {
			return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("LoRA %q has %d files; a LoRA is one file", l.Model, len(lm.Files))}
		}
		if lm.Name != "" && lm.EngineName() != man.EngineName() {
			return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("LoRA %q is for engine %s, model %q runs on %s", l.Model, lm.EngineName(), req.Model, man.EngineName())}
		}
		out = append(out, lm)
	}
	return out, nil
}

// checkFeatures refuses, before anything is fetched, a job that asks for
// a feature this worker's backend does not have.
func (w *Worker) checkFeatures(req *job.Request) error {
	for _, f := range []struct {
		name string
		used bool
	}{
		{backends.FeatureInitImage, req.InitImage != ""},
		{backends.FeatureMask, req.Mask != ""},
		{backends.FeatureLoRAs, len(req.LoRAs) > 0},
	} {
		if f.used && !backends.Supports(w.cfg.Backend, f.name) {
			return fmt.Errorf("%s: backend %s does not take %s (it takes: %v): %w", f.name, w.cfg.Backend.Name(), f.name, w.cfg.Backend.Features(), backends.ErrBadParams)
		}
	}
	return nil
}

// acquireLoRAs acquires each LoRA from the model cache, like any model
// (fetched once per host, verified, mapped, leased), and records it for
// the heartbeat. release closes them all.
func (w *Worker) acquireLoRAs(ctx context.Context, req *job.Request, mans []*modelcache.Manifest) ([]backends.LoRA, func(), error) {
	var held []*modelcache.Model
	release := func() {
		for i, m := range held {
			w.models.used(req.LoRAs[i].Model, modelcache.KindLoRA, digestsOf(m), nil, false, false)
			m.Close()
		}
	}
	out := make([]backends.LoRA, 0, len(mans))
	for i, man := range mans {
		m, err := w.cfg.Cache.Acquire(ctx, man)
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("loras[%d].model: LoRA %q: %w", i, req.LoRAs[i].Model, err)
		}
		held = append(held, m)
		w.countAcquire(m.Report)
		w.models.used(req.LoRAs[i].Model, modelcache.KindLoRA, digestsOf(m), nil, true, false)
		b := m.Blobs[0]
		out = append(out, backends.LoRA{
			Name: req.LoRAs[i].Model, Weight: req.LoRAs[i].Weight,
			File: backends.File{Role: man.Files[0].Role, Name: man.Files[0].Name, Digest: b.Digest, Path: b.Path, Data: b.Data},
		})
	}
	return out, release, nil
}

// inputImage is an input image as a backend takes it.
func inputImage(im *uploads.Image) *backends.Image {
	return &backends.Image{Data: im.Data, Format: im.Format, Digest: "sha256:" + im.SHA256, Image: im.Image}
}
