package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends/cpu"
	"github.com/genfleet/genfleet/backends/cuda"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// The production overlay scales each worker Deployment with one KEDA
// metrics-api trigger on the scheduler's warmth-aware signal for the
// Deployment's own device class. Build the overlay, then ask a live
// scheduler (real Redis and S3, a cold backlog queued) each trigger's URL
// and read its valueLocation from the answer, as KEDA would.
func TestKEDAWarmthTriggers(t *testing.T) {
	bo := kustomizeBuild(t, filepath.Join(k8sTree(t), "overlays", "production"))
	table := deployFlagTable(t)
	deployments := map[string]k8sWorkload{}
	services := map[string][]int{}
	for _, o := range bo.objects {
		switch o.Kind {
		case "Deployment":
			var w k8sWorkload
			if err := json.Unmarshal(o.Spec, &w); err != nil {
				t.Fatal(err)
			}
			deployments[o.Metadata.Name] = w
		case "Service":
			var spec struct{ Ports []struct{ Port int } }
			if err := json.Unmarshal(o.Spec, &spec); err != nil {
				t.Fatal(err)
			}
			for _, p := range spec.Ports {
				services[o.Metadata.Name] = append(services[o.Metadata.Name], p.Port)
			}
		}
	}

	// A scheduler with a cold backlog on the cpu pool: a model no host has.
	rd := testenv.Redis(t)
	s3s := testenv.S3Server(t, "models")
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(s3s.Client), Root: s3x.URL{Bucket: "models"}}
	p := filepath.Join(t.TempDir(), "m.safetensors")
	if err := os.WriteFile(p, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "w/"}, "m", nil); err != nil {
		t.Fatal(err)
	}
	srv, err := scheduler.New(scheduler.Config{Redis: asynq.RedisClientOpt{Addr: rd.Addr}, S3: s3s.Client, Registry: reg,
		CheckModels: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	api := httptest.NewServer(srv.Handler())
	defer api.Close()
	for i := range 3 {
		body := `{"model":"m","prompt":"x","seed":` + strconv.Itoa(i) + `}`
		resp, err := http.Post(api.URL+"/v1/jobs", "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != 202 {
			t.Fatalf("submit: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr})
	defer rdb.Close()
	if err := job.NewFleet(rdb).Beat(context.Background(), &job.Heartbeat{Host: "h1", PID: 1, DeviceClass: "cpu", Concurrency: 1, At: time.Now()}, time.Minute); err != nil {
		t.Fatal(err)
	}

	classOf := map[string]string{"cpu": (&cpu.Backend{}).DeviceClass(), "cuda": (&cuda.Backend{}).DeviceClass()}
	seen := map[string]bool{}
	for _, o := range bo.objects {
		if o.Kind != "ScaledObject" {
			continue
		}
		var so struct {
			ScaleTargetRef struct{ Name string } `json:"scaleTargetRef"`
			Triggers       []struct {
				Type       string
				MetricType string `json:"metricType"`
				Metadata   map[string]string
			}
		}
		if err := json.Unmarshal(o.Spec, &so); err != nil {
			t.Fatal(err)
		}
		name := so.ScaleTargetRef.Name
		seen[name] = true
		w, ok := deployments[name]
		if !ok {
			t.Fatalf("ScaledObject %s scales %q, which is no Deployment of the overlay", o.Metadata.Name, name)
		}
		if len(so.Triggers) != 1 || so.Triggers[0].Type != "metrics-api" || so.Triggers[0].MetricType != "AverageValue" {
			t.Fatalf("%s: triggers %+v; want one metrics-api trigger, AverageValue", name, so.Triggers)
		}
		md := so.Triggers[0].Metadata
		u, err := url.Parse(md["url"])
		if err != nil || md["format"] != "json" || md["targetValue"] != "1" {
			t.Fatalf("%s: trigger metadata %v", name, md)
		}
		// The URL names the scheduler's Service and port.
		host, port := u.Hostname(), u.Port()
		if ports := services[host]; !strings.HasPrefix(host, "genfleet-scheduler") || !containsPort(ports, port) {
			t.Errorf("%s: trigger URL %s names no scheduler Service port (services: %v)", name, md["url"], services)
		}
		// The class asked for is the one the Deployment's workers serve.
		env := map[string]string{}
		for _, e := range w.Template.Spec.Containers[0].Env {
			env[e.Name] = e.Value
		}
		want := classOf[env["GENFLEET_BACKEND"]]
		if env["GENFLEET_BACKEND"] == "sdcpp" {
			want = roleSetting(t, table, "worker", "sdcpp-pool", env)
		}
		if got := u.Query().Get("class"); want == "" || got != want {
			t.Errorf("%s: trigger asks for class %q, its workers (backend %q) serve %q", name, got, env["GENFLEET_BACKEND"], want)
		}
		// KEDA's request, and its valueLocation read off the answer.
		resp, err := http.Get(api.URL + u.RequestURI())
		if err != nil {
			t.Fatal(err)
		}
		var answer map[string]any
		err = json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: GET %s: %s, %v", name, u.RequestURI(), resp.Status, err)
		}
		v, ok := answer[md["valueLocation"]].(float64)
		if !ok {
			t.Fatalf("%s: valueLocation %q not a number in %v", name, md["valueLocation"], answer)
		}
		if u.Query().Get("class") == "cpu" && v != 2 {
			t.Errorf("cpu workers wanted: %v, want 2 for 3 cold jobs", v)
		}
	}
	for _, d := range []string{"genfleet-worker-cpu", "genfleet-worker-gpu", "genfleet-worker-sdcpp"} {
		if !seen[d] {
			t.Errorf("no ScaledObject scales %s", d)
		}
	}
}

func containsPort(ports []int, p string) bool {
	for _, x := range ports {
		if strconv.Itoa(x) == p {
			return true
		}
	}
	return false
}
