package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/backends/sdcpp/spec"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
)

// standInEngine builds the stand-in stable-diffusion.cpp of the sdcpp
// backend's tests and returns the directory holding it as sd-cli and
// sd-server. Worker processes started afterwards find its help texts
// through the environment.
func standInEngine(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "fakesd")
	if out, err := exec.Command("go", "build", "-o", bin, "../../backends/sdcpp/testdata/fakesd").CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in engine: %v\n%s", err, out)
	}
	for _, n := range []string{"sd-cli", "sd-server"} {
		if err := os.Symlink(bin, filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	help, err := filepath.Abs("../../backends/sdcpp/testdata")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKESD_HELP_DIR", help)
	return dir
}

// writeTensors writes a safetensors file of about size bytes: one F32
// tensor named "weight". The stand-in engine reads the names.
func writeTensors(t *testing.T, path string, size int) {
	t.Helper()
	n := int64(size / 4)
	var buf bytes.Buffer
	err := modelformat.WriteSafetensors(&buf, nil, []modelformat.TensorSpec{{Name: "weight", DType: "F32", Shape: []int64{n},
		Write: func(w io.Writer) error { _, err := w.Write(make([]byte, 4*n)); return err }}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSdcppModelsRunOnSdcppWorkers runs a split stable-diffusion.cpp model
// through the whole fleet: the scheduler queues it on the sdcpp pool, the
// sdcpp worker runs it on an engine server that it keeps for the next job,
// its status shows the engine's step progress; a cpu worker that gets such
// a job anyway fails it at once without downloading anything; the built-in
// model refuses a sampler.
func TestSdcppModelsRunOnSdcppWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	engine := standInEngine(t)
	engineLog := filepath.Join(t.TempDir(), "engine.log")
	t.Setenv("FAKESD_LOG", engineLog)
	fl := newFleet(t, 1<<20, "cpu")

	// A split model: a diffusion model, a VAE and a text encoder (the
	// stand-in engine, like the real one, refuses a model that lacks one).
	dir := t.TempDir()
	diffusion := filepath.Join(dir, "flux-mini.gguf")
	vae := filepath.Join(dir, "ae.safetensors")
	clip := filepath.Join(dir, "clip_l.safetensors")
	writeTensors(t, diffusion, 200_000)
	writeTensors(t, vae, 50_000)
	writeTensors(t, clip, 1000)
	man, err := fl.reg.PushModel(t.Context(), "flux-mini", "sdcpp", []modelcache.PushFile{
		{Path: diffusion, Role: "diffusion_model", Dest: s3x.URL{Bucket: modelsBucket, Key: "blobs/flux-mini/"}},
		{Path: vae, Role: "vae", Dest: s3x.URL{Bucket: modelsBucket, Key: "blobs/flux-mini/"}},
		{Path: clip, Role: "clip_l", Dest: s3x.URL{Bucket: modelsBucket, Key: "blobs/flux-mini/"}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A model the engine refuses: not a model file at all.
	garbage := filepath.Join(dir, "garbage.safetensors")
	os.WriteFile(garbage, bytes.Repeat([]byte("g"), 5000), 0o644)
	if _, err := fl.reg.PushModel(t.Context(), "garbage", "sdcpp", []modelcache.PushFile{
		{Path: garbage, Role: "model", Dest: s3x.URL{Bucket: modelsBucket, Key: "blobs/garbage/"}},
	}, nil); err != nil {
		t.Fatal(err)
	}

	fl.startWorkerOn("cpuhost", t.TempDir())
	fl.startWorkerOn("sdhost", t.TempDir(), "--backend", "sdcpp",
		"--sdcpp-cli", filepath.Join(engine, "sd-cli"), "--sdcpp-server", filepath.Join(engine, "sd-server"),
		"--sdcpp-args", "--threads 2")

	// Slow enough to watch the progress.
	id := fl.submit(`{"model":"flux-mini","prompt":"a slow fox","seed":5,"width":128,"height":192,"steps":40,"sampling_method":"euler","scheduler":"simple"}`)
	var sawProgress bool
	rec := fl.wait(id, 90*time.Second, func(r job.Record) bool {
		if r.Progress != nil && r.Progress.Steps == 40 && r.Progress.Step > 0 {
			sawProgress = true
		}
		return false
	})
	if rec.Status != job.StatusSucceeded {
		t.Fatalf("job %s: %s %q", id, rec.Status, rec.Error)
	}
	if !sawProgress {
		t.Error("the job's status never showed the engine's step progress")
	}
	// The server's first generation loaded the weights (the stand-in logs
	// 0.01 s mapping and 0.20 s loading).
	if got := rec.Timings["engine_load"]; got != 210 {
		t.Errorf("engine_load %v ms, want 210 (timings %v)", got, rec.Timings)
	}
	if rec.Queue != "pool:sdcpp" || rec.Worker == nil || rec.Worker.Backend != "sdcpp" || rec.Worker.Host != "sdhost" {
		t.Errorf("ran on queue %q by %+v", rec.Queue, rec.Worker)
	}
	img, err := png.Decode(bytes.NewReader(fl.image(id)))
	if err != nil || img.Bounds().Dx() != 128 || img.Bounds().Dy() != 192 {
		t.Fatalf("image: %v, %v", err, img)
	}
	// A second job, through `genfleet submit`, reuses the engine server.
	var out, errOut bytes.Buffer
	if rc := run([]string{"submit", "--api", fl.api.URL, "--model", "flux-mini", "--prompt", "another fox",
		"--width", "64", "--height", "64", "--steps", "3", "--sampling-method", "dpm++2m", "--scheduler", "karras",
		"--wait", "--timeout", "60s"}, &out, &errOut); rc != 0 {
		t.Fatalf("genfleet submit = %d: %s", rc, errOut.String())
	}
	if rec := fl.get(strings.TrimSpace(out.String())); rec.Status != job.StatusSucceeded || rec.Request.SamplingMethod != "dpm++2m" {
		t.Fatalf("job %s: %s %q %+v", rec.ID, rec.Status, rec.Error, rec.Request)
	}
	var starts, requests int
	f, err := os.Open(engineLog)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct {
			Prog string
			Args []string
		}
		json.Unmarshal(sc.Bytes(), &r)
		switch {
		case r.Prog == "sd-server" && len(r.Args) > 0 && r.Args[0] == "txt2img":
			requests++
			if requests == 2 && (r.Args[3] != "dpm++2m" || r.Args[4] != "karras") {
				t.Errorf("the engine got sampler %q and scheduler %q", r.Args[3], r.Args[4])
			}
		case r.Prog == "sd-server":
			starts++
			for _, f := range man.Files {
				if flag, _ := spec.RoleFlag(f.Role); !strings.Contains(strings.Join(r.Args, " "), flag+" ") {
					t.Errorf("server started without the %s file: %v", f.Role, r.Args)
				}
			}
		}
	}
	f.Close()
	if starts != 1 || requests != 2 {
		t.Errorf("engine server starts %d, requests %d; want 1 and 2", starts, requests)
	}

	// The fleet view says which engines each host runs.
	code, body := fl.do("GET", "/v1/workers", "")
	var view struct {
		Hosts []struct {
			Host    string   `json:"host"`
			Engines []string `json:"engines"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal(body, &view); code != http.StatusOK || err != nil {
		t.Fatalf("/v1/workers = %d %s", code, body)
	}
	engines := map[string]string{}
	for _, h := range view.Hosts {
		engines[h.Host] = strings.Join(h.Engines, ",")
	}
	if engines["sdhost"] != "sdcpp" || engines["cpuhost"] != "refgen" {
		t.Errorf("engines by host %v", engines)
	}

	// An sdcpp worker may not take the cpu host's id: they would share the
	// queue host:cpuhost.
	clash := fl.startWorkerOn("cpuhost", t.TempDir(), "--backend", "sdcpp", "--sdcpp-cli", filepath.Join(engine, "sd-cli"))
	done := make(chan error, 1)
	go func() { done <- clash.Wait() }()
	select {
	case err := <-done:
		out := clash.Stdout.(*testenv.Buffer).String()
		if err == nil || !strings.Contains(out, `host id "cpuhost" is in use by a worker of device class "cpu"`) {
			t.Errorf("clashing worker: %v\n%s", err, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a worker with a clashing host id kept running")
	}

	// A producer that puts an sdcpp job on the cpu pool: the cpu worker
	// fails it at once, saying why, and downloads nothing.
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer cl.Close()
	task, opts, err := job.NewTask("misrouted-1", job.Request{Model: "flux-mini", Prompt: "x", Seed: 1, Width: 64, Height: 64, Steps: 2}, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.EnqueueContext(context.Background(), task, opts...); err != nil {
		t.Fatal(err)
	}
	rec = fl.wait("misrouted-1", 30*time.Second, nil)
	if rec.Status != job.StatusFailed || !strings.Contains(rec.Error, `needs engine "sdcpp"`) || rec.Attempt != 1 {
		t.Errorf("misrouted job: %s attempt %d %q", rec.Status, rec.Attempt, rec.Error)
	}
	if rec.Worker == nil || rec.Worker.Host != "cpuhost" {
		t.Errorf("misrouted job ran on %+v", rec.Worker)
	}
	if n, _ := fl.proxy.counts("/" + modelsBucket + "/blobs/flux-mini/flux-mini.gguf"); n != 1 {
		t.Errorf("the diffusion model was fetched %d times, want 1 (by the sdcpp host only)", n)
	}

	// The engine refuses the garbage model: the job fails at its first
	// attempt with the engine's own line.
	id = fl.submit(`{"model":"garbage","prompt":"a fox","seed":1,"width":64,"height":64,"steps":2}`)
	rec = fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusFailed || rec.Attempt != 1 || !strings.Contains(rec.Error, "refused the model") ||
		!strings.Contains(rec.Error, "model_loader.cpp:252  - unknown format") {
		t.Errorf("refused model: %s attempt %d %q", rec.Status, rec.Attempt, rec.Error)
	}

	// What stable-diffusion.cpp would not run as asked is refused at
	// submit, naming the field; its own choices pass.
	for _, tc := range []struct{ body, field string }{
		{`{"model":"flux-mini","prompt":"a fox <sd_cpp_extra_args>{\"width\":128}</sd_cpp_extra_args>","width":256,"height":256}`, "prompt"},
		{`{"model":"flux-mini","prompt":"a fox","negative_prompt":"<sd_cpp_extra_args>{}</sd_cpp_extra_args>"}`, "negative_prompt"},
		{`{"model":"flux-mini","prompt":"a fox","width":200,"height":136}`, "width"},
		{`{"model":"flux-mini","prompt":"a fox","sampling_method":"euler_b"}`, "sampling_method"},
		{`{"model":"flux-mini","prompt":"a fox","scheduler":"linear"}`, "scheduler"},
		{`{"model":"flux-mini","prompt":"a fox","steps":1,"width":64,"height":64,"sampling_method":"dpm++2m_sde","scheduler":"beta"}`, ""},
	} {
		code, body := fl.do("POST", "/v1/jobs", tc.body)
		var apiErr struct{ Field string }
		json.Unmarshal(body, &apiErr)
		if tc.field == "" && code != http.StatusAccepted || tc.field != "" && (code != http.StatusBadRequest || apiErr.Field != tc.field) {
			t.Errorf("%s: %d %s, want field %q refused", tc.body, code, body, tc.field)
		}
	}

	// The built-in engine has no sampler choice: refused at submit.
	code, body = fl.do("POST", "/v1/jobs", `{"model":"demo","prompt":"a fox","seed":1,"sampling_method":"euler"}`)
	var apiErr struct{ Field string }
	if json.Unmarshal(body, &apiErr); code != http.StatusBadRequest || apiErr.Field != "sampling_method" {
		t.Errorf("sampler for the built-in engine: %d %s", code, body)
	}
	fl.stopWorkers()
}
