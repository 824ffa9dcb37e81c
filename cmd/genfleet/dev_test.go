package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

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
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "dev", "--listen", "127.0.0.1:0", "--demo-size", "4MiB")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("genfleet dev log:\n%s", logs.String())
		}
	}()

	// The banner names the API address.
	api := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		re := regexp.MustCompile(`API (http://127\.0\.0\.1:\d+)`)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				api <- m[1]
			}
		}
	}()
	var url string
	select {
	case url = <-api:
	case err := <-exited:
		t.Fatalf("genfleet dev exited before it was ready: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("genfleet dev printed no API address in 60 s")
	}

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

	// Ctrl-C stops the fleet, workers included.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("genfleet dev still running 30 s after SIGINT")
	}
}
