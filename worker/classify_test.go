package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// counterValue is the value of counter name{label=value} in reg, 0 when
// absent.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabel(m, label, value) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// contractEnv is a real worker (cpu backend) on a real Redis and S3 with a
// registry holding the reference model "good".
type contractEnv struct {
	redis   string
	s3      *testenv.S3
	reg     *modelcache.Registry
	store   *job.Store
	insp    *asynq.Inspector
	good    *modelcache.Manifest
	metrics *prometheus.Registry
	log     *testenv.Buffer
}

func newContractEnv(t *testing.T) *contractEnv {
	t.Helper()
	e := &contractEnv{redis: testenv.Redis(t).Addr, s3: testenv.S3Server(t, "models", "outputs"),
		metrics: prometheus.NewRegistry(), log: &testenv.Buffer{}}
	e.reg = &modelcache.Registry{Src: modelcache.NewS3Source(e.s3.Client), Root: s3x.URL{Bucket: "models"}}
	model := filepath.Join(t.TempDir(), "good.safetensors")
	f, err := os.Create(model)
	if err != nil {
		t.Fatal(err)
	}
	if err := refgen.Make(f, 1<<20, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if e.good, err = e.reg.Push(t.Context(), model, s3x.URL{Bucket: "models", Key: "blobs/good.safetensors"}, "good", nil); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: e.redis})
	t.Cleanup(func() { rdb.Close() })
	e.store = job.NewStore(rdb)
	e.insp = asynq.NewInspector(asynq.RedisClientOpt{Addr: e.redis})
	t.Cleanup(func() { e.insp.Close() })
	return e
}

// putManifest writes a manifest object as it is, bypassing Push's checks.
func (e *contractEnv) putManifest(t *testing.T, name, body string) {
	t.Helper()
	u := e.reg.ManifestURL(name)
	if err := e.reg.Src.Put(t.Context(), u.Bucket, u.Key, strings.NewReader(body), int64(len(body))); err != nil {
		t.Fatal(err)
	}
}

// startWorker runs a worker until the test ends; retries come back after
// about 10ms, so a job that is retried shows it at once.
func (e *contractEnv) startWorker(t *testing.T) {
	t.Helper()
	be, err := backends.New("cpu")
	if err != nil {
		t.Fatal(err)
	}
	e.startWorkerWith(t, be)
}

// startWorkerWith is startWorker with backend be; uploads are in
// s3://outputs/uploads/.
func (e *contractEnv) startWorkerWith(t *testing.T, be backends.Backend) {
	t.Helper()
	cache, err := modelcache.Open(t.TempDir(), e.reg.Src)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{
		Redis: asynq.RedisClientOpt{Addr: e.redis}, S3: e.s3.Client, Outputs: s3x.URL{Bucket: "outputs", Key: "outputs/"},
		Uploads:  s3x.URL{Bucket: "outputs", Key: "uploads/"},
		Registry: e.reg, Cache: cache, Backend: be, HostID: "h1", HeartbeatInterval: time.Hour,
		RetryBase: 10 * time.Millisecond, RetryMax: 10 * time.Millisecond, Metrics: e.metrics,
		Logger: slog.New(slog.NewJSONHandler(e.log, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	runWorker(t, w)
}

// enqueueRaw enqueues payload with task id id on pool:cpu, as a producer
// in any language would.
func (e *contractEnv) enqueueRaw(t *testing.T, id, payload string) {
	t.Helper()
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: e.redis})
	defer cl.Close()
	if _, err := cl.Enqueue(asynq.NewTask(job.TaskType, []byte(payload)), asynq.TaskID(id), asynq.Queue("pool:cpu"), asynq.MaxRetry(5)); err != nil {
		t.Fatal(err)
	}
}

// settled waits until asynq is done with task id: archived (failed for
// good) or gone (completed). It returns the archived task, or nil.
func (e *contractEnv) settled(t *testing.T, id string) *asynq.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		info, err := e.insp.GetTaskInfo("pool:cpu", id)
		switch {
		case errors.Is(err, asynq.ErrTaskNotFound):
			return nil
		case err != nil:
			t.Fatal(err)
		case info.State == asynq.TaskStateArchived:
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %q still %v after 60s (retried %d, last error %q)", id, info.State, info.Retried, info.LastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func payload(model string) string {
	return fmt.Sprintf(`{"v":1,"request":{"model":%q,"prompt":"a red fox","seed":1,"width":64,"height":64,"steps":1}}`, model)
}

// Errors that no retry can mend fail the job at its first attempt: asynq
// archives it without a retry, and the job record says what is wrong and
// that it is not retried. A manifest whose file URL is not s3://, one
// whose digest the model's bytes do not match, a model of an engine the
// pool does not run, and an invalid request.
func TestPermanentErrorsFailAtFirstAttempt(t *testing.T) {
	e := newContractEnv(t)
	f := e.good.Files[0]
	e.putManifest(t, "passwd", `{"schema":1,"name":"passwd","format":"safetensors","files":[{"name":"passwd","url":"file:///etc/passwd","size":100}]}`)
	wrong := "sha256:" + strings.Repeat("0", 64)
	e.putManifest(t, "corrupt", fmt.Sprintf(`{"schema":1,"name":"corrupt","format":"safetensors","files":[{"name":%q,"url":%q,"size":%d,"digest":%q}]}`, f.Name, f.URL, f.Size, wrong))
	e.putManifest(t, "foreign", fmt.Sprintf(`{"schema":1,"name":"foreign","engine":"nosuch","format":"safetensors","files":[{"name":%q,"role":"model","url":%q,"size":%d,"digest":%q}]}`, f.Name, f.URL, f.Size, f.Digest))
	e.startWorker(t)

	tests := []struct {
		name, id, payload string
		want              []string // in the record's error
	}{
		{"bad manifest", "bad-manifest-1", payload("passwd"), []string{`"file:///etc/passwd"`, "not retried: the model's manifest is invalid"}},
		{"digest mismatch", "digest-mismatch-1", payload("corrupt"), []string{"digest", wrong, "not retried: the model's file in S3 does not match"}},
		{"unknown engine", "unknown-engine-1", payload("foreign"), []string{`needs engine "nosuch"`, "not retried"}},
		{"invalid request", "invalid-request-1", `{"v":1,"request":{"model":"good","prompt":"x","width":0}}`, []string{"width", "not retried: the request is invalid"}},
		{"invalid utf-8", "invalid-utf8-1", "{\"v\":1,\"request\":{\"model\":\"good\",\"prompt\":\"\xff\xfe\"}}", []string{"prompt: is not valid UTF-8", "not retried"}},
	}
	for _, tt := range tests {
		e.enqueueRaw(t, tt.id, tt.payload)
	}
	e.enqueueRaw(t, "good-1", payload("good"))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := e.settled(t, tt.id)
			if info == nil || info.Retried != 0 {
				t.Fatalf("task %v; want archived with no retry", info)
			}
			rec, err := e.store.Get(t.Context(), tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Status != job.StatusFailed || rec.Attempt != 1 {
				t.Fatalf("record %s at attempt %d (%q); want failed at attempt 1", rec.Status, rec.Attempt, rec.Error)
			}
			for _, w := range tt.want {
				if !strings.Contains(rec.Error, w) {
					t.Errorf("record error %q does not say %q", rec.Error, w)
				}
			}
			t.Logf("%s: %s", tt.id, rec.Error)
		})
	}
	if info := e.settled(t, "good-1"); info != nil {
		t.Fatalf("the good job failed: %q", info.LastErr)
	}
	if rec, err := e.store.Get(t.Context(), "good-1"); err != nil || rec.Status != job.StatusSucceeded || rec.Result.Key != "outputs/good-1.png" {
		t.Fatalf("good job: %+v, %v", rec, err)
	}
}

// A producer that enqueues a task whose id is not a valid job id gets it
// failed at once, without running, with an error that says so; nothing is
// written under any key made from the id, in Redis or S3.
func TestForeignJobIDsRefused(t *testing.T) {
	e := newContractEnv(t)
	e.startWorker(t)
	bad := []string{"../../etc/x", "sp ace/ü", "outputs/../x", strings.Repeat("a", 200)}
	for _, id := range bad {
		e.enqueueRaw(t, id, payload("good"))
	}
	e.enqueueRaw(t, "control-1", payload("good"))
	for _, id := range bad {
		t.Run(id[:min(len(id), 20)], func(t *testing.T) {
			info := e.settled(t, id)
			if info == nil || info.Retried != 0 {
				t.Fatalf("task %v; want archived with no retry", info)
			}
			if !strings.Contains(info.LastErr, "not a valid job id") || !strings.Contains(info.LastErr, "id: ") {
				t.Errorf("archived with error %q, which does not say the id is invalid", info.LastErr)
			}
			if _, err := e.store.Get(t.Context(), id); !errors.Is(err, job.ErrNoRecord) {
				t.Errorf("a record was written for id %q: %v", id, err)
			}
			t.Logf("%q: %s", id, info.LastErr)
		})
	}
	if info := e.settled(t, "control-1"); info != nil {
		t.Fatalf("the control job failed: %q", info.LastErr)
	}
	keys, err := e.reg.Src.List(t.Context(), "outputs", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "outputs/control-1.png" {
		t.Fatalf("outputs bucket holds %q, want only outputs/control-1.png", keys)
	}
	if n := counterValue(t, e.metrics, "genfleet_worker_jobs_total", "outcome", "failed"); n != float64(len(bad)) {
		t.Errorf("failed jobs counted %v, want %d", n, len(bad))
	}
}

// A task whose job already ended is skipped without running, and never
// unnoticed: counted by whether its request is the ended job's, logged at
// warn with both request digests, and the ended job's record stays as it
// was, even when the new payload is invalid. While asynq still holds the
// first task, the producer's second enqueue is refused instead.
func TestDuplicateOfEndedJobCountedAndLogged(t *testing.T) {
	addr := testenv.Redis(t).Addr
	reg := prometheus.NewRegistry()
	logs := &testenv.Buffer{}
	w := noopWorkerOn(t, asynq.RedisClientOpt{Addr: addr}, "h1", 1)
	w.metrics = newMetrics(reg)
	w.log = slog.New(slog.NewJSONHandler(logs, nil))
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	store := job.NewStore(rdb)
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: addr})
	defer cl.Close()
	ctx := context.Background()

	first := `{"v":1,"request":{"model":"demo","prompt":"a red fox","seed":1}}`
	enqueue := func(body string) error {
		_, err := cl.Enqueue(asynq.NewTask(job.TaskType, []byte(body)), asynq.TaskID("dup-1"), asynq.Queue("pool:cpu"))
		return err
	}
	if err := enqueue(first); err != nil {
		t.Fatal(err)
	}
	// Before any worker took it, asynq holds the task: a second enqueue
	// of the id is refused.
	if err := enqueue(first); !errors.Is(err, asynq.ErrTaskIDConflict) {
		t.Fatalf("second enqueue while the first is queued: %v, want asynq.ErrTaskIDConflict", err)
	}
	runWorker(t, w)
	ended := waitSucceeded(t, store, "dup-1", time.Now().Add(30*time.Second))
	wantDigest := job.RequestDigest(ended.Request)

	otherReq := `{"v":1,"request":{"model":"demo","prompt":"a blue whale","seed":1}}`
	other, err := job.DecodePayload([]byte(otherReq))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, body, label string
	}{
		{"another request", otherReq, "different"},
		{"the same request", first, "same"},
		{"an invalid payload", `{"v":1,"request":{"model":"demo"}}`, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The first task is gone (completed): Redis takes the id again.
			if err := enqueue(tc.body); err != nil {
				t.Fatalf("enqueue after the job ended: %v", err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for counterValue(t, reg, "genfleet_worker_duplicate_tasks_total", "request", tc.label) != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("duplicate not counted with request=%q; log:\n%s", tc.label, logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			rec, err := store.Get(ctx, "dup-1")
			if err != nil || rec.Status != job.StatusSucceeded || rec.Request.Prompt != "a red fox" || rec.Error != "" {
				t.Fatalf("the ended job's record changed: %+v, %v", rec, err)
			}
		})
	}
	// The warn line of the different request names both digests.
	found := false
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"level":"WARN"`) && strings.Contains(l, `"request":"different"`) &&
			strings.Contains(l, wantDigest) && strings.Contains(l, job.RequestDigest(&other.Request)) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no warn line with both request digests (%s, %s):\n%s", wantDigest, job.RequestDigest(&other.Request), logs.String())
	}
}
