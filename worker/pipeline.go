package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"image/png"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// run is the pipeline: resolve → check the job's features → acquire
// (fetch, verify, map) the model and its LoRAs → read the input images →
// generate the job's n images → encode → upload. It fills rec.Timings as
// it goes, and rec.Outputs (one per image) once every image is uploaded;
// it returns the first image's output.
func (w *Worker) run(ctx context.Context, rec *job.Record, req *job.Request, log *slog.Logger) (*job.Output, error) {
	phase := func(name string, start time.Time) {
		d := time.Since(start)
		rec.Timings[name] = ms(d)
		w.metrics.phase.WithLabelValues(name).Observe(d.Seconds())
	}

	t := time.Now()
	man, err := w.cfg.Registry.Resolve(ctx, req.Model)
	if err != nil {
		return nil, fmt.Errorf("resolve model %q: %w", req.Model, err)
	}
	loraMans, err := w.resolveLoRAs(ctx, req, man)
	if err != nil {
		return nil, err
	}
	phase("resolve", t)
	// Before anything is downloaded: a model of an engine this worker does
	// not run was queued where it should not have been (a producer that
	// picked the wrong pool); it fails at once, saying so.
	if eng := man.EngineName(); !slices.Contains(w.cfg.Backend.Engines(), eng) {
		return nil, fmt.Errorf("model %q needs engine %q, but this worker's backend %q runs %s; it was queued on %s, which is for workers of device class %q: %w",
			req.Model, eng, w.cfg.Backend.Name(), strings.Join(w.cfg.Backend.Engines(), ", "), rec.Queue, w.cfg.Backend.DeviceClass(), errWrongEngine)
	}
	if err := w.checkFeatures(req); err != nil {
		return nil, err
	}

	t = time.Now()
	m, err := w.cfg.Cache.Acquire(ctx, man)
	if err != nil {
		return nil, err // names the model and file already
	}
	defer m.Close()
	r := m.Report
	for name, d := range map[string]time.Duration{"wait": r.Wait, "fetch": r.Fetch, "verify": r.Verify, "map": r.Map, "prefault": r.Prefault, "read": r.Read} {
		rec.Timings[name] = ms(d)
		w.metrics.phase.WithLabelValues(name).Observe(d.Seconds())
	}
	rec.Timings["acquire"] = ms(time.Since(t))
	w.models.used(req.Model, modelcache.KindModel, digestsOf(m), map[string]float64{
		"wait": rec.Timings["wait"], "fetch": rec.Timings["fetch"], "verify": rec.Timings["verify"], "map": rec.Timings["map"],
	}, true, r.Origin != modelcache.OriginDisk)
	defer w.models.used(req.Model, modelcache.KindModel, digestsOf(m), nil, false, false)
	defer func() { w.models.ran(req.Model, rec.Timings) }()
	w.countAcquire(r)
	log.Debug("model acquired", "model", req.Model, "from", r.Origin, "fetched_bytes", r.FetchedBytes)
	w.publishModel(ctx, rec, r)
	if len(m.Blobs) == 0 {
		return nil, fmt.Errorf("model %q has no files: %w", req.Model, backends.ErrBadModel)
	}
	files := make([]backends.File, len(m.Blobs))
	for i, b := range m.Blobs {
		f := man.Files[i]
		files[i] = backends.File{Role: f.Role, Name: f.Name, Digest: b.Digest, Path: b.Path, Data: b.Data}
	}
	bm := backends.Model{Name: req.Model, Files: files, Hold: m.Hold}

	if len(loraMans) > 0 {
		t = time.Now()
		loras, release, err := w.acquireLoRAs(ctx, req, loraMans)
		if err != nil {
			return nil, err
		}
		defer release()
		bm.LoRAs = loras
		phase("loras", t)
	}

	params := backends.Params{
		Prompt: req.Prompt, NegativePrompt: req.NegativePrompt,
		Width: req.Width, Height: req.Height, Steps: req.Steps,
		Seed: req.Seed, Guidance: req.Guidance,
		SamplingMethod: req.SamplingMethod, Scheduler: req.Scheduler,
		N: req.Images(), Options: req.Options,
	}
	if req.InitImage != "" {
		t = time.Now()
		init, mask, err := w.uploads.LoadJob(ctx, req)
		if err != nil {
			return nil, err // a FieldError (permanent) or an S3 fault (retried)
		}
		params.InitImage, params.Strength = inputImage(init), req.StrengthValue()
		if mask != nil {
			params.Mask = inputImage(mask)
		}
		phase("inputs", t)
	}

	t = time.Now()
	var lastWrite time.Time
	progress := func(step, total int) {
		// Progress is advisory: throttle writes and ignore their errors.
		if step == total || time.Since(lastWrite) > 200*time.Millisecond {
			lastWrite = time.Now()
			_ = w.store.Progress(context.WithoutCancel(ctx), rec.ID, step, total, req.Webhook.Wants(job.EventProgress))
		}
	}
	// Phases the backend measures itself (an engine's weight load) are
	// part of generate.
	gctx := backends.WithPhases(ctx, func(name string, d time.Duration) {
		rec.Timings[name] = ms(d)
		w.metrics.phase.WithLabelValues(name).Observe(d.Seconds())
	})
	imgs, err := backends.GenerateAll(gctx, w.cfg.Backend, bm, params, progress)
	if err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	phase("generate", t)

	outs := make([]job.Output, len(imgs))
	var encode, upload time.Duration
	for k, img := range imgs {
		t = time.Now()
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			return nil, fmt.Errorf("encode png of image %d: %w", k, err)
		}
		encode += time.Since(t)

		t = time.Now()
		key, err := job.ImageKey(w.cfg.Outputs.Key, rec.ID, k)
		if err != nil {
			return nil, err // ProcessTask checked the id, Validate n: not reached
		}
		sum := sha256.Sum256(buf.Bytes())
		_, err = w.cfg.S3.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(w.cfg.Outputs.Bucket),
			Key:           aws.String(key),
			Body:          bytes.NewReader(buf.Bytes()),
			ContentLength: aws.Int64(int64(buf.Len())),
			ContentType:   aws.String("image/png"),
			Metadata:      map[string]string{"genfleet-model-digest": files[0].Digest, "genfleet-job": rec.ID},
		})
		if err != nil {
			return nil, fmt.Errorf("upload output to s3://%s/%s: %w", w.cfg.Outputs.Bucket, key, err)
		}
		upload += time.Since(t)

		b := img.Bounds()
		outs[k] = job.Output{
			Bucket: w.cfg.Outputs.Bucket, Key: key, URL: "s3://" + w.cfg.Outputs.Bucket + "/" + key,
			ContentType: "image/png", Bytes: int64(buf.Len()), SHA256: hex.EncodeToString(sum[:]),
			ModelDigest: files[0].Digest, Width: b.Dx(), Height: b.Dy(), CacheHit: r.Hit,
			ModelSource: string(r.Origin), ModelWaitMS: ms(r.Wait), ModelFetchedBytes: r.FetchedBytes,
			Seed: req.ImageSeed(k),
		}
	}
	for name, d := range map[string]time.Duration{"encode": encode, "upload": upload} {
		rec.Timings[name] = ms(d)
		w.metrics.phase.WithLabelValues(name).Observe(d.Seconds())
	}
	rec.Outputs = outs
	return &outs[0], nil
}

// countAcquire counts where an acquire found its files, and asks for a
// heartbeat when it fetched any (the cache changed).
func (w *Worker) countAcquire(r modelcache.Report) {
	switch {
	case r.Hit:
		w.metrics.cache.WithLabelValues("hit").Inc()
	case r.Origin == modelcache.OriginWaited:
		w.metrics.cache.WithLabelValues("waited").Inc()
	default:
		w.metrics.cache.WithLabelValues("miss").Inc()
		select {
		case w.beatNow <- struct{}{}:
		default:
		}
	}
}
