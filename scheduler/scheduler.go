// Package scheduler is genfleet's HTTP API: it validates generation
// requests, enqueues them into Redis with asynq, reports job status (also of
// jobs that producers enqueued straight into Redis), lists recent jobs and
// the queues, serves finished images and their thumbnails from the outputs
// bucket, cancels jobs, and lists the models the registry knows.
package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/outputs"
	"github.com/genfleet/genfleet/ui"
	"github.com/genfleet/genfleet/uploads"
	"github.com/genfleet/genfleet/webhook"
)

// Config configures the API server. Fields without a stated default are
// required.
type Config struct {
	Redis    asynq.RedisConnOpt
	S3       *s3.Client
	Registry *modelcache.Registry
	// Pool is the device class jobs for the built-in engine's models are
	// queued for. Default job.DefaultPool.
	Pool string
	// EnginePools maps other model engines (a manifest's "engine") to the
	// device class whose workers run them. Default {"sdcpp": "sdcpp"}. A
	// job whose model's engine has no pool is refused with 400.
	EnginePools map[string]string
	// MaxBodyBytes limits a request body. Default 64 KiB.
	MaxBodyBytes int64
	// MaxBatchBytes limits the body of POST /v1/jobs:batch. Default 16 MiB.
	MaxBatchBytes int64
	// IdempotencyTTL is how long an Idempotency-Key keeps naming its job.
	// Default 24h.
	IdempotencyTTL time.Duration
	// CheckModels makes POST /v1/jobs resolve the model in the registry and
	// answer 404 for an unknown one. Default true via New's callers; a
	// registry that cannot be reached does not block submission.
	CheckModels bool
	// Routing is the routing policy (see Route). Its zero value routes
	// nothing: every job goes to the pool queue.
	Routing Policy
	// FleetTTL is how long a fetched view of the fleet is reused for
	// routing decisions. Default 250ms.
	FleetTTL time.Duration
	// HostTimeout is how long a host may go without a heartbeat before the
	// reaper moves its pending host-queue jobs back to the pool. Default 10s
	// (workers beat every 2s; a heartbeat lives 6s).
	HostTimeout time.Duration
	// ReapInterval is how often the reaper looks for silent hosts. Default 2s.
	ReapInterval time.Duration
	// ManifestTTL is how long a resolved model manifest is reused at submit
	// before the registry is asked again. Default 5s. Unknown models are
	// never cached, so a model pushed a moment ago is found at once.
	ManifestTTL time.Duration
	// MaxEventStreams bounds the GET /v1/jobs/{id}/events streams open at
	// once (each holds a Redis connection of its own while it waits); one
	// more is answered 503. Default 256.
	MaxEventStreams int
	// EventKeepAlive is how long an event stream waits for news before it
	// sends a comment line, which keeps proxies from closing it. Default 15s.
	EventKeepAlive time.Duration
	// Images makes the image_url of a succeeded job's status (presigned
	// S3 GET or the API's own URL, outputs.URLs); nil: none.
	Images *outputs.URLs
	// OutputRetention is how long images are kept (the outputs bucket's
	// lifecycle rule or the retention sweep deletes older ones): a job
	// older than that gets no image_url, and its image is reported gone.
	// 0: kept for ever.
	OutputRetention time.Duration
	// Webhooks says that a webhook deliverer runs beside this API (it has a
	// secret): jobs with a webhook are taken. Without, they are refused.
	Webhooks bool
	// WebhookPolicy refuses, at submit, webhook URLs it would never
	// deliver to (internal addresses).
	WebhookPolicy webhook.Policy
	// QueueSampleInterval is how often RunSampler records the queue sizes
	// that GET /v1/queues returns as history (the last 180 samples).
	// Default 10s.
	QueueSampleInterval time.Duration
	// APITokens are the bearer tokens the API accepts (Authorization:
	// Bearer <token>); empty turns authentication off, which New logs as a
	// warning. /healthz, /readyz and /metrics are always open (see auth.go).
	APITokens []string
	// Uploads is where POST /v1/uploads stores input images (init images,
	// masks), e.g. s3://genfleet-outputs/uploads/; empty turns uploads off
	// (s3:// refs still work). MaxUploadBytes limits one image. Default
	// 16 MiB.
	Uploads        s3x.URL
	MaxUploadBytes int64
	// OpenAIWait is how long a request to the OpenAI images API
	// (package openai) waits for its job before it is answered 504.
	// Default 5 minutes. OpenAIDefaultModel is the model of such a
	// request that names none; default "": the request is refused.
	OpenAIWait         time.Duration
	OpenAIDefaultModel string
	// OpenAIModelAliases maps model names OpenAI's clients send to
	// genfleet models (openai.Config.ModelAliases).
	OpenAIModelAliases map[string]string
	Logger             *slog.Logger
}

// Server is the API.
type Server struct {
	cfg       Config
	rdb       redis.UniversalClient
	client    *asynq.Client
	inspector *asynq.Inspector
	store     *job.Store
	log       *slog.Logger
	reg       *prometheus.Registry
	submitted *prometheus.CounterVec
	requests  *prometheus.CounterVec
	routed    *prometheus.CounterVec
	moved     prometheus.Counter
	batchSize prometheus.Histogram
	handler   http.Handler
	fleet     *job.Fleet
	view      fleetCache
	manifests manifestCache
	streams   *eventStreams
	scale     autoscaleCache
	uploads   *uploads.Store
	history   queueHistory
	seen      hostMemory
}

// New returns an API server. Close releases its connections.
func New(cfg Config) (*Server, error) {
	if cfg.Redis == nil || cfg.S3 == nil || cfg.Registry == nil {
		return nil, errors.New("scheduler: Redis, S3 and Registry are required")
	}
	defaults.Zero(&cfg.Pool, job.DefaultPool)
	if cfg.EnginePools == nil {
		cfg.EnginePools = map[string]string{"sdcpp": "sdcpp"}
	}
	defaults.Positive(&cfg.MaxBodyBytes, 64<<10)
	defaults.Positive(&cfg.MaxBatchBytes, 16<<20)
	defaults.Positive(&cfg.IdempotencyTTL, 24*time.Hour)
	defaults.Zero(&cfg.Logger, slog.Default())
	defaults.Positive(&cfg.FleetTTL, 250*time.Millisecond)
	defaults.Positive(&cfg.HostTimeout, 10*time.Second)
	defaults.Positive(&cfg.ReapInterval, 2*time.Second)
	defaults.Positive(&cfg.ManifestTTL, 5*time.Second)
	defaults.Positive(&cfg.MaxEventStreams, 256)
	defaults.Positive(&cfg.EventKeepAlive, 15*time.Second)
	rdb, ok := cfg.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("scheduler: unsupported Redis connection option")
	}
	streams, err := newEventStreams(cfg.Redis, cfg.MaxEventStreams)
	if err != nil {
		return nil, err
	}
	s := &Server{
		streams:   streams,
		cfg:       cfg,
		rdb:       rdb,
		client:    asynq.NewClientFromRedisClient(rdb),
		inspector: asynq.NewInspectorFromRedisClient(rdb),
		store:     job.NewStore(rdb),
		fleet:     job.NewFleet(rdb),
		uploads:   newUploads(cfg),
		log:       cfg.Logger,
		reg:       prometheus.NewRegistry(),
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_scheduler_jobs_submitted_total",
			Help: "POST /v1/jobs outcomes, and those of each job of a POST /v1/jobs:batch: enqueued, duplicate (same Idempotency-Key and body), idempotency_conflict (same key, another body), invalid, unknown_model, bad_model (unusable manifest), unavailable.",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_scheduler_http_requests_total",
			Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
	}
	s.routed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "genfleet_scheduler_routing_decisions_total",
		Help: "Routing decisions: decision=host (sent to a host where the model is warm) or pool, with the reason class.",
	}, []string{"decision", "reason"})
	s.moved = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "genfleet_scheduler_jobs_moved_total",
		Help: "Jobs moved from the queue of a host that stopped heartbeating back to its pool.",
	})
	s.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "genfleet_scheduler_batch_jobs",
		Help:    "Jobs per POST /v1/jobs:batch.",
		Buckets: []float64{1, 10, 50, 100, 250, 500, 1000},
	})
	s.reg.MustRegister(s.submitted, s.requests, s.routed, s.moved, s.batchSize, &queueCollector{s: s}, &autoscaleCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	mux := http.NewServeMux()
	s.route(mux, "POST /v1/jobs", s.createJob)
	s.route(mux, "POST /v1/jobs:batch", s.createBatch)
	s.route(mux, "GET /v1/jobs", s.listJobs)
	s.route(mux, "GET /v1/jobs/{id}", s.getJob)
	s.route(mux, "GET /v1/jobs/{id}/image", s.getImage)
	s.route(mux, "GET /v1/jobs/{id}/images/{k}", s.getImageK)
	s.route(mux, "GET /v1/jobs/{id}/events", s.jobEvents)
	s.route(mux, "POST /v1/uploads", s.createUpload)
	s.route(mux, "GET /v1/jobs/{id}/thumbnail", s.getThumbnail)
	s.route(mux, "GET /v1/queues", s.listQueues)
	s.route(mux, "DELETE /v1/jobs/{id}", s.cancelJob)
	s.route(mux, "GET /v1/models", s.listModels)
	s.route(mux, "GET /v1/workers", s.listWorkers)
	s.route(mux, "GET /v1/autoscale", s.getAutoscale)
	s.route(mux, "GET /autoscale", s.getAutoscale) // open: see openPaths
	s.route(mux, "GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.route(mux, "GET /readyz", s.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	inner := s.jsonErrors(mux)
	if err := s.mountOpenAI(mux, inner); err != nil {
		return nil, err
	}
	// The web page (package ui) is a client of this API in the same
	// process, under /ui; it signs its users in with the API's tokens.
	s.handler = ui.Mount(s.authenticate(inner), ui.Config{Tokens: cfg.APITokens, Logger: cfg.Logger})
	return s, nil
}

// Metrics is the registry the API's /metrics serves, for the collectors of
// what runs beside the API (the retention sweep, webhook delivery).
func (s *Server) Metrics() prometheus.Registerer { return s.reg }

// Handler returns the API's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Close closes the server's Redis connections (the one its asynq client
// and inspector share, and the event streams').
func (s *Server) Close() error { return errors.Join(s.rdb.Close(), s.streams.rdb.Close()) }

// route registers h under pattern and counts its responses.
func (s *Server) route(mux *http.ServeMux, pattern string, h http.HandlerFunc) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h(rw, r)
		s.requests.WithLabelValues(pattern, strconv.Itoa(rw.code)).Inc()
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (an event
// stream flushes each event).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// maxIdempotencyKey bounds the Idempotency-Key header.
const maxIdempotencyKey = 256

func (s *Server) createJob(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.submitted.WithLabelValues("invalid").Inc()
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", tooBig.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("read request body: %w", err))
		return
	}
	var req job.Request
	if err := json.Unmarshal(body, &req); err != nil {
		s.submitted.WithLabelValues("invalid").Inc()
		writeError(w, http.StatusBadRequest, requestError(err))
		return
	}
	if err := req.Validate(); err != nil {
		s.submitted.WithLabelValues("invalid").Inc()
		writeError(w, http.StatusBadRequest, err)
		return
	}
	idemKey := r.Header.Get("Idempotency-Key")
	if len(idemKey) > maxIdempotencyKey {
		writeError(w, http.StatusBadRequest, fmt.Errorf("Idempotency-Key longer than %d bytes", maxIdempotencyKey))
		return
	}
	ctx := r.Context()
	sub := &submission{req: req, idemKey: idemKey}
	s.submit(ctx, []*submission{sub})
	switch {
	case sub.fail != nil:
		s.writeSubmitError(w, sub.fail)
	case sub.dup:
		st := job.StatusQueued
		if rec, err := s.lookup(ctx, sub.id); err == nil {
			st = rec.Status
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"id": sub.id, "status": st, "duplicate": true})
	default:
		w.Header().Set("Location", "/v1/jobs/"+sub.id)
		writeJSON(w, http.StatusAccepted, accepted{ID: sub.id, Queue: sub.route.Queue, Status: job.StatusQueued})
	}
}

// accepted is the body of a 202 to POST /v1/jobs (a struct: a map costs a
// sort of its keys on every submit).
type accepted struct {
	ID     string     `json:"id"`
	Queue  string     `json:"queue"`
	Status job.Status `json:"status"`
}

// retryAfter is the Retry-After (seconds) of a 503: about the time a
// restarted or failed-over Redis takes to answer again.
const retryAfter = "2"

// unavailable answers 503 with Retry-After for a request that needed Redis
// and could not reach it. The client may retry; a POST with an
// Idempotency-Key retries safely.
func (s *Server) unavailable(w http.ResponseWriter, err error) {
	s.submitted.WithLabelValues("unavailable").Inc()
	s.log.Error("redis unavailable", "err", err)
	w.Header().Set("Retry-After", retryAfter)
	writeError(w, http.StatusServiceUnavailable, fmt.Errorf("queue unavailable: %w", err))
}

var errJobNotFound = errors.New("job not found")

// afterRecordRead, when a test sets it, runs in lookup between the read of
// a job's record and the read of its task: where a job that ends at that
// moment lands.
var afterRecordRead func(id string)

// lookup returns what is known of job id: the job record, reconciled with
// asynq's task state; or, for a job enqueued straight into Redis that no
// worker has picked up yet, a record made from asynq's task state alone.
func (s *Server) lookup(ctx context.Context, id string) (*job.Record, error) {
	rec, err := s.store.Get(ctx, id)
	if err != nil && !errors.Is(err, job.ErrNoRecord) {
		return nil, err
	}
	if rec != nil && rec.Status.Terminal() {
		return rec, nil
	}
	if afterRecordRead != nil {
		afterRecordRead(id)
	}
	// The record's queue first (where the job most likely is); every queue
	// only when it is not there (a job no worker started yet, or one moved).
	var info *asynq.TaskInfo
	if rec != nil && rec.Queue != "" {
		if info, err = s.taskIn(rec.Queue, id); err != nil {
			return nil, err
		}
	}
	if info == nil {
		queues, err := s.inspector.Queues()
		if err != nil {
			return nil, err
		}
		for _, q := range queues {
			if info, err = s.taskIn(q, id); err != nil {
				return nil, err
			}
			if info != nil {
				break
			}
		}
	}
	if info == nil || info.State == asynq.TaskStateArchived {
		// The job may have ended between the two reads: a worker writes the
		// final record before asynq deletes the task (in the completion's
		// pipeline) or archives it (before the handler returns). Read the
		// record again before answering from the task, or its absence.
		again, err := s.store.Get(ctx, id)
		if err != nil && !errors.Is(err, job.ErrNoRecord) {
			return nil, err
		}
		if again != nil {
			rec = again
		}
		switch {
		case rec != nil && rec.Status.Terminal():
			return rec, nil
		case info == nil && rec == nil:
			return nil, errJobNotFound
		case info == nil:
			return rec, nil
		}
	}
	if rec == nil {
		rec = &job.Record{ID: id, Status: job.StatusQueued, Queue: info.Queue}
		if p, err := job.DecodePayload(info.Payload); err == nil {
			rec.Model = p.Request.Model
			rec.Request = &p.Request
			rec.Route = p.Route
			rec.CreatedAt = p.SubmittedAt
		} else {
			rec.Error = err.Error()
		}
	}
	// A task asynq archived (retries exhausted, or a worker process died
	// before it could write the record) is failed.
	if info.State == asynq.TaskStateArchived && !rec.Status.Terminal() {
		rec.Status = job.StatusFailed
		if rec.Error == "" {
			rec.Error = info.LastErr
		}
	}
	if info.State == asynq.TaskStateActive && rec.Status == job.StatusQueued {
		rec.Status = job.StatusRunning
	}
	return rec, nil
}

// taskIn returns task id of queue q, or nil when q does not hold it.
func (s *Server) taskIn(q, id string) (*asynq.TaskInfo, error) {
	info, err := s.inspector.GetTaskInfo(q, id)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil, nil
	}
	return info, err
}

// lookupFor looks job id up for a handler; when it cannot, it has answered
// (400 for an id no job can have, 404 for an unknown job, 503 when Redis
// fails) and returns nil.
func (s *Server) lookupFor(w http.ResponseWriter, r *http.Request, id string) *job.Record {
	if !checkJobID(w, id) {
		return nil
	}
	rec, err := s.lookup(r.Context(), id)
	switch {
	case errors.Is(err, errJobNotFound):
		writeError(w, http.StatusNotFound, fmt.Errorf("job %q not found", id))
		return nil
	case err != nil:
		s.unavailable(w, err)
		return nil
	}
	return rec
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	if rec := s.lookupFor(w, r, r.PathValue("id")); rec != nil {
		writeJSON(w, http.StatusOK, s.jobView(r.Context(), rec, apiBase(r)))
	}
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	s.serveImage(w, r, r.PathValue("id"), 0)
}

func (s *Server) cancelJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx := r.Context()
	rec := s.lookupFor(w, r, id)
	switch {
	case rec == nil:
		return
	case rec.Status.Terminal():
		writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("job %q already %s", id, rec.Status)})
		return
	}
	// Flag first: whichever worker holds or later takes the job sees it.
	if err := s.store.RequestCancel(ctx, id); err != nil {
		s.unavailable(w, err)
		return
	}
	// A job no worker holds yet is removed from its queue right away.
	if rec.Queue != "" {
		if err := s.inspector.DeleteTask(rec.Queue, id); err == nil {
			// No worker took it, so the record is written here, from what
			// asynq's task said (model, request, route).
			run := *rec
			run.Status, run.FinishedAt = job.StatusCancelled, time.Now().UTC()
			if err := s.store.Finish(ctx, &run, ""); err != nil {
				s.unavailable(w, err)
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"id": id, "status": job.StatusCancelled})
			return
		}
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"id": id, "status": rec.Status, "cancel_requested": true})
}

// modelList is the body of GET /v1/models.
type modelList struct {
	Models []modelEntry `json:"models"`
	Errors []modelError `json:"errors"`
}

// modelError names a registered model whose manifest cannot be used.
type modelError struct {
	Name  string `json:"name"`
	Error string `json:"error"`
}

// modelEntry is a registered model and the hosts that hold it.
type modelEntry struct {
	modelcache.Manifest
	Hosts []ModelHost `json:"hosts"`
}

func (s *Server) listModels(w http.ResponseWriter, r *http.Request) {
	models, err := s.cfg.Registry.List(r.Context())
	if err != nil && models == nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("list models: %w", err))
		return
	}
	hosts, _, ferr := s.fleetView(r.Context())
	if ferr != nil {
		s.log.Warn("fleet view unavailable for /v1/models", "err", ferr)
	}
	entries := make([]modelEntry, 0, len(models))
	for _, m := range models {
		e := modelEntry{Manifest: m, Hosts: []ModelHost{}}
		var digests []string
		for _, f := range m.Files {
			digests = append(digests, f.Digest)
		}
		for i := range hosts {
			if res, ok := hosts[i].resident(digests); ok {
				e.Hosts = append(e.Hosts, ModelHost{Host: hosts[i].Host, Resident: res})
			}
		}
		entries = append(entries, e)
	}
	// Manifests that could not be used are named, each with its error;
	// the rest are listed.
	body := modelList{Models: entries, Errors: []modelError{}}
	var bad modelcache.ManifestErrors
	if errors.As(err, &bad) {
		for _, e := range bad {
			body.Errors = append(body.Errors, modelError{Name: e.Name, Error: e.Err.Error()})
		}
		s.log.Warn("unusable model manifests", "err", err)
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		w.Header().Set("Retry-After", retryAfter)
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("redis unreachable: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// manifestCache keeps resolved manifests for Config.ManifestTTL.
type manifestCache struct {
	mu sync.Mutex
	m  map[string]cachedManifest
}

type cachedManifest struct {
	man *modelcache.Manifest
	at  time.Time
}

// resolve resolves ref through the registry, reusing a recent answer.
func (s *Server) resolve(ctx context.Context, ref string) (*modelcache.Manifest, error) {
	s.manifests.mu.Lock()
	if c, ok := s.manifests.m[ref]; ok && time.Since(c.at) < s.cfg.ManifestTTL {
		s.manifests.mu.Unlock()
		return c.man, nil
	}
	s.manifests.mu.Unlock()
	man, err := s.cfg.Registry.Resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	s.manifests.mu.Lock()
	if s.manifests.m == nil || len(s.manifests.m) > 10000 {
		s.manifests.m = map[string]cachedManifest{}
	}
	s.manifests.m[ref] = cachedManifest{man: man, at: time.Now()}
	s.manifests.mu.Unlock()
	return man, nil
}

// poolFor returns the device class that runs man's engine, or an error
// (and the request field it concerns) when none does or when req asks the
// engine for what it does not have.
func (s *Server) poolFor(man *modelcache.Manifest, req *job.Request) (string, string, error) {
	eng := man.EngineName()
	if eng == modelcache.EngineBuiltin {
		for _, c := range [...]struct{ field, v string }{{"sampling_method", req.SamplingMethod}, {"scheduler", req.Scheduler}} {
			if c.v != "" {
				return "", c.field, fmt.Errorf("%s: model %q runs on the built-in engine, which has one fixed sampler; %s is for engines such as sdcpp", c.field, req.Model, c.field)
			}
		}
		return s.cfg.Pool, "", nil
	}
	class, ok := s.cfg.EnginePools[eng]
	if !ok {
		return "", "model", fmt.Errorf("model: %q needs engine %q, which no pool of this scheduler serves (configure it with --engine-pool %s=CLASS)", req.Model, eng, eng)
	}
	if field, err := checkEngine(eng, req); err != nil {
		return "", field, err
	}
	return class, "", nil
}
