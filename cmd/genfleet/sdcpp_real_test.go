package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// TestRealStableDiffusionCpp runs the sdcpp backend on a real
// stable-diffusion.cpp build: set GENFLEET_SDCPP_CLI and
// GENFLEET_SDCPP_SERVER to its sd-cli and sd-server (scripts/sdcpp-check.sh
// does the same from a shell). It makes a random-weight SD 1.x checkpoint
// with `genfleet models make --arch sd1`, pushes it whole and split into
// components to a fleet on real Redis and S3, and runs jobs on a worker
// that runs the engine as a process per job and on one that keeps an
// engine server: each job's image has the size asked for and the first
// generation reports the engine's weight load; models the engine refuses
// fail at the first attempt with its own lines; a prompt with the
// server's parameter markup is refused at the API and, enqueued straight
// into Redis, by the worker, without reaching the engine; a size the
// engine would round is refused at the API; a job whose sd-server is
// killed under it is retried on a fresh server. Sizes are tiny and jobs
// take one step: on two cores a job takes 10–40 s.
func TestRealStableDiffusionCpp(t *testing.T) {
	cli, srv := os.Getenv("GENFLEET_SDCPP_CLI"), os.Getenv("GENFLEET_SDCPP_SERVER")
	if cli == "" || srv == "" {
		t.Skip("set GENFLEET_SDCPP_CLI and GENFLEET_SDCPP_SERVER to a stable-diffusion.cpp build's sd-cli and sd-server to run it")
	}
	fl := newFleet(t, 1<<20, "cpu")
	dir := t.TempDir()
	s3flags := []string{"--registry", "s3://" + modelsBucket + "/", "--s3-endpoint", fl.s3.Endpoint,
		"--s3-access-key", fl.s3.Config.AccessKey, "--s3-secret-key", fl.s3.Config.SecretKey}
	cmd := func(args ...string) string {
		t.Helper()
		code, out, stderr := runCLI(args...)
		if code != 0 {
			t.Fatalf("genfleet %s: %d\n%s\n%s", strings.Join(args, " "), code, out, stderr)
		}
		return out
	}

	// The models: whole, split (each component with its role, from the
	// push line `models make` prints), and two the engine refuses.
	single := filepath.Join(dir, "sd1.gguf")
	cmd("models", "make", "--arch", "sd1", "--dtype", "q4_0", "--out", single)
	cmd(append([]string{"models", "push", single, "s3://" + modelsBucket + "/blobs/sd1.gguf", "--name", "sd1", "--engine", "sdcpp"}, s3flags...)...)
	out := cmd("models", "make", "--arch", "sd1", "--dtype", "q4_0", "--split", "--out", filepath.Join(dir, "split"))
	files := regexp.MustCompile(`--file (\S+)`).FindAllStringSubmatch(out, -1)
	if len(files) < 2 {
		t.Fatalf("models make --split printed no push line with --file: %s", out)
	}
	push := []string{"models", "push", "--name", "sd1-split", "--engine", "sdcpp"}
	for _, f := range files {
		push = append(push, "--file", f[1])
	}
	cmd(append(append(push, "s3://"+modelsBucket+"/blobs/sd1-split/"), s3flags...)...)
	garbage := filepath.Join(dir, "garbage.safetensors")
	os.WriteFile(garbage, bytes.Repeat([]byte("garbage!"), 512), 0o644)
	pushRaw(t, fl, "bad-garbage", garbage)
	missing := filepath.Join(dir, "unet-only.safetensors")
	writeTensors(t, missing, 4096)
	pushRaw(t, fl, "bad-no-model", missing)

	// Refused at the API: what the engine would not run as asked.
	for _, tc := range []struct{ body, field string }{
		{`{"model":"sd1","prompt":"a fox <sd_cpp_extra_args>{\"width\":128,\"height\":128}</sd_cpp_extra_args>","width":256,"height":256,"steps":1}`, "prompt"},
		{`{"model":"sd1","prompt":"a fox","width":200,"height":136,"steps":1}`, "width"},
		{`{"model":"sd1","prompt":"a fox","sampling_method":"euler_b","steps":1}`, "sampling_method"},
	} {
		code, body := fl.do("POST", "/v1/jobs", tc.body)
		var apiErr struct{ Field string }
		json.Unmarshal(body, &apiErr)
		if code != http.StatusBadRequest || apiErr.Field != tc.field {
			t.Errorf("%s: %d %s, want 400 naming %s", tc.body, code, body, tc.field)
		}
	}

	for _, mode := range []string{"process", "server"} {
		t.Run(mode, func(t *testing.T) {
			w := fl.startWorkerOn(mode+"host", t.TempDir(), "--backend", "sdcpp", "--sdcpp-mode", mode,
				"--sdcpp-cli", cli, "--sdcpp-server", srv, "--sdcpp-args", "--threads 2")
			defer fl.stopWorkers()
			for i, model := range []string{"sd1", "sd1-split"} {
				id := fl.submit(fmt.Sprintf(`{"model":%q,"prompt":"a lovely cat","seed":%d,"width":64,"height":64,"steps":1,"sampling_method":"dpm++2m_sde","scheduler":"beta"}`, model, i))
				rec := fl.wait(id, 5*time.Minute, nil)
				if rec.Status != job.StatusSucceeded || rec.Attempt != 1 {
					t.Fatalf("%s: %s attempt %d %q", model, rec.Status, rec.Attempt, rec.Error)
				}
				img, err := png.Decode(bytes.NewReader(fl.image(id)))
				if err != nil || img.Bounds().Dx() != 64 || img.Bounds().Dy() != 64 {
					t.Errorf("%s: image %v %v", model, err, img)
				}
				if _, ok := rec.Timings["engine_load"]; !ok {
					t.Errorf("%s: the first generation reported no engine_load: %v", model, rec.Timings)
				}
				t.Logf("%s on %s: generate %.0f ms, engine_load %.0f ms", model, mode, rec.Timings["generate"], rec.Timings["engine_load"])
			}
			if mode == "server" {
				// The server keeps the model: no load the second time.
				id := fl.submit(`{"model":"sd1-split","prompt":"another cat","seed":9,"width":64,"height":64,"steps":1}`)
				if rec := fl.wait(id, 5*time.Minute, nil); rec.Status != job.StatusSucceeded || rec.Timings["engine_load"] != 0 {
					t.Errorf("second job: %s %q, timings %v", rec.Status, rec.Error, rec.Timings)
				}
			}
			for _, bad := range []struct{ model, says string }{
				{"bad-garbage", "refused the model"},
				{"bad-no-model", "get sd version from file failed"},
			} {
				id := fl.submit(fmt.Sprintf(`{"model":%q,"prompt":"a cat","width":64,"height":64,"steps":1}`, bad.model))
				rec := fl.wait(id, 2*time.Minute, nil)
				if rec.Status != job.StatusFailed || rec.Attempt != 1 || !strings.Contains(rec.Error, bad.says) {
					t.Errorf("%s: %s attempt %d %q; want failed at attempt 1 saying %q", bad.model, rec.Status, rec.Attempt, rec.Error, bad.says)
				}
			}
			// A producer that skips the API: the worker refuses the markup.
			cl := asynq.NewClient(asynq.RedisClientOpt{Addr: fl.redis.Addr})
			defer cl.Close()
			id := "markup-" + mode
			task, opts, err := job.NewTask(id, job.Request{Model: "sd1", Prompt: `a fox <sd_cpp_extra_args>{"width":128,"height":128}</sd_cpp_extra_args>`,
				Width: 256, Height: 256, Steps: 1, Guidance: 7}, "sdcpp")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cl.EnqueueContext(context.Background(), task, opts...); err != nil {
				t.Fatal(err)
			}
			if rec := fl.wait(id, 2*time.Minute, nil); rec.Status != job.StatusFailed || rec.Attempt != 1 || !strings.Contains(rec.Error, "prompt: contains <sd_cpp_extra_args>") {
				t.Errorf("markup enqueued into Redis: %s attempt %d %q", rec.Status, rec.Attempt, rec.Error)
			}
			if mode == "server" {
				// sd-server killed under a job: retried on a fresh server.
				id := fl.submit(`{"model":"sd1","prompt":"a killed cat","seed":3,"width":64,"height":64,"steps":2}`)
				fl.wait(id, time.Minute, func(r job.Record) bool { return r.Status == job.StatusRunning })
				pid := childNamed(t, w.Process.Pid, filepath.Base(srv), time.Minute)
				time.Sleep(2 * time.Second)
				syscall.Kill(pid, syscall.SIGKILL)
				rec := fl.wait(id, 5*time.Minute, nil)
				if rec.Status != job.StatusSucceeded || rec.Attempt != 2 {
					t.Errorf("job whose server was killed: %s attempt %d %q", rec.Status, rec.Attempt, rec.Error)
				}
			}
		})
	}
}

// pushRaw pushes one file as an sdcpp model with role model, unchecked
// (the CLI would refuse a file that is not a model).
func pushRaw(t *testing.T, fl *fleet, name, path string) {
	t.Helper()
	if _, err := fl.reg.PushModel(t.Context(), name, "sdcpp", []modelcache.PushFile{{Path: path, Role: "model", Dest: s3x.URL{Bucket: modelsBucket, Key: "blobs/" + name + "/"}}}, nil); err != nil {
		t.Fatal(err)
	}
}

// childNamed waits for a child process of parent whose command name is
// name and returns its pid.
func childNamed(t *testing.T, parent int, name string, timeout time.Duration) int {
	t.Helper()
	if len(name) > 15 {
		name = name[:15] // the kernel's comm
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		procs, _ := filepath.Glob("/proc/[0-9]*/stat")
		for _, p := range procs {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			s := string(b)
			open, shut := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
			if open < 0 || shut < open || s[open+1:shut] != name {
				continue
			}
			f := strings.Fields(s[shut+1:])
			if len(f) > 1 && f[1] == strconv.Itoa(parent) {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
				return pid
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no %s process under pid %d after %v", name, parent, timeout)
	return 0
}
