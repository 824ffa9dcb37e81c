package scheduler

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// routedEnv is the API with routing on, on a real Redis and S3 whose
// registry holds "demo", and the Server itself (for Reap).
type routedEnv struct {
	redis  *testenv.Server
	s      *Server
	url    string
	rdb    *redis.Client
	insp   *asynq.Inspector
	digest string
}

func newRoutedEnv(t testing.TB, edit func(*Config)) *routedEnv {
	t.Helper()
	rs := testenv.Redis(t)
	addr := rs.Addr
	srv := testenv.S3Server(t, "models")
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(srv.Client), Root: s3x.URL{Bucket: "models"}}
	p := filepath.Join(t.TempDir(), "demo.safetensors")
	if err := os.WriteFile(p, make([]byte, 1024), 0o644); err != nil {
		t.Fatal(err)
	}
	man, err := reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "blobs/"}, "demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Redis: asynq.RedisClientOpt{Addr: addr}, S3: srv.Client, Registry: reg, CheckModels: true,
		Routing: Policy{Enabled: true, BacklogCap: 100}, FleetTTL: time.Millisecond, HostTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(s.Handler())
	e := &routedEnv{redis: rs, s: s, url: api.URL, rdb: redis.NewClient(&redis.Options{Addr: addr}),
		insp: asynq.NewInspector(asynq.RedisClientOpt{Addr: addr}), digest: man.Files[0].Digest}
	t.Cleanup(func() { e.insp.Close(); e.rdb.Close(); api.Close(); s.Close() })
	return e
}

// beat publishes a heartbeat of host holding the model warm, as of at.
func (e *routedEnv) beat(t *testing.T, host string, at time.Time) {
	t.Helper()
	hb := &job.Heartbeat{Host: host, PID: 1, Backend: "cpu", DeviceClass: "cpu", Concurrency: 4, At: at,
		Blobs: []job.BlobState{{Digest: e.digest, Size: 1024, ResidentBytes: 1024, Resident: 1}}}
	if err := job.NewFleet(e.rdb).Beat(t.Context(), hb, time.Minute); err != nil {
		t.Fatal(err)
	}
}

func (e *routedEnv) submit(t *testing.T, body string) (id, queue string) {
	t.Helper()
	resp, err := http.Post(e.url+"/v1/jobs", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct{ ID, Queue string }
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(b, &a) != nil {
		t.Fatalf("POST /v1/jobs %s = %d %s", body, resp.StatusCode, b)
	}
	return a.ID, a.Queue
}

// Routing works for every priority: a job for a warm model goes to the
// warm host's queue of its priority, and falls back to the pool queue of
// its priority; when the host stops heartbeating, the reaper moves its
// jobs of every priority to the pool queue of the same priority.
func TestRoutingAndReaperKeepPriorities(t *testing.T) {
	e := newRoutedEnv(t, nil)
	ctx := context.Background()
	e.beat(t, "h1", time.Now())
	want := map[string]string{"high": "host:h1:high", "normal": "host:h1", "": "host:h1", "low": "host:h1:low"}
	ids := map[string]string{}
	for prio, q := range want {
		body := `{"model":"demo","prompt":"x","priority":"` + prio + `"}`
		if prio == "" {
			body = `{"model":"demo","prompt":"x"}`
		}
		id, got := e.submit(t, body)
		if got != q {
			t.Fatalf("priority %q routed to %s, want %s", prio, got, q)
		}
		info, err := e.insp.GetTaskInfo(q, id)
		if err != nil {
			t.Fatalf("job %s is not in %s: %v", id, q, err)
		}
		p, err := job.DecodePayload(info.Payload)
		if err != nil || p.Route.Queue != q || p.Route.Pool != job.PriorityQueue("pool:cpu", job.Priority(prio)) {
			t.Fatalf("job %s's route %+v (%v): want queue %s, pool of its priority", id, p.Route, err, q)
		}
		ids[prio] = id
	}
	// A bad priority names the field.
	resp, err := http.Post(e.url+"/v1/jobs", "application/json", strings.NewReader(`{"model":"demo","prompt":"x","priority":"urgent"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var apiErr struct{ Error, Field string }
	if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(b, &apiErr) != nil || apiErr.Field != "priority" {
		t.Fatalf("priority urgent: %d %s", resp.StatusCode, b)
	}

	// The host goes silent: everything it had queued moves to the pool,
	// each job to the queue of its priority.
	e.beat(t, "h1", time.Now().Add(-time.Hour))
	if err := e.s.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	for prio, id := range ids {
		pool := job.PriorityQueue("pool:cpu", job.Priority(prio))
		info, err := e.insp.GetTaskInfo(pool, id)
		if err != nil {
			t.Fatalf("priority %q job %s not moved to %s: %v", prio, id, pool, err)
		}
		if _, err := e.insp.GetTaskInfo(want[prio], id); err == nil {
			t.Fatalf("job %s still in %s after the move", id, want[prio])
		}
		p, _ := job.DecodePayload(info.Payload)
		if p.Route.Queue != pool || !strings.Contains(p.Route.Reason, "stopped heartbeating") {
			t.Fatalf("moved job's route %+v", p.Route)
		}
	}
	for _, q := range job.PriorityQueues("host:h1") {
		if qi, err := e.insp.GetQueueInfo(q); err == nil && qi.Size != 0 {
			t.Fatalf("%s still holds %d jobs", q, qi.Size)
		}
	}

	// Demand for autoscaling counts every priority's queue of the pool.
	rec := httptest.NewRecorder()
	e.s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `genfleet_pool_desired_workers{pool="cpu"} 2`) {
		t.Fatalf("desired workers for 4 pending jobs over 3 priorities: want 2; metrics:\n%s", grepLines(rec.Body.String(), "genfleet_pool_desired"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
