package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/job"
)

// Two worker processes sharing one cache directory each run a job for the
// same not-yet-cached model: S3 serves the model's bytes once and both
// processes use the same blob. Also: identical requests give identical PNG
// bytes, a different seed gives different bytes.
func TestTwoWorkerProcessesShareOneDownload(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	const modelSize = 8 << 20
	fl := newFleet(t, modelSize, "cpu")
	// Hold the model's body for 2s: the first worker is still fetching when
	// the second takes its job, so the second must wait on the lock.
	fl.proxy.delay = 2 * time.Second
	fl.proxy.slow.Store("/" + modelsBucket + "/blobs/")
	fl.startWorker()
	fl.startWorker()
	time.Sleep(500 * time.Millisecond) // let both processes start polling

	a := fl.submit(jobBody(7))
	b := fl.submit(jobBody(7))
	ra := fl.wait(a, 90*time.Second, nil)
	rb := fl.wait(b, 90*time.Second, nil)
	for _, r := range []job.Record{ra, rb} {
		if r.Status != job.StatusSucceeded {
			t.Fatalf("job %s: %s %q", r.ID, r.Status, r.Error)
		}
	}
	if ra.Worker.PID == rb.Worker.PID {
		t.Fatalf("both jobs ran in pid %d; want one per worker process", ra.Worker.PID)
	}
	gets, served := fl.proxy.counts("/" + modelsBucket + "/blobs/demo.safetensors")
	if gets != 1 || served != modelSize {
		t.Fatalf("S3 served the model %d times, %d bytes; want once, %d bytes", gets, served, modelSize)
	}
	if ra.Result.ModelDigest != rb.Result.ModelDigest {
		t.Fatalf("digests differ: %s vs %s", ra.Result.ModelDigest, rb.Result.ModelDigest)
	}
	// One fetched; the other waited for that fetch: neither found the
	// model on disk, and the record says which did what.
	fetched, waited := ra.Result, rb.Result
	if fetched.ModelSource != "fetched" {
		fetched, waited = waited, fetched
	}
	if fetched.ModelSource != "fetched" || fetched.ModelFetchedBytes != modelSize || fetched.CacheHit ||
		waited.ModelSource != "waited" || waited.ModelFetchedBytes != 0 || waited.ModelWaitMS <= 0 || waited.CacheHit {
		t.Fatalf("results %+v and %+v: want one fetched (%d bytes) and one waited (>0 ms, nothing fetched), neither a cache hit",
			*ra.Result, *rb.Result, modelSize)
	}
	blobs, _ := filepath.Glob(filepath.Join(fl.cacheDir, "blobs", "sha256-*"))
	want := filepath.Join(fl.cacheDir, "blobs", "sha256-"+strings.TrimPrefix(ra.Result.ModelDigest, "sha256:"))
	if len(blobs) != 1 || blobs[0] != want {
		t.Fatalf("cache blobs = %v, want exactly %s", blobs, want)
	}
	for _, r := range []job.Record{ra, rb} {
		for _, phase := range []string{"resolve", "fetch", "verify", "map", "generate", "upload", "total"} {
			if _, ok := r.Timings[phase]; !ok {
				t.Errorf("job %s timings lack %q: %v", r.ID, phase, r.Timings)
			}
		}
	}

	imgA, imgB := fl.image(a), fl.image(b)
	if !bytes.Equal(imgA, imgB) {
		t.Fatal("identical requests gave different PNG bytes")
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(imgA))
	if err != nil {
		t.Fatalf("output is not a PNG: %v", err)
	}
	if cfg.Width != 256 || cfg.Height != 256 {
		t.Fatalf("PNG is %dx%d, want 256x256", cfg.Width, cfg.Height)
	}
	c := fl.submit(jobBody(8))
	if rc := fl.wait(c, 60*time.Second, nil); rc.Status != job.StatusSucceeded {
		t.Fatalf("seed 8: %s %s", rc.Status, rc.Error)
	}
	if bytes.Equal(imgA, fl.image(c)) {
		t.Fatal("a different seed gave the same PNG bytes")
	}
	fl.stopWorkers()
}

// A producer that speaks asynq enqueues straight into Redis with the
// documented task type and JSON payload; the job runs and the API finds it.
func TestDirectAsynqEnqueue(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "cpu")
	fl.startWorker()
	opt := asynq.RedisClientOpt{Addr: fl.redis.Addr}

	// 1. The Go producer package.
	p := job.NewProducer(opt)
	defer p.Close()
	id1, err := p.Enqueue(context.Background(), "", job.Request{Model: "demo", Prompt: "a lighthouse", Seed: 3, Width: 128, Height: 128, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	// 2. A raw asynq client with hand-written JSON, exactly as docs/jobs.md
	// shows it for producers in other languages.
	raw := asynq.NewClient(opt)
	defer raw.Close()
	payload := `{"v":1,"request":{"model":"demo","prompt":"a lighthouse","seed":3,"width":128,"height":128,"steps":2}}`
	if _, err := raw.Enqueue(asynq.NewTask("genfleet:generate", []byte(payload)), asynq.TaskID("raw-job-1"), asynq.Queue("pool:cpu"), asynq.MaxRetry(3)); err != nil {
		t.Fatal(err)
	}
	r1 := fl.wait(id1, 60*time.Second, nil)
	r2 := fl.wait("raw-job-1", 60*time.Second, nil)
	for _, r := range []job.Record{r1, r2} {
		if r.Status != job.StatusSucceeded || r.Result == nil {
			t.Fatalf("job %s: %s %q", r.ID, r.Status, r.Error)
		}
	}
	if !bytes.Equal(fl.image(id1), fl.image("raw-job-1")) {
		t.Fatal("the same request through two producers gave different images")
	}
}

// Bad input gets 400 naming the field; an unknown model 404 at submit; a job
// for a model missing from S3 that reaches a worker fails once, naming the
// model, without retries.
func TestInvalidInputs(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "cpu")
	tests := []struct {
		name, body, field string
		code              int
	}{
		{"bad json", `{"model":`, "", 400},
		{"not an object", `[1,2]`, "", 400},
		{"width 0", `{"model":"demo","prompt":"x","width":0}`, "width", 400},
		{"width 100000", `{"model":"demo","prompt":"x","width":100000}`, "width", 400},
		{"steps -1", `{"model":"demo","prompt":"x","steps":-1}`, "steps", 400},
		{"empty model", `{"model":"","prompt":"x"}`, "model", 400},
		{"path traversal", `{"model":"../../etc/passwd","prompt":"x"}`, "model", 400},
		{"missing prompt", `{"model":"demo"}`, "prompt", 400},
		{"unknown field", `{"model":"demo","prompt":"x","colour":"red"}`, "colour", 400},
		{"wrong type", `{"model":"demo","prompt":"x","seed":"seven"}`, "seed", 400},
		{"unknown model", `{"model":"no-such-model","prompt":"x"}`, "model", 404},
		{"huge body", `{"model":"demo","prompt":"` + strings.Repeat("x", 100<<10) + `"}`, "", 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := fl.do("POST", "/v1/jobs", tt.body)
			if code != tt.code {
				t.Fatalf("status %d, want %d: %s", code, tt.code, b)
			}
			var e struct{ Error, Field string }
			if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
				t.Fatalf("error body %s", b)
			}
			if e.Field != tt.field {
				t.Fatalf("field %q, want %q (%s)", e.Field, tt.field, e.Error)
			}
			if tt.code == 404 && !strings.Contains(e.Error, "no-such-model") {
				t.Fatalf("404 message does not name the model: %s", e.Error)
			}
		})
	}

	// Straight into Redis, past the API's check.
	fl.startWorker()
	p := job.NewProducer(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer p.Close()
	id, err := p.Enqueue(context.Background(), "missing-model-job", job.Request{Model: "ghost-model", Prompt: "x", Width: 64, Height: 64, Steps: 1})
	if err != nil {
		t.Fatal(err)
	}
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusFailed || !strings.Contains(rec.Error, `"ghost-model"`) {
		t.Fatalf("status %s error %q; want failed naming the model", rec.Status, rec.Error)
	}
	if rec.Attempt != 1 {
		t.Fatalf("attempt %d, want 1 (no retries)", rec.Attempt)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer insp.Close()
	info, err := insp.GetTaskInfo("pool:cpu", id)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != asynq.TaskStateArchived || info.Retried != 0 {
		t.Fatalf("asynq state %v retried %d; want archived after 0 retries", info.State, info.Retried)
	}
}

// Idempotency-Key returns the same job; GET of unknown ids is 404; the
// image is 404 until it exists.
func TestIdempotencyAndNotFound(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "nobody") // no worker serves pool:nobody
	a := fl.submit(jobBody(1), "Idempotency-Key", "key-1")
	b := fl.submit(jobBody(1), "Idempotency-Key", "key-1")
	c := fl.submit(jobBody(1), "Idempotency-Key", "key-2")
	if a != b || a == c {
		t.Fatalf("ids a=%s b=%s c=%s: same key must give the same job, another key another", a, b, c)
	}
	if code, _ := fl.do("GET", "/v1/jobs/"+a+"/image", ""); code != http.StatusNotFound {
		t.Fatalf("image of a queued job: %d, want 404", code)
	}
	if code, _ := fl.do("GET", "/v1/jobs/nope", ""); code != http.StatusNotFound {
		t.Fatalf("unknown job: %d, want 404", code)
	}
	if rec := fl.get(a); rec.Status != job.StatusQueued || rec.Model != "demo" {
		t.Fatalf("queued job reads %+v", rec)
	}
}

// DELETE cancels a queued job at once, and a running job at its next step.
func TestCancel(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 16<<20, "cpu")

	// Queued: no worker yet.
	q := fl.submit(jobBody(1))
	if code, b := fl.do("DELETE", "/v1/jobs/"+q, ""); code != http.StatusOK {
		t.Fatalf("DELETE queued job = %d %s", code, b)
	}
	if rec := fl.get(q); rec.Status != job.StatusCancelled {
		t.Fatalf("queued job after DELETE: %s", rec.Status)
	}

	// Running: long enough to be caught mid-way.
	fl.startWorker()
	r := fl.submit(`{"model":"demo","prompt":"a long one","seed":1,"width":64,"height":64,"steps":200}`)
	rec := fl.wait(r, 60*time.Second, func(rec job.Record) bool {
		return rec.Status == job.StatusRunning && rec.Progress != nil && rec.Progress.Step >= 1
	})
	if rec.Status != job.StatusRunning {
		t.Fatalf("job ended %s before it could be cancelled", rec.Status)
	}
	if rec.Progress.Steps != 200 {
		t.Fatalf("progress %+v, want n=200", rec.Progress)
	}
	if code, b := fl.do("DELETE", "/v1/jobs/"+r, ""); code != http.StatusAccepted {
		t.Fatalf("DELETE running job = %d %s", code, b)
	}
	rec = fl.wait(r, 30*time.Second, nil)
	if rec.Status != job.StatusCancelled {
		t.Fatalf("running job after DELETE ended %s (%s)", rec.Status, rec.Error)
	}
	if code, _ := fl.do("DELETE", "/v1/jobs/"+r, ""); code != http.StatusConflict {
		t.Fatalf("DELETE of a cancelled job = %d, want 409", code)
	}
	if code, _ := fl.do("GET", "/v1/jobs/"+r+"/image", ""); code != http.StatusNotFound {
		t.Fatalf("image of a cancelled job = %d, want 404", code)
	}
	fl.stopWorkers()
}

// With Redis down, submit answers 503 and /readyz reports it.
func TestRedisDown(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "cpu")
	if code, _ := fl.do("GET", "/readyz", ""); code != http.StatusOK {
		t.Fatalf("readyz with redis up = %d", code)
	}
	fl.redis.Stop()
	if code, b := fl.do("POST", "/v1/jobs", jobBody(1)); code != http.StatusServiceUnavailable {
		t.Fatalf("POST with redis down = %d %s, want 503", code, b)
	}
	if code, _ := fl.do("GET", "/readyz", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz with redis down = %d, want 503", code)
	}
	if code, _ := fl.do("GET", "/healthz", ""); code != http.StatusOK {
		t.Fatalf("healthz = %d, want 200 (the process is alive)", code)
	}
}

// SIGTERM while a job runs: the worker finishes it (or hands it back) and
// exits 0; the job still succeeds.
func TestWorkerSIGTERMFinishesJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 4<<20, "cpu")
	fl.startWorker()
	id := fl.submit(`{"model":"demo","prompt":"finish me","seed":2,"width":64,"height":64,"steps":30}`)
	fl.wait(id, 60*time.Second, func(r job.Record) bool { return r.Status == job.StatusRunning })
	fl.stopWorkers()
	rec := fl.get(id)
	if rec.Status != job.StatusSucceeded {
		// Handed back: a fresh worker must finish it.
		fl.startWorker()
		rec = fl.wait(id, 60*time.Second, nil)
	}
	if rec.Status != job.StatusSucceeded {
		t.Fatalf("job after SIGTERM: %s %q", rec.Status, rec.Error)
	}
}

// A download cut off mid-way is retried by the fetch itself (modelcache
// resumes the cut GET with a ranged one), leaves nothing half-written in the
// cache, and the job succeeds on its first attempt.
func TestTransientS3FaultRetries(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 2<<20, "cpu")
	fl.proxy.slow.Store("/" + modelsBucket + "/blobs/")
	fl.proxy.cutNext.Store(1)
	fl.startWorker("--retry-base", "100ms")
	id := fl.submit(jobBody(5))
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded {
		t.Fatalf("job: %s %q", rec.Status, rec.Error)
	}
	if rec.Attempt != 1 {
		t.Fatalf("succeeded on attempt %d, want 1 (the fetch retries the cut download)", rec.Attempt)
	}
	if gets, _ := fl.proxy.counts("/" + modelsBucket + "/blobs/demo.safetensors"); gets != 2 {
		t.Fatalf("model GETs = %d, want 2 (the cut one and the ranged rest)", gets)
	}
	tmp, _ := filepath.Glob(filepath.Join(fl.cacheDir, "tmp", "*"))
	if len(tmp) != 0 {
		t.Fatalf("temp files left in the cache: %v", tmp)
	}
}

// SIGTERM with a job that outlasts the shutdown timeout: the worker hands
// the job back, its record says so (not a failed attempt), and the worker
// exits 0; another worker runs it; exactly one output.
func TestWorkerSIGTERMHandsBackJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 32<<20, "cpu")
	fl.startWorker("--shutdown-timeout", "100ms")
	id := fl.submit(`{"model":"demo","prompt":"hand me back","seed":2,"width":64,"height":64,"steps":200}`)
	fl.wait(id, 60*time.Second, func(r job.Record) bool {
		return r.Status == job.StatusRunning && r.Progress != nil && r.Progress.Step >= 1
	})
	fl.stopWorkers()
	rec := fl.get(id)
	if rec.Status != job.StatusQueued || rec.Error != "worker shut down; job handed back to the queue" {
		t.Fatalf("after SIGTERM the job is %s (%q), want queued (handed back), saying so", rec.Status, rec.Error)
	}
	fl.startWorker()
	rec = fl.wait(id, 120*time.Second, nil)
	if rec.Status != job.StatusSucceeded {
		t.Fatalf("handed-back job: %s %q", rec.Status, rec.Error)
	}
	keys, err := fl.reg.Src.List(context.Background(), outputsBucket, "outputs/")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "outputs/"+id+".png" {
		t.Fatalf("output objects %v, want exactly outputs/%s.png", keys, id)
	}
}

// GET /v1/models lists the registry; /metrics counts submissions.
func TestModelsAndMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "nobody")
	code, b := fl.do("GET", "/v1/models", "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/models = %d %s", code, b)
	}
	var models struct {
		Models []struct {
			Name  string
			Files []struct{ Size int64 }
		}
	}
	if err := json.Unmarshal(b, &models); err != nil || len(models.Models) != 1 || models.Models[0].Name != "demo" || models.Models[0].Files[0].Size != 1<<20 {
		t.Fatalf("models = %s", b)
	}
	fl.submit(jobBody(1))
	fl.do("POST", "/v1/jobs", `{"model":"demo"}`)
	code, b = fl.do("GET", "/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	for _, want := range []string{
		`genfleet_scheduler_jobs_submitted_total{result="enqueued"} 1`,
		`genfleet_scheduler_jobs_submitted_total{result="invalid"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// An S3 fault the SDK's own retries do not absorb (every try of the output
// upload fails) fails the attempt; the job is retried with backoff and
// succeeds, with exactly one output.
func TestTransientUploadFaultRetriesJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "cpu")
	fl.proxy.failPuts.Store(3) // the SDK tries a request 3 times by default
	fl.startWorker("--retry-base", "100ms")
	id := fl.submit(jobBody(9))
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded || rec.Attempt != 2 {
		t.Fatalf("job: %s on attempt %d (%q); want succeeded on attempt 2", rec.Status, rec.Attempt, rec.Error)
	}
	keys, err := fl.reg.Src.List(context.Background(), outputsBucket, "outputs/")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 {
		t.Fatalf("outputs %v, want exactly one", keys)
	}
}

// An object that fails for good (every GET of the model answers 500) ends
// the job failed, after its retries, with an error naming the object.
func TestPermanentlyFailingObjectFailsJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "cpu")
	fl.proxy.failGets.Store("/" + modelsBucket + "/blobs/")
	fl.startWorker("--retry-base", "100ms", "--fetch-retries", "1")
	p := job.NewProducer(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer p.Close()
	id, err := p.Enqueue(context.Background(), "", job.Request{Model: "demo", Prompt: "x", Width: 64, Height: 64, Steps: 1}, asynq.MaxRetry(1))
	if err != nil {
		t.Fatal(err)
	}
	rec := fl.wait(id, 90*time.Second, nil)
	if rec.Status != job.StatusFailed || rec.Attempt != 2 {
		t.Fatalf("status %s after attempt %d (%q); want failed after 2 attempts", rec.Status, rec.Attempt, rec.Error)
	}
	if !strings.Contains(rec.Error, "failed after 2 attempts") || !strings.Contains(rec.Error, "s3://"+modelsBucket+"/blobs/demo.safetensors") {
		t.Fatalf("error %q does not say the attempts and the object", rec.Error)
	}
	t.Logf("job error: %s", rec.Error)
}
