package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/sse"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// `genfleet dev` runs the whole fleet with no outside services (embedded
// Redis and S3, a seeded demo model, the scheduler and two worker
// processes), as the README promises: a job submitted to it succeeds and
// its image can be fetched, and Ctrl-C stops everything.
func TestDevRunsTheWholeFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	d := startDev(t, "--demo-size", "4MiB")
	url := d.api

	resp, err := http.Post(url+"/v1/jobs", "application/json",
		bytes.NewReader([]byte(`{"model":"demo","prompt":"a red fox","seed":7,"width":64,"height":64,"steps":2}`)))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %s, %v", resp.Status, err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url + "/v1/jobs/" + sub.ID)
		if err != nil {
			t.Fatal(err)
		}
		var rec job.Record
		err = json.NewDecoder(resp.Body).Decode(&rec)
		resp.Body.Close()
		if err == nil && rec.Status == job.StatusSucceeded {
			break
		}
		if err == nil && rec.Status.Terminal() {
			t.Fatalf("job %s: %s %q", sub.ID, rec.Status, rec.Error)
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not done after 60 s: %+v %v", sub.ID, rec, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err = http.Get(url + "/v1/jobs/" + sub.ID + "/image")
	if err != nil {
		t.Fatal(err)
	}
	img, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(img, []byte("\x89PNG")) {
		t.Fatalf("image: %s, %d bytes", resp.Status, len(img))
	}

	// The job's events, on the embedded Redis too: every kind a job of the
	// built-in engine has, in order.
	resp, err = http.Get(url + "/v1/jobs/" + sub.ID + "/events")
	if err != nil {
		t.Fatal(err)
	}
	r := sse.NewReader(resp.Body)
	var kinds []string
	for {
		ev, err := r.Next()
		if err != nil {
			break
		}
		kinds = append(kinds, ev.Type)
	}
	resp.Body.Close()
	if got := strings.Join(kinds, " "); !strings.HasPrefix(got, "started model progress") || !strings.HasSuffix(got, "completed") {
		t.Fatalf("events on the embedded Redis: %q", got)
	}

	// The banner names the web page next to the API, and the page lists
	// the job.
	if !strings.Contains(d.banner.String(), "web page "+url+"/ui/") {
		t.Fatalf("banner does not name the web page %s/ui/:\n%s", url, d.banner.String())
	}
	resp, err = http.Get(url + "/ui/jobs")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "/ui/jobs/"+sub.ID) {
		t.Fatalf("GET /ui/jobs: %s, job %s not listed", resp.Status, sub.ID)
	}

	// Ctrl-C stops the fleet, workers included.
	d.stop()
}

// devFleet is a running `genfleet dev` child process.
type devFleet struct {
	t      *testing.T
	cmd    *exec.Cmd
	api    string          // the API's base URL, from the banner
	banner *testenv.Buffer // stdout
	exited chan error
}

// startDev starts `genfleet dev --listen 127.0.0.1:0 args...` and waits
// until its banner is printed.
func startDev(t *testing.T, args ...string) *devFleet {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, append([]string{"dev", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	d := &devFleet{t: t, cmd: cmd, banner: &testenv.Buffer{}, exited: make(chan error, 1)}
	cmd.Stdout = d.banner
	var logs testenv.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("genfleet dev banner:\n%s\nlog:\n%s", d.banner.String(), logs.String())
		}
	})
	// The banner names the API address; it is printed once all is ready.
	re := regexp.MustCompile(`API (http://127\.0\.0\.1:\d+)`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m := re.FindStringSubmatch(d.banner.String()); m != nil && strings.Contains(d.banner.String(), "Ctrl-C stops everything.") {
			d.api = m[1]
			return d
		}
		select {
		case err := <-d.exited:
			t.Fatalf("genfleet dev exited before it was ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("genfleet dev printed no API address in 60 s")
		}
	}
}

// stop sends SIGINT (Ctrl-C) and waits for dev to exit.
func (d *devFleet) stop() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.t.Fatal("genfleet dev still running 30 s after SIGINT")
	}
}

// From a second shell, the settings `genfleet dev` prints (and writes with
// --env-file) are all that `genfleet models ls` and `genfleet submit` need:
// the shell has no other GENFLEET_* or AWS settings. The file is the
// owner's only and goes away with dev.
func TestDevEnvForASecondShell(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	envFile := filepath.Join(t.TempDir(), "dev.env")
	d := startDev(t, "--demo-size", "1MiB", "--workers", "1", "--env-file", envFile)
	st, err := os.Stat(envFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", envFile, st.Mode().Perm())
	}
	file, _ := os.ReadFile(envFile)
	// The banner prints the same export lines.
	for _, l := range strings.Split(strings.TrimSpace(string(file)), "\n") {
		if strings.HasPrefix(l, "export ") && !strings.Contains(d.banner.String(), "  "+l+"\n") {
			t.Errorf("banner lacks %q:\n%s", l, d.banner.String())
		}
	}
	for _, name := range []string{"GENFLEET_REDIS", "GENFLEET_S3_ENDPOINT", "GENFLEET_S3_ACCESS_KEY", "GENFLEET_S3_SECRET_KEY", "GENFLEET_REGISTRY", "GENFLEET_OUTPUTS", "GENFLEET_API=" + d.api} {
		if !strings.Contains(string(file), "export "+name) {
			t.Errorf("env file lacks export %s:\n%s", name, file)
		}
	}

	// A second shell: nothing but PATH, a fresh HOME, and the env file.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shell := func(args ...string) (string, error) {
		cmd := exec.Command("sh", append([]string{"-c", `. "$0" && exec "$@"`, envFile, self}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), childEnv + "=1", "AWS_EC2_METADATA_DISABLED=true"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := shell("models", "ls")
	if err != nil || !hasRow(out, "demo", "refgen") {
		t.Fatalf("models ls in a second shell: %v\n%s", err, out)
	}
	png := filepath.Join(t.TempDir(), "fox.png")
	out, err = shell("submit", "--model", "demo", "--prompt", "a red fox", "--width", "64", "--height", "64", "--steps", "2", "-o", png, "--timeout", "60s")
	if err != nil {
		t.Fatalf("submit in a second shell: %v\n%s", err, out)
	}
	if img, err := os.ReadFile(png); err != nil || !bytes.HasPrefix(img, []byte("\x89PNG")) {
		t.Fatalf("submit wrote no PNG: %v", err)
	}

	d.stop()
	if _, err := os.Stat(envFile); !os.IsNotExist(err) {
		t.Errorf("env file still there after dev stopped: %v", err)
	}
}
