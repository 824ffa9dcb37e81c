package main

// Fault tests: Redis goes away mid-run and comes back.

import (
	"bytes"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// rawDo sends a request to the API and returns the whole response (body
// read and closed).
func (fl *fleet) rawDo(method, path, body string, hdr ...string) (*http.Response, []byte) {
	fl.t.Helper()
	req, err := http.NewRequest(method, fl.api.URL+path, strings.NewReader(body))
	if err != nil {
		fl.t.Fatal(err)
	}
	if fl.token != "" {
		req.Header.Set("Authorization", "Bearer "+fl.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fl.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// Redis dies (SIGKILL) while jobs are queued and running, and comes back
// on the same port with its AOF a few seconds later. Meanwhile the API
// answers 503 with Retry-After; afterwards every job submitted before the
// outage succeeds with a valid PNG, and the same worker processes (they
// reconnect, nobody restarts them) run a job submitted after it.
func TestRedisOutageLosesNoJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	rd := testenv.RedisAOF(t)
	fl := newFleetOnRedis(t, rd, 1<<20, nil)
	fl.startWorker()
	fl.startWorker()
	time.Sleep(500 * time.Millisecond)

	var ids []string
	for i := range 12 {
		ids = append(ids, fl.submit(fmt.Sprintf(`{"model":"demo","prompt":"outage","seed":%d,"width":64,"height":64,"steps":150}`, i)))
	}
	// Let the first jobs start, then pull the plug.
	fl.wait(ids[0], 30*time.Second, func(r job.Record) bool { return r.Status == job.StatusRunning })
	rd.Stop()
	outage := time.Now()

	resp, b := fl.rawDo("POST", "/v1/jobs", jobBody(99))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("POST during the outage: %d Retry-After %q %s; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	resp, b = fl.rawDo("GET", "/v1/jobs/"+ids[0], "")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("GET during the outage: %d Retry-After %q %s; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if resp, _ := fl.rawDo("GET", "/readyz", ""); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz during the outage: %d, want 503", resp.StatusCode)
	}
	if resp, _ := fl.rawDo("GET", "/healthz", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz during the outage: %d, want 200 (the process is alive)", resp.StatusCode)
	}
	time.Sleep(10*time.Second - time.Since(outage)) // a 10 s outage
	if err := rd.Restart(); err != nil {
		t.Fatalf("restart redis: %v", err)
	}
	t.Logf("redis down for %v", time.Since(outage).Round(time.Millisecond))
	// go-redis re-dials a refused address about once a second, so the API
	// may answer 503 a moment longer: what Retry-After is for.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, _ := fl.rawDo("GET", "/readyz", ""); resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("API not ready 15s after Redis came back")
		}
	}
	t.Logf("API ready %v after the outage began", time.Since(outage).Round(time.Millisecond))

	attempts := map[int]int{}
	for _, id := range ids {
		rec := fl.wait(id, 120*time.Second, nil)
		if rec.Status != job.StatusSucceeded {
			t.Fatalf("job %s: %s %q (attempt %d)", id, rec.Status, rec.Error, rec.Attempt)
		}
		attempts[rec.Attempt]++
		if _, err := png.Decode(bytes.NewReader(fl.image(id))); err != nil {
			t.Fatalf("job %s: output is not a PNG: %v", id, err)
		}
	}
	lostWrites := 0
	for _, w := range fl.workers {
		lostWrites += strings.Count(w.Stdout.(*testenv.Buffer).String(), `msg="write job record"`)
	}
	t.Logf("all %d jobs succeeded %v after the outage began; attempts %v; record writes that failed during the outage: %d",
		len(ids), time.Since(outage).Round(time.Millisecond), attempts, lostWrites)
	after := fl.submit(`{"model":"demo","prompt":"after the outage","seed":1,"width":64,"height":64,"steps":2}`)
	if rec := fl.wait(after, 60*time.Second, nil); rec.Status != job.StatusSucceeded {
		t.Fatalf("job submitted after the outage: %s %q", rec.Status, rec.Error)
	}
	for i, w := range fl.workers {
		if w.ProcessState != nil {
			t.Fatalf("worker %d exited during the outage: %v", i, w.ProcessState)
		}
	}
	fl.stopWorkers()
}
