package client_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/backends/cpu"
	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/worker"
)

const (
	modelsBucket  = "client-models"
	outputsBucket = "client-outputs"
	token         = "client-test-token-1234"
)

// fleet is a real scheduler (Redis, S3) and, once started, a worker in
// this process.
type fleet struct {
	t     *testing.T
	sched *scheduler.Server
	api   *httptest.Server
	start func()
}

// newFleet serves the API of a scheduler that requires token, with a
// reference model "demo" registered; wrap, when not nil, wraps the API's
// handler (to inject faults a real scheduler does not make). start starts
// the worker.
func newFleet(t *testing.T, wrap func(http.Handler) http.Handler) *fleet {
	t.Helper()
	rd := testenv.Redis(t)
	s3 := testenv.S3Server(t, modelsBucket, outputsBucket)
	ctx := t.Context()
	src := modelcache.NewS3Source(s3.Client)
	reg := &modelcache.Registry{Src: src, Root: s3x.URL{Bucket: modelsBucket}}
	path := filepath.Join(t.TempDir(), "demo.safetensors")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := refgen.Make(f, 1<<20, 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := reg.Push(ctx, path, s3x.URL{Bucket: modelsBucket, Key: "blobs/demo.safetensors"}, "demo", nil); err != nil {
		t.Fatal(err)
	}
	redisOpt := asynq.RedisClientOpt{Addr: rd.Addr}
	uploads := s3x.URL{Bucket: outputsBucket, Key: "uploads/"}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sched, err := scheduler.New(scheduler.Config{Redis: redisOpt, S3: s3.Client, Registry: reg, Pool: "cpu", CheckModels: true,
		APITokens: []string{token}, Uploads: uploads, MaxUploadBytes: 1 << 20, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = sched.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	fl := &fleet{t: t, sched: sched, api: httptest.NewServer(h)}
	t.Cleanup(func() { fl.api.Close(); sched.Close() })
	fl.start = func() {
		cache, err := modelcache.Open(t.TempDir(), src)
		if err != nil {
			t.Fatal(err)
		}
		be, err := cpu.New()
		if err != nil {
			t.Fatal(err)
		}
		w, err := worker.New(worker.Config{Redis: redisOpt, S3: s3.Client, Outputs: s3x.URL{Bucket: outputsBucket, Key: "outputs/"},
			Uploads: uploads, MaxUploadBytes: 1 << 20, Registry: reg, Cache: cache, Backend: be, HostID: "client-test",
			HeartbeatInterval: 200 * time.Millisecond, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		wctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = w.Run(wctx) }()
		t.Cleanup(func() { stop(); <-done; w.Close() })
	}
	return fl
}

func (fl *fleet) client() *client.Client { return client.New(fl.api.URL+"/", token) }

func request(seed int64) job.Request {
	return job.Request{Model: "demo", Prompt: "a red fox", Seed: seed, Width: 128, Height: 128, Steps: 20, Guidance: job.DefaultGuidance}
}

// apiErr returns err as an *client.Error, failing the test when it is not one.
func apiErr(t *testing.T, err error) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want a *client.Error", err, err)
	}
	return e
}

// Every call of the client against a real scheduler and worker: what it
// sends is what the API takes, and what it returns is what the API said.
func TestClient(t *testing.T) {
	fl := newFleet(t, nil)
	c := fl.client()
	ctx := t.Context()

	// The token is sent; without it the API refuses, and the error says so.
	if _, err := client.New(fl.api.URL, "").Models(ctx); apiErr(t, err).StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %v, want 401", err)
	}
	// A bad field comes back as the API's error, naming the field.
	bad := request(1)
	bad.Width = 65
	_, err := c.Submit(ctx, bad)
	if e := apiErr(t, err); e.StatusCode != http.StatusBadRequest || e.Field != "width" || !strings.Contains(e.Error(), "POST /v1/jobs: 400 Bad Request: width:") {
		t.Fatalf("width 65: %+v", e)
	}
	if _, err := c.Job(ctx, "no-such-job"); apiErr(t, err).StatusCode != http.StatusNotFound {
		t.Fatalf("unknown job: %v", err)
	}

	// Before any worker runs: a queued job is cancelled.
	queued, err := c.Submit(ctx, request(1))
	if err != nil || queued.Status != job.StatusQueued || queued.Queue != "pool:cpu" {
		t.Fatalf("submit: %+v %v", queued, err)
	}
	cancelled, err := c.Cancel(ctx, queued.ID)
	if err != nil || cancelled.Status != job.StatusCancelled || cancelled.CancelRequested {
		t.Fatalf("cancel a queued job: %+v %v", cancelled, err)
	}
	if _, err := c.Cancel(ctx, queued.ID); apiErr(t, err).StatusCode != http.StatusConflict {
		t.Fatalf("cancel it again: %v, want 409", err)
	}

	// An idempotent submit, then its events.
	fl.start()
	a, err := c.Submit(ctx, request(2), client.IdempotencyKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	if dup, err := c.Submit(ctx, request(2), client.IdempotencyKey("order-1")); err != nil || !dup.Duplicate || dup.ID != a.ID {
		t.Fatalf("same key, same request: %+v %v; want the first job again", dup, err)
	}
	if _, err := c.Submit(ctx, request(3), client.IdempotencyKey("order-1")); apiErr(t, err).Field != "Idempotency-Key" {
		t.Fatalf("same key, another request: %v", err)
	}
	var types []string
	rec, err := c.Follow(ctx, a.ID, func(ev client.Event) { types = append(types, ev.Type) })
	if err != nil || rec.Status != job.StatusSucceeded || rec.ID != a.ID {
		t.Fatalf("follow: %+v %v", rec, err)
	}
	if len(types) < 3 || types[len(types)-1] != job.EventCompleted || !slices.Contains(types, job.EventStarted) {
		t.Fatalf("events %v", types)
	}
	// Following a job that ended gets it at once.
	if again, err := c.Wait(ctx, a.ID); err != nil || again.Status != job.StatusSucceeded {
		t.Fatalf("wait on an ended job: %+v %v", again, err)
	}

	// Its image and thumbnail.
	rc, err := c.Image(ctx, a.ID, 0)
	if img := readPNG(t, rc, err); img.Bounds().Dx() != 128 {
		t.Fatalf("image %v", img.Bounds())
	}
	rc, err = c.Thumbnail(ctx, a.ID, 32)
	if th := readPNG(t, rc, err); th.Bounds().Dx() != 32 {
		t.Fatalf("thumbnail %v", th.Bounds())
	}
	if _, err := c.Image(ctx, a.ID, 1); apiErr(t, err).Field != "k" {
		t.Fatalf("image 1 of a one-image job: %v", err)
	}

	// An upload as the init image of a job.
	up, err := c.Upload(ctx, pngBytes(t, 64, 64))
	if err != nil || !strings.HasPrefix(up.Ref, job.UploadRefPrefix) || up.Width != 64 || up.Format != "png" {
		t.Fatalf("upload: %+v %v", up, err)
	}
	if _, err := c.Upload(ctx, []byte("not an image")); apiErr(t, err).Field != "image" {
		t.Fatalf("upload of text: %v", err)
	}
	i2i := request(4)
	i2i.Width, i2i.Height, i2i.InitImage = 64, 64, up.Ref
	b, err := c.Submit(ctx, i2i)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := c.Wait(ctx, b.ID); err != nil || rec.Status != job.StatusSucceeded {
		t.Fatalf("image to image: %+v %v", rec, err)
	}

	// A batch: each job on its own.
	bad.Seed = 5
	res, err := c.SubmitBatch(ctx, []client.BatchJob{{Request: request(5)}, {Request: bad}, {Request: request(2), IdempotencyKey: "order-1"}})
	if err != nil || res.Queued != 1 || res.Failed != 1 || res.Duplicates != 1 || len(res.Jobs) != 3 {
		t.Fatalf("batch: %+v %v", res, err)
	}
	if j := res.Jobs[1]; j.Code != http.StatusBadRequest || j.Field != "width" || j.ID != "" {
		t.Fatalf("the bad job of the batch: %+v", j)
	}
	if j := res.Jobs[2]; !j.Duplicate || j.ID != a.ID {
		t.Fatalf("the duplicate of the batch: %+v", j)
	}
	if rec, err := c.Wait(ctx, res.Jobs[0].ID); err != nil || rec.Status != job.StatusSucceeded {
		t.Fatalf("batch job: %+v %v", rec, err)
	}

	// The model, held by the worker's host.
	models, err := c.Models(ctx)
	if err != nil || len(models.Models) != 1 || len(models.Errors) != 0 {
		t.Fatalf("models: %+v %v", models, err)
	}
	if m := models.Models[0]; m.Name != "demo" || len(m.Files) != 1 || !strings.HasPrefix(m.Files[0].Digest, "sha256:") {
		t.Fatalf("model %+v", m)
	}
}

// A stream that breaks is reopened after the last event seen: no event
// twice, none missed.
func TestFollowResumes(t *testing.T) {
	var mu sync.Mutex
	var lastIDs []string // Last-Event-ID of each events request
	cut := true
	fl := newFleet(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/events") {
				h.ServeHTTP(w, r)
				return
			}
			mu.Lock()
			lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
			first := cut
			cut = false
			mu.Unlock()
			if first {
				// The connection dies right after the model event.
				w = &cutAfter{ResponseWriter: w, marker: "event: model\n"}
			}
			h.ServeHTTP(w, r)
		})
	})
	fl.start()
	c := fl.client()
	a, err := c.Submit(t.Context(), request(1))
	if err != nil {
		t.Fatal(err)
	}
	var evs []client.Event
	rec, err := c.Follow(t.Context(), a.ID, func(ev client.Event) { evs = append(evs, ev) })
	if err != nil || rec.Status != job.StatusSucceeded {
		t.Fatalf("follow: %+v %v", rec, err)
	}
	mu.Lock()
	defer mu.Unlock()
	modelID := ""
	seen := map[string]bool{}
	for _, ev := range evs {
		if ev.Type == job.EventQueued {
			continue
		}
		if seen[ev.ID] {
			t.Fatalf("event %s (%s) seen twice", ev.ID, ev.Type)
		}
		seen[ev.ID] = true
		if ev.Type == job.EventModel {
			modelID = ev.ID
		}
	}
	if len(lastIDs) != 2 || lastIDs[0] != "" || lastIDs[1] != modelID || modelID == "" {
		t.Fatalf("requests with Last-Event-ID %q; want a first without and a second after the model event %q", lastIDs, modelID)
	}
	if evs[len(evs)-1].Type != job.EventCompleted {
		t.Fatalf("last event %+v", evs[len(evs)-1])
	}
}

// cutAfter aborts the response once it has written marker, as a
// connection that drops.
type cutAfter struct {
	http.ResponseWriter
	marker string
	buf    bytes.Buffer
}

func (c *cutAfter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.buf.Write(p)
	if i := strings.Index(c.buf.String(), c.marker); i >= 0 && strings.Contains(c.buf.String()[i:], "\n\n") {
		http.NewResponseController(c.ResponseWriter).Flush()
		panic(http.ErrAbortHandler)
	}
	return n, err
}

func (c *cutAfter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// A scheduler without job events (one older than them) is polled.
func TestWaitPollsWithoutEvents(t *testing.T) {
	for _, tt := range []struct {
		name   string
		answer func(w http.ResponseWriter)
	}{
		{"plain 404", func(w http.ResponseWriter) { http.NotFound(w, nil) }},
		{"the API's 404", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error": "no such endpoint: GET /v1/jobs/x/events"}`)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fl := newFleet(t, func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.HasSuffix(r.URL.Path, "/events") {
						tt.answer(w)
						return
					}
					h.ServeHTTP(w, r)
				})
			})
			fl.start()
			c := fl.client()
			a, err := c.Submit(t.Context(), request(1))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Follow(t.Context(), a.ID, nil); !errors.Is(err, client.ErrNoEvents) {
				t.Fatalf("follow: %v, want ErrNoEvents", err)
			}
			rec, err := c.Wait(t.Context(), a.ID)
			if err != nil || rec.Status != job.StatusSucceeded {
				t.Fatalf("wait: %+v %v", rec, err)
			}
		})
	}
}

// Poll gives up when its context ends, naming the last status.
func TestPollGivesUp(t *testing.T) {
	fl := newFleet(t, nil) // no worker: the job stays queued
	c := fl.client()
	a, err := c.Submit(t.Context(), request(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	polls := 0
	_, err = c.Poll(ctx, a.ID, func(*job.Record) { polls++ })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last status queued") || polls < 2 {
		t.Fatalf("poll: %v after %d polls", err, polls)
	}
}

func readPNG(t *testing.T, rc io.ReadCloser, err error) image.Image {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	img, err := png.Decode(rc)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func pngBytes(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{uint8(4 * x), uint8(4 * y), 128, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
