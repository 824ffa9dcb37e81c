package scheduler

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// overviewEnv is the API on a real Redis and a real S3 server (bucket
// "outputs"), with direct handles on both for setting up state.
type overviewEnv struct {
	t     *testing.T
	srv   *Server
	url   string
	rdb   *redis.Client
	store *job.Store
	s3    *s3.Client
	asynq *asynq.Client
}

func newOverviewEnv(t *testing.T, edit func(*Config)) *overviewEnv {
	t.Helper()
	addr := testenv.Redis(t).Addr
	s3srv := testenv.S3Server(t, "outputs")
	cfg := Config{Redis: asynq.RedisClientOpt{Addr: addr}, S3: s3srv.Client, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: &modelcache.Registry{Src: modelcache.NewS3Source(s3srv.Client), Root: s3x.URL{Bucket: "models"}}}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(s.Handler())
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: addr})
	t.Cleanup(func() { cl.Close(); rdb.Close(); api.Close(); s.Close() })
	return &overviewEnv{t: t, srv: s, url: api.URL, rdb: rdb, store: job.NewStore(rdb), s3: s3srv.Client, asynq: cl}
}

func (e *overviewEnv) get(path string, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.url+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (e *overviewEnv) enqueue(id, model, queue string, submitted time.Time) {
	e.t.Helper()
	task, opts, err := job.NewTask(id, job.Request{Model: model, Prompt: "x"}, "cpu")
	if err != nil {
		e.t.Fatal(err)
	}
	// NewTask stamps the submit time; this test sets its own.
	var p map[string]any
	_ = json.Unmarshal(task.Payload(), &p)
	p["submitted_at"] = submitted.UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(p)
	if _, err := e.asynq.Enqueue(asynq.NewTask(task.Type(), b), append(opts, asynq.Queue(queue))...); err != nil {
		e.t.Fatal(err)
	}
}

func (e *overviewEnv) finish(id, model string, st job.Status, at time.Time) {
	e.t.Helper()
	rec := &job.Record{ID: id, Status: st, Model: model, Queue: "pool:cpu", FinishedAt: at}
	if err := e.store.Finish(context.Background(), rec, ""); err != nil {
		e.t.Fatal(err)
	}
}

// GET /v1/jobs lists the jobs in asynq's queues and the jobs that ended
// last, newest first, filtered by status and model, at most limit; a bad
// parameter is a 400 naming it.
func TestListJobs(t *testing.T) {
	e := newOverviewEnv(t, nil)
	t0 := time.Now().Add(-time.Hour)
	e.finish("done-1", "demo", job.StatusSucceeded, t0.Add(1*time.Minute))
	e.finish("fail-1", "demo", job.StatusFailed, t0.Add(2*time.Minute))
	e.finish("done-2", "other", job.StatusSucceeded, t0.Add(3*time.Minute))
	e.enqueue("q-1", "demo", "pool:cpu", t0.Add(4*time.Minute))
	e.enqueue("q-2", "other", "pool:cpu:high", t0.Add(5*time.Minute))

	list := func(query string) []string {
		t.Helper()
		resp, b := e.get("/v1/jobs" + query)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/jobs%s = %d %s", query, resp.StatusCode, b)
		}
		var body struct{ Jobs []job.Record }
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range body.Jobs {
			out = append(out, r.ID+":"+string(r.Status))
		}
		return out
	}
	for _, tt := range []struct{ query, want string }{
		{"", "[q-2:queued q-1:queued done-2:succeeded fail-1:failed done-1:succeeded]"},
		{"?limit=3", "[q-2:queued q-1:queued done-2:succeeded]"},
		{"?limit=1", "[q-2:queued]"},
		{"?status=succeeded", "[done-2:succeeded done-1:succeeded]"},
		{"?status=queued", "[q-2:queued q-1:queued]"},
		{"?model=demo", "[q-1:queued fail-1:failed done-1:succeeded]"},
		{"?model=demo&status=failed", "[fail-1:failed]"},
		{"?status=running", "[]"},
		{"?model=nope", "[]"},
	} {
		if got := fmt.Sprint(list(tt.query)); got != tt.want {
			t.Errorf("GET /v1/jobs%s = %s, want %s", tt.query, got, tt.want)
		}
	}
	// A queued job's entry is what GET /v1/jobs/{id} says of it.
	_, b := e.get("/v1/jobs?limit=1")
	if !strings.Contains(string(b), `"prompt": "x"`) || !strings.Contains(string(b), `"queue": "pool:cpu:high"`) {
		t.Errorf("queued entry lacks its request or queue: %s", b)
	}
	for _, tt := range []struct{ query, field string }{
		{"?status=done", "status"}, {"?limit=0", "limit"}, {"?limit=201", "limit"}, {"?limit=x", "limit"},
	} {
		resp, b := e.get("/v1/jobs" + tt.query)
		var body apiError
		_ = json.Unmarshal(b, &body)
		if resp.StatusCode != 400 || body.Field != tt.field {
			t.Errorf("GET /v1/jobs%s = %d %s, want 400 naming %s", tt.query, resp.StatusCode, b, tt.field)
		}
	}
}

// The filter reads past the first page of the recent-jobs index.
func TestListJobsFilterReadsPastAPage(t *testing.T) {
	e := newOverviewEnv(t, nil)
	t0 := time.Now().Add(-time.Hour)
	e.finish("old-failure", "demo", job.StatusFailed, t0)
	for i := range jobListPage + 10 {
		e.finish(fmt.Sprintf("ok-%d", i), "demo", job.StatusSucceeded, t0.Add(time.Duration(i+1)*time.Second))
	}
	resp, b := e.get("/v1/jobs?status=failed")
	if resp.StatusCode != 200 || !strings.Contains(string(b), "old-failure") {
		t.Fatalf("GET /v1/jobs?status=failed = %d %s; want the failure behind %d newer jobs", resp.StatusCode, b, jobListPage+10)
	}
}

// A thumbnail is the job's image scaled down with a box filter, with an
// ETag that a conditional request matches (304) and a cache lifetime; a
// job without an image has no thumbnail.
func TestThumbnail(t *testing.T) {
	e := newOverviewEnv(t, nil)
	// 40×20: black left of x=21, white from there.
	src := image.NewNRGBA(image.Rect(0, 0, 40, 20))
	for y := range 20 {
		for x := range 40 {
			if x >= 21 {
				src.SetNRGBA(x, y, color.NRGBA{255, 255, 255, 255})
			} else {
				src.SetNRGBA(x, y, color.NRGBA{0, 0, 0, 255})
			}
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, src); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	if _, err := e.s3.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String("outputs"), Key: aws.String("o/img.png"), Body: bytes.NewReader(buf.Bytes())}); err != nil {
		t.Fatal(err)
	}
	rec := &job.Record{ID: "img", Status: job.StatusSucceeded, Model: "demo", FinishedAt: time.Now(),
		Result: &job.Output{Bucket: "outputs", Key: "o/img.png", URL: "s3://outputs/o/img.png", SHA256: hex.EncodeToString(sum[:]), Width: 40, Height: 20}}
	if err := e.store.Finish(t.Context(), rec, ""); err != nil {
		t.Fatal(err)
	}

	resp, b := e.get("/v1/jobs/img/thumbnail?w=16")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("thumbnail = %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != 16 || img.Bounds().Dy() != 8 {
		t.Fatalf("thumbnail is %v, want 16×8 (the aspect kept)", img.Bounds())
	}
	// Boxes are 2 or 3 source columns: box 7 is columns 17..19 (black),
	// box 8 columns 20 and 21 (one black, one white), box 9 22..24 (white).
	for x, want := range map[int]uint8{7: 0, 8: 127, 9: 255} {
		if got := color.NRGBAModel.Convert(img.At(x, 0)).(color.NRGBA).R; int(got) < int(want)-2 || int(got) > int(want)+2 {
			t.Errorf("pixel %d = %d, want about %d (the box's mean)", x, got, want)
		}
	}
	etag := resp.Header.Get("ETag")
	if etag == "" || !strings.Contains(resp.Header.Get("Cache-Control"), "max-age") {
		t.Fatalf("no ETag (%q) or Cache-Control (%q)", etag, resp.Header.Get("Cache-Control"))
	}
	if resp, _ := e.get("/v1/jobs/img/thumbnail?w=16", "If-None-Match", etag); resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match with the ETag = %d, want 304", resp.StatusCode)
	}
	if resp, _ := e.get("/v1/jobs/img/thumbnail?w=20", "If-None-Match", etag); resp.StatusCode != 200 {
		t.Errorf("another width with the first width's ETag = %d, want 200", resp.StatusCode)
	}
	// Never scaled up; the default width is 256.
	_, b = e.get("/v1/jobs/img/thumbnail")
	if cfg, err := png.DecodeConfig(bytes.NewReader(b)); err != nil || cfg.Width != 40 {
		t.Errorf("default thumbnail of a 40-wide image: %+v %v, want 40 wide", cfg, err)
	}
	for _, tt := range []struct {
		path string
		code int
	}{
		{"/v1/jobs/img/thumbnail?w=8", 400}, {"/v1/jobs/img/thumbnail?w=2000", 400},
		{"/v1/jobs/nope/thumbnail", 404}, {"/v1/jobs/bad..id/thumbnail", 400},
	} {
		if resp, b := e.get(tt.path); resp.StatusCode != tt.code {
			t.Errorf("GET %s = %d %s, want %d", tt.path, resp.StatusCode, b, tt.code)
		}
	}
	e.enqueue("waiting", "demo", "pool:cpu", time.Now())
	if resp, _ := e.get("/v1/jobs/waiting/thumbnail"); resp.StatusCode != 404 {
		t.Errorf("thumbnail of a queued job = %d, want 404", resp.StatusCode)
	}
	// An output that is not a PNG is a 502 naming the object, without an ETag.
	if _, err := e.s3.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String("outputs"), Key: aws.String("o/bad.png"), Body: strings.NewReader("not a png")}); err != nil {
		t.Fatal(err)
	}
	bad := *rec
	bad.ID, bad.Result = "bad", &job.Output{Bucket: "outputs", Key: "o/bad.png", URL: "s3://outputs/o/bad.png", SHA256: "00"}
	if err := e.store.Finish(t.Context(), &bad, ""); err != nil {
		t.Fatal(err)
	}
	if resp, b := e.get("/v1/jobs/bad/thumbnail"); resp.StatusCode != http.StatusBadGateway || resp.Header.Get("ETag") != "" || !strings.Contains(string(b), "s3://outputs/o/bad.png") {
		t.Errorf("thumbnail of a corrupt output = %d ETag %q %s", resp.StatusCode, resp.Header.Get("ETag"), b)
	}
}

// GET /v1/queues lists every asynq queue by state, priority-suffixed ones
// included, with a history that grows by one sample per interval.
func TestListQueuesWithHistory(t *testing.T) {
	e := newOverviewEnv(t, func(c *Config) { c.QueueSampleInterval = 50 * time.Millisecond })
	e.enqueue("a", "demo", "pool:cpu", time.Now())
	e.enqueue("b", "demo", "pool:cpu", time.Now())
	e.enqueue("c", "demo", "pool:cpu:high", time.Now())
	read := func() queueList {
		t.Helper()
		resp, b := e.get("/v1/queues")
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/queues = %d %s", resp.StatusCode, b)
		}
		var ql queueList
		if err := json.Unmarshal(b, &ql); err != nil {
			t.Fatal(err)
		}
		return ql
	}
	ql := read()
	got := map[string]int{}
	for _, q := range ql.Queues {
		got[q.Name] = q.Pending
	}
	if got["pool:cpu"] != 2 || got["pool:cpu:high"] != 1 || len(got) != 2 {
		t.Fatalf("queues = %+v", ql.Queues)
	}
	if len(ql.History) != 1 || ql.History[0].Queues["pool:cpu"] != [3]int{2, 0, 0} || ql.IntervalS != 0.05 {
		t.Fatalf("history = %+v (interval %v)", ql.History, ql.IntervalS)
	}
	read() // within the interval: no new sample
	time.Sleep(60 * time.Millisecond)
	if ql := read(); len(ql.History) < 2 {
		t.Fatalf("history after an interval has %d samples, want 2", len(ql.History))
	}
	// The ring keeps the last queueHistoryLen samples.
	for i := range queueHistoryLen + 3 {
		e.srv.sample(nil, time.Unix(int64(i), 0))
	}
	if h := e.srv.history.all(); len(h) != queueHistoryLen || h[len(h)-1].At.Unix() != queueHistoryLen+2 {
		t.Fatalf("ring holds %d samples ending at %v", len(h), h[len(h)-1].At)
	}
}

// A host whose heartbeats expired stays listed under "gone" in GET
// /v1/workers, with when it was last seen; a host that beats again leaves
// that list.
func TestGoneHosts(t *testing.T) {
	e := newOverviewEnv(t, nil)
	fleet := job.NewFleet(e.rdb)
	beat := func(host string, ttl time.Duration) time.Time {
		t.Helper()
		at := time.Now().UTC()
		if err := fleet.Beat(t.Context(), &job.Heartbeat{Host: host, PID: 1, DeviceClass: "cpu", Concurrency: 1, InFlight: 1, At: at}, ttl); err != nil {
			t.Fatal(err)
		}
		return at
	}
	type workers struct {
		Hosts []HostView
		Gone  []GoneHost
	}
	read := func() workers {
		t.Helper()
		resp, b := e.get("/v1/workers")
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/workers = %d %s", resp.StatusCode, b)
		}
		var w workers
		if err := json.Unmarshal(b, &w); err != nil {
			t.Fatal(err)
		}
		return w
	}
	at := beat("h1", 300*time.Millisecond)
	beat("h2", time.Minute)
	if w := read(); len(w.Hosts) != 2 || len(w.Gone) != 0 {
		t.Fatalf("both beating: %+v", w)
	}
	time.Sleep(400 * time.Millisecond)
	w := read()
	if len(w.Hosts) != 1 || w.Hosts[0].Host != "h2" {
		t.Fatalf("hosts after h1's heartbeat expired: %+v", w.Hosts)
	}
	if len(w.Gone) != 1 || w.Gone[0].Host != "h1" || !w.Gone[0].LastSeen.Equal(at) || w.Gone[0].InFlight != 0 {
		t.Fatalf("gone = %+v, want h1 last seen %v with nothing in flight", w.Gone, at)
	}
	beat("h1", time.Minute)
	if w := read(); len(w.Hosts) != 2 || len(w.Gone) != 0 {
		t.Fatalf("h1 back: %+v", w)
	}
}

// The memory forgets a host goneFor after it was last seen.
func TestHostMemoryForgets(t *testing.T) {
	var m hostMemory
	t0 := time.Now()
	m.observe([]HostView{{Host: "a"}, {Host: "b"}}, []job.Heartbeat{{Host: "a", At: t0}, {Host: "b", At: t0.Add(time.Minute)}}, t0)
	if g := m.gone([]HostView{{Host: "b"}}, t0.Add(time.Minute)); len(g) != 1 || g[0].Host != "a" {
		t.Fatalf("gone = %+v", g)
	}
	if g := m.gone(nil, t0.Add(goneFor+30*time.Second)); len(g) != 1 || g[0].Host != "b" {
		t.Fatalf("after goneFor: %+v, want only b (seen a minute later)", g)
	}
}
