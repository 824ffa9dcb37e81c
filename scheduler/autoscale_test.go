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

// hostWith is a cpu host with procs processes of one slot each, holding
// the given digests at the given resident fraction.
func hostWith(name string, procs int, resident float64, digests ...string) HostView {
	h := HostView{Host: name, DeviceClass: "cpu", Processes: procs, Concurrency: procs}
	for _, d := range digests {
		h.Blobs = append(h.Blobs, job.BlobState{Digest: d, Size: 1 << 30, Resident: resident})
	}
	return h
}

func TestPlan(t *testing.T) {
	const a, b = "sha256:aa", "sha256:bb"
	// A worker that measured model "a": 40s cold start for 1 GiB, 4s jobs.
	measured := []job.Heartbeat{{Host: "h1", DeviceClass: "cpu",
		Blobs:  []job.BlobState{{Digest: a, Size: 1 << 30}},
		Models: []job.ModelState{{Ref: "a", Digests: []string{a}, ColdStartMS: 40000, JobMS: 4000}}}}
	tests := []struct {
		name        string
		queued      []QueuedModel
		active      int
		hosts       []HostView
		hbs         []job.Heartbeat
		wantDesired int
		wantCold    int
		wantNew     map[string]int
		wantFrom    map[string]string
		reason      map[string]string
	}{
		{
			name:   "a backlog on a model no host holds asks for new workers",
			queued: []QueuedModel{{Ref: "b", Class: "cpu", Digests: []string{b}, Size: 2 << 30, Queued: 6}},
			hosts:  []HostView{hostWith("h1", 1, 1, a)}, hbs: measured,
			wantDesired: 3, wantCold: 6, wantNew: map[string]int{"b": 3},
			wantFrom: map[string]string{"b": "estimated"}, reason: map[string]string{"b": "no cpu host holds it warm"},
		},
		{
			name:   "the same backlog on a warm model that its hosts will drain asks for none",
			queued: []QueuedModel{{Ref: "a", Class: "cpu", Digests: []string{a}, Size: 1 << 30, Queued: 6}},
			hosts:  []HostView{hostWith("h1", 1, 1, a), hostWith("h2", 1, 1, a)}, hbs: measured,
			// 4 jobs absorbed by 2 warm workers; 2 over, drained in 2·4s/2 = 4s < 40s.
			wantDesired: 2, wantNew: map[string]int{"a": 0},
			wantFrom: map[string]string{"a": "measured"}, reason: map[string]string{"a": "before a new worker would be warm"},
		},
		{
			name:   "a warm backlog too long to drain before a cold start asks for more",
			queued: []QueuedModel{{Ref: "a", Class: "cpu", Digests: []string{a}, Size: 1 << 30, Queued: 42}},
			hosts:  []HostView{hostWith("h1", 1, 1, a)}, hbs: measured,
			// 2 absorbed; 40 over: 160s on one slot > 40s.
			wantDesired: 1 + 20, wantNew: map[string]int{"a": 20}, reason: map[string]string{"a": "longer than a cold start"},
		},
		{
			name:   "a model on disk but not resident counts as cached, not warm",
			queued: []QueuedModel{{Ref: "a", Class: "cpu", Digests: []string{a}, Queued: 2}},
			hosts:  []HostView{hostWith("h1", 1, 0.1, a)},
			active: 1, wantDesired: 1 + 1, wantCold: 2, wantNew: map[string]int{"a": 1}, wantFrom: map[string]string{"a": "default"},
		},
		{
			name:   "running jobs keep their workers",
			active: 5, hosts: []HostView{hostWith("h1", 3, 1, a)}, wantDesired: 3,
		},
		{
			name:   "a raw s3 ref has no digest: no host counts as warm",
			queued: []QueuedModel{{Ref: "s3://m/x.safetensors", Class: "cpu", Queued: 1}},
			hosts:  []HostView{hostWith("h1", 1, 1, a)}, wantDesired: 1, wantCold: 1,
			wantNew: map[string]int{"s3://m/x.safetensors": 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Plan(AutoscalePolicy{}, tc.queued, map[string]int{"cpu": tc.active}, tc.hosts, tc.hbs)["cpu"]
			if got == nil {
				t.Fatal("no cpu class")
			}
			if got.DesiredWorkers != tc.wantDesired || got.ColdPending != tc.wantCold {
				t.Errorf("desired %d, cold pending %d; want %d, %d\n%+v", got.DesiredWorkers, got.ColdPending, tc.wantDesired, tc.wantCold, got.Models)
			}
			for _, md := range got.Models {
				if n, ok := tc.wantNew[md.Model]; ok && md.NewWorkers != n {
					t.Errorf("%s: new workers %d, want %d (%s)", md.Model, md.NewWorkers, n, md.Reason)
				}
				if f, ok := tc.wantFrom[md.Model]; ok && md.ColdStartFrom != f {
					t.Errorf("%s: cold start from %s (%vs), want %s", md.Model, md.ColdStartFrom, md.ColdStartSeconds, f)
				}
				if r, ok := tc.reason[md.Model]; ok && !strings.Contains(md.Reason, r) {
					t.Errorf("%s: reason %q lacks %q", md.Model, md.Reason, r)
				}
			}
		})
	}
	// The estimate scales the class's measured seconds per GiB by size.
	got := Plan(AutoscalePolicy{}, []QueuedModel{{Ref: "b", Class: "cpu", Digests: []string{b}, Size: 2 << 30, Queued: 1}}, nil, nil, measured)["cpu"]
	if md := got.Models[0]; md.ColdStartSeconds != 80 || got.ColdStartSecondsPerGiB != 40 {
		t.Errorf("estimate: %vs (%v s/GiB), want 80s (40 s/GiB)", md.ColdStartSeconds, got.ColdStartSecondsPerGiB)
	}
}

// GET /autoscale on a live scheduler: jobs queued through the API for a
// model that a heartbeat says is warm on a host, and for one no host holds;
// the open endpoint gives per-class numbers only, /v1/autoscale each model
// (behind the token), and /metrics the same signal.
func TestAutoscaleEndpoint(t *testing.T) {
	rd := testenv.Redis(t)
	s3s := testenv.S3Server(t, "models")
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(s3s.Client), Root: s3x.URL{Bucket: "models"}}
	digests := map[string]string{}
	for _, name := range []string{"warm", "cold"} {
		p := filepath.Join(t.TempDir(), name+".safetensors")
		if err := os.WriteFile(p, []byte("model "+name), 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "w/"}, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		digests[name] = m.Files[0].Digest
	}
	const token = "api-token-for-the-autoscale-test"
	s, err := New(Config{Redis: asynq.RedisClientOpt{Addr: rd.Addr}, S3: s3s.Client, Registry: reg, CheckModels: true,
		APITokens: []string{token}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	api := httptest.NewServer(s.Handler())
	defer api.Close()
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr})
	defer rdb.Close()
	ctx := context.Background()
	// A cpu host with the warm model resident, which measured its cold start.
	hb := &job.Heartbeat{Host: "h1", PID: 1, DeviceClass: "cpu", Concurrency: 1, At: time.Now(),
		Blobs:  []job.BlobState{{Digest: digests["warm"], Size: 1 << 30, Resident: 1}},
		Models: []job.ModelState{{Ref: "warm", Digests: []string{digests["warm"]}, ColdStartMS: 30000, JobMS: 2000}}}
	if err := job.NewFleet(rdb).Beat(ctx, hb, time.Minute); err != nil {
		t.Fatal(err)
	}
	do := func(method, path, body, tok string) (int, []byte) {
		req, _ := http.NewRequest(method, api.URL+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	// Jobs of every priority: each priority's queue counts toward its
	// class (pool:cpu:high is cpu's; so is host:h1:low, h1 being a cpu host).
	prios := []job.Priority{job.PriorityHigh, "", job.PriorityLow, job.PriorityNormal}
	for i := range 4 {
		for _, m := range []string{"warm", "cold"} {
			body := `{"model":"` + m + `","prompt":"x","seed":` + string(rune('0'+i)) + `,"priority":"` + string(prios[(i+len(m))%4].OrNormal()) + `"}`
			if code, b := do("POST", "/v1/jobs", body, token); code != 202 {
				t.Fatalf("submit: %d %s", code, b)
			}
		}
	}
	task, opts, err := job.NewTask("warm-on-h1-low", job.Request{Model: "warm", Prompt: "x"}, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := asynq.NewClientFromRedisClient(rdb).Enqueue(task, append(opts, asynq.Queue(job.PriorityQueue(job.HostQueue("h1"), job.PriorityLow)))...); err != nil {
		t.Fatal(err)
	}
	var open struct {
		Classes map[string]ClassDemand `json:"classes"`
	}
	code, body := do("GET", "/autoscale", "", "")
	if code != 200 || json.Unmarshal(body, &open) != nil {
		t.Fatalf("GET /autoscale: %d %s", code, body)
	}
	cpu := open.Classes["cpu"]
	// 4 cold jobs → 2 new workers; 5 warm jobs: 2 absorbed by h1's one
	// worker, 3 over drained in 6s < 30s → ⌈2/2⌉ + 2 = 3.
	if cpu.Pending != 9 || cpu.ColdPending != 4 || cpu.DesiredWorkers != 3 || cpu.Hosts != 1 || cpu.Models != nil || len(open.Classes) != 1 {
		t.Errorf("open /autoscale class cpu: %s", body)
	}
	if strings.Contains(string(body), `"warm"`) {
		t.Errorf("the open endpoint names models: %s", body)
	}
	if code, _ := do("GET", "/v1/autoscale", "", ""); code != 401 {
		t.Errorf("GET /v1/autoscale without the token: %d, want 401", code)
	}
	var full struct {
		Classes map[string]ClassDemand `json:"classes"`
	}
	code, body = do("GET", "/v1/autoscale", "", token)
	if code != 200 || json.Unmarshal(body, &full) != nil {
		t.Fatalf("GET /v1/autoscale: %d %s", code, body)
	}
	byModel := map[string]ModelDemand{}
	for _, md := range full.Classes["cpu"].Models {
		byModel[md.Model] = md
	}
	if w := byModel["warm"]; w.WarmHosts != 1 || w.NewWorkers != 0 || w.ColdStartFrom != "measured" || w.ColdStartSeconds != 30 || w.JobSeconds != 2 {
		t.Errorf("warm model: %+v", w)
	}
	if c := byModel["cold"]; c.WarmHosts != 0 || c.NewWorkers != 2 || c.Queued != 4 {
		t.Errorf("cold model: %+v", c)
	}
	_, body = do("GET", "/metrics", "", "")
	for _, want := range []string{`genfleet_autoscale_desired_workers{class="cpu"} 3`, `genfleet_autoscale_cold_pending_jobs{class="cpu"} 4`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
