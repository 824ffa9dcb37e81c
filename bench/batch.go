package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/cpu"
	"github.com/genfleet/genfleet/backends/sdcpp"
	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/worker"
)

// BatchOptions is one run of Batch.
type BatchOptions struct {
	// Redis and S3 as for Queue: nil and an empty Endpoint start servers
	// for the run.
	Redis asynq.RedisConnOpt
	S3    s3x.Config
	// ModelSize is the reference model's size. Default 16 MiB.
	ModelSize int64
	// Images is n: one job of n images against n jobs of one. Default 8.
	Images int
	// Width, Height and Steps of every image. Defaults 256, 256, 2.
	Width, Height, Steps int
	// Rounds, each one n-image job and n one-image jobs (in alternating
	// order). Default 3. The figures are medians over rounds.
	Rounds int
	// Sdcpp, when set, runs the jobs on stable-diffusion.cpp (a backend of
	// these settings) instead of the built-in engine, with SdcppModel, a
	// model file the engine loads (`genfleet models make --arch sd1`
	// writes one), as the model; ModelSize is then unused. Sizes must be
	// multiples of 64.
	Sdcpp      *sdcpp.Config
	SdcppModel string
}

// BatchResult is what Batch measured: images per second, from the first
// submit to the last job's end, on one worker of concurrency 1 (the
// built-in engine on the CPU), with a job of n images and with n jobs of
// one image.
type BatchResult struct {
	// Engine is the engine the jobs ran on: refgen, or sdcpp with its
	// mode (sdcpp/process, sdcpp/server).
	Engine     string `json:"engine"`
	Images     int    `json:"images"`
	Rounds     int    `json:"rounds"`
	ModelBytes int64  `json:"model_bytes"`
	Width      int    `json:"width"`
	Height     int    `json:"height"`
	Steps      int    `json:"steps"`

	BatchImagesPerS  float64 `json:"batch_images_per_s"`
	SingleImagesPerS float64 `json:"single_images_per_s"`
	// Ratio is the median of the rounds' batch/single rates.
	Ratio       float64   `json:"ratio"`
	RoundRatios []float64 `json:"round_ratios"`
	// SavedMSPerImage is what each image costs less in a batch: the
	// median over rounds of (n one-image jobs' time − the n-image job's
	// time) / n.
	SavedMSPerImage float64 `json:"saved_ms_per_image"`
	// The worker's own phases, medians over rounds, in ms per image: the
	// model's acquire (the cache's work) and the generation.
	BatchAcquireMSPerImage   float64 `json:"batch_acquire_ms_per_image"`
	SingleAcquireMSPerImage  float64 `json:"single_acquire_ms_per_image"`
	BatchGenerateMSPerImage  float64 `json:"batch_generate_ms_per_image"`
	SingleGenerateMSPerImage float64 `json:"single_generate_ms_per_image"`
}

// Batch measures what a job of several images saves: the model is
// acquired, the job queued, claimed and recorded once for all its images.
// One worker (concurrency 1, the cpu backend) in this process runs a job of
// n images and n jobs of one image, submitted at once, round after round;
// the anchor is the n single jobs. A warm-up job fetches the model first,
// so every measured job finds it in the cache.
func Batch(ctx context.Context, o BatchOptions, progress io.Writer) (*BatchResult, error) {
	progress = orDiscard(progress)
	if o.ModelSize == 0 {
		o.ModelSize = 16 << 20
	}
	if o.Images == 0 {
		o.Images = 8
	}
	if o.Width == 0 {
		o.Width = 256
	}
	if o.Height == 0 {
		o.Height = 256
	}
	if o.Steps == 0 {
		o.Steps = 2
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Images < 2 || o.Images > job.MaxN {
		return nil, fmt.Errorf("--images %d: want 2..%d", o.Images, job.MaxN)
	}
	if o.Rounds < 1 {
		return nil, fmt.Errorf("--rounds %d: want at least 1", o.Rounds)
	}
	redisOpt, stopRedis, err := startRedis(o.Redis)
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	fl, err := startBatchFleet(ctx, o, redisOpt)
	if err != nil {
		return nil, err
	}
	defer fl.stop()

	body := func(seed, n int) job.Request {
		return job.Request{Model: "demo", Prompt: "a batch", Seed: int64(seed), Width: o.Width, Height: o.Height, Steps: o.Steps,
			Guidance: job.DefaultGuidance, N: job.Count(n)}
	}
	if _, err := fl.runJobs(ctx, []job.Request{body(0, 1)}); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	res := &BatchResult{Engine: fl.engine, Images: o.Images, Rounds: o.Rounds, ModelBytes: fl.modelBytes, Width: o.Width, Height: o.Height, Steps: o.Steps}
	var batchRates, singleRates, saved, bAcq, sAcq, bGen, sGen []float64
	n := o.Images
	for r := range o.Rounds {
		batch := func() (time.Duration, []*job.Record, error) {
			return fl.timeJobs(ctx, []job.Request{body(100*r, n)})
		}
		singles := func() (time.Duration, []*job.Record, error) {
			bodies := make([]job.Request, n)
			for k := range bodies {
				bodies[k] = body(100*r+k, 1)
			}
			return fl.timeJobs(ctx, bodies)
		}
		var bt, st time.Duration
		var brecs, srecs []*job.Record
		if r%2 == 0 {
			if bt, brecs, err = batch(); err == nil {
				st, srecs, err = singles()
			}
		} else {
			if st, srecs, err = singles(); err == nil {
				bt, brecs, err = batch()
			}
		}
		if err != nil {
			return nil, err
		}
		br, sr := float64(n)/bt.Seconds(), float64(n)/st.Seconds()
		batchRates, singleRates = append(batchRates, br), append(singleRates, sr)
		res.RoundRatios = append(res.RoundRatios, round3(br/sr))
		saved = append(saved, float64((st-bt).Microseconds())/1000/float64(n))
		bAcq, sAcq = append(bAcq, timing(brecs, "acquire")/float64(n)), append(sAcq, timing(srecs, "acquire")/float64(n))
		bGen, sGen = append(bGen, timing(brecs, "generate")/float64(n)), append(sGen, timing(srecs, "generate")/float64(n))
		fmt.Fprintf(progress, "round %d: %d images in one job %.2f/s, in %d jobs %.2f/s (×%.2f)\n", r+1, n, br, n, sr, br/sr)
	}
	res.BatchImagesPerS, res.SingleImagesPerS = round3(median(batchRates)), round3(median(singleRates))
	res.Ratio = round3(median(res.RoundRatios))
	res.SavedMSPerImage = round3(median(saved))
	res.BatchAcquireMSPerImage, res.SingleAcquireMSPerImage = round3(median(bAcq)), round3(median(sAcq))
	res.BatchGenerateMSPerImage, res.SingleGenerateMSPerImage = round3(median(bGen)), round3(median(sGen))
	return res, nil
}

// timing sums a phase's timing over recs.
func timing(recs []*job.Record, phase string) float64 {
	var t float64
	for _, r := range recs {
		t += r.Timings[phase]
	}
	return t
}

// batchFleet is a scheduler and one worker in this process.
type batchFleet struct {
	api        *client.Client
	store      *job.Store
	engine     string
	modelBytes int64
	stop       func()
}

func startBatchFleet(ctx context.Context, o BatchOptions, opt asynq.RedisConnOpt) (fl *batchFleet, err error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	dir, err := os.MkdirTemp("", "genfleet-bench-batch-")
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	s3cl, _, stopS3, err := startS3(ctx, o.S3, "", "genfleet-models", "genfleet-outputs")
	if err != nil {
		return nil, err
	}
	undo = append(undo, stopS3)
	src := modelcache.NewS3Source(s3cl)
	reg := &modelcache.Registry{Src: src, Root: s3x.URL{Bucket: "genfleet-models"}}
	var be backends.Backend
	engine := "refgen"
	man, err := func() (*modelcache.Manifest, error) {
		if o.Sdcpp == nil {
			model := dir + "/demo.safetensors"
			if err := writeModel(model, o.ModelSize, 1); err != nil {
				return nil, err
			}
			if be, err = cpu.New(); err != nil {
				return nil, err
			}
			return reg.Push(ctx, model, s3x.URL{Bucket: "genfleet-models", Key: "blobs/demo.safetensors"}, "demo", nil)
		}
		if o.SdcppModel == "" {
			return nil, errors.New("--model: an sdcpp batch needs a model file the engine loads (genfleet models make --arch sd1)")
		}
		cfg := *o.Sdcpp
		cfg.Logger = log
		b, err := sdcpp.New(cfg)
		if err != nil {
			return nil, err
		}
		be = b
		mode := cfg.Mode
		if mode == "" || mode == sdcpp.ModeAuto {
			if _, srv := b.Programs(); srv != "" {
				mode = sdcpp.ModeServer
			} else {
				mode = sdcpp.ModeProcess
			}
		}
		engine = "sdcpp/" + mode
		return reg.PushModel(ctx, "demo", sdcpp.Engine, []modelcache.PushFile{{Path: o.SdcppModel, Role: "model",
			Dest: s3x.URL{Bucket: "genfleet-models", Key: "blobs/demo/"}}}, nil)
	}()
	if err != nil {
		return nil, err
	}
	if c, ok := be.(io.Closer); ok {
		undo = append(undo, func() { c.Close() })
	}
	var modelBytes int64
	for _, f := range man.Files {
		modelBytes += f.Size
	}
	cache, err := modelcache.Open(dir+"/cache", src)
	if err != nil {
		return nil, err
	}
	_, addr, stopAPI, err := serveAPI(scheduler.Config{Redis: opt, S3: s3cl, Registry: reg, Pool: "cpu", Logger: log})
	if err != nil {
		return nil, err
	}
	undo = append(undo, stopAPI)
	w, err := worker.New(worker.Config{Redis: opt, S3: s3cl, Outputs: s3x.URL{Bucket: "genfleet-outputs", Key: "outputs/"},
		Registry: reg, Cache: cache, Backend: be, HostID: "bench-batch", Concurrency: 1, Logger: log})
	if err != nil {
		return nil, err
	}
	rdb, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		w.Close()
		return nil, fmt.Errorf("unsupported Redis connection option %T", opt)
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	wdone := make(chan struct{})
	go func() { defer close(wdone); _ = w.Run(wctx) }()
	return &batchFleet{
		api: client.New("http://"+addr, ""), store: job.NewStore(rdb),
		engine: engine, modelBytes: modelBytes,
		stop: func() {
			stopWorker()
			<-wdone
			w.Close()
			rdb.Close()
			stopAPI()
			stopS3()
			os.RemoveAll(dir)
		},
	}, nil
}

// runJobs submits the bodies at once and waits for every job to succeed.
func (f *batchFleet) runJobs(ctx context.Context, bodies []job.Request) ([]*job.Record, error) {
	ids := make([]string, len(bodies))
	for i, b := range bodies {
		a, err := f.api.Submit(ctx, b)
		if err != nil {
			return nil, err
		}
		ids[i] = a.ID
	}
	recs := make([]*job.Record, len(ids))
	deadline := time.Now().Add(30 * time.Minute)
	for i, id := range ids {
		for {
			rec, err := f.store.Get(ctx, id)
			if err == nil && rec.Status.Terminal() {
				if rec.Status != job.StatusSucceeded {
					return nil, fmt.Errorf("job %s %s: %s", id, rec.Status, rec.Error)
				}
				recs[i] = rec
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("job %s not done after 30 minutes", id)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return recs, nil
}

// timeJobs is runJobs with the time from the first submit to the last
// job's end (its record's finished_at).
func (f *batchFleet) timeJobs(ctx context.Context, bodies []job.Request) (time.Duration, []*job.Record, error) {
	start := time.Now()
	recs, err := f.runJobs(ctx, bodies)
	if err != nil {
		return 0, nil, err
	}
	var end time.Time
	for _, r := range recs {
		if r.FinishedAt.After(end) {
			end = r.FinishedAt
		}
	}
	return end.Sub(start), recs, nil
}
