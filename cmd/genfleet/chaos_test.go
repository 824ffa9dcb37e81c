package main

import (
	"syscall"
	"testing"
	"time"

	"github.com/genfleet/genfleet/job"
)

// A job whose worker is SIGKILLed mid-run is run again by another worker
// about 30s (asynq's lease) + --lease-grace (5s) + up to --recover-interval
// (5s) + the retry backoff later. Stock asynq's fixed 30s grace and
// one-minute interval could not do it in under 60s.
func TestKilledJobRecoveredQuickly(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end, ~40s")
	}
	fl := newFleet(t, 16<<20, "cpu")
	victim := fl.startWorkerOn("h1", t.TempDir())
	id := fl.submit(`{"model":"demo","prompt":"a slow fox","seed":1,"width":256,"height":256,"steps":60}`)
	rec := fl.wait(id, 60*time.Second, func(r job.Record) bool { return r.Progress != nil && r.Progress.Step > 0 })
	if rec.Status != job.StatusRunning {
		t.Fatalf("job %s before the kill: %s %q", id, rec.Status, rec.Error)
	}
	if err := victim.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = victim.Wait()
	fl.startWorkerOn("h2", t.TempDir())
	rec = fl.wait(id, 120*time.Second, nil)
	if rec.Status != job.StatusSucceeded || rec.Attempt != 2 || rec.Worker == nil || rec.Worker.Host != "h2" {
		t.Fatalf("job %s: %s attempt %d by %+v %q", id, rec.Status, rec.Attempt, rec.Worker, rec.Error)
	}
	// 30s lease + 5s grace + ≤5s interval + ≤2.5s backoff, and slack.
	if d := rec.StartedAt.Sub(killed); d > 55*time.Second {
		t.Errorf("the killed job started again %v after the kill; want under 55s", d.Round(time.Second))
	} else {
		t.Logf("the killed job started again %v after the kill", d.Round(time.Second))
	}
	fl.stopWorkers()
}
