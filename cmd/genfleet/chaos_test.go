package main

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// Three worker processes of one host; two of them are SIGKILLed while they
// run a job and restarted with the same host id. Every job still ends
// succeeded, once, with exactly the PNG the cpu backend makes of its
// request in this process. The killed jobs come back only through asynq's
// lease recovery (lease 30s, recovered 5s after it expired, checked every
// 5s by each worker process), so this test takes about 45s.
// `genfleet bench chaos` is the long version.
func TestChaosKilledWorkersLoseNoJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end, ~45s")
	}
	rd := testenv.Redis(t)
	s3srv := testenv.S3Server(t, chaosModels, chaosOutputs)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := runChaos(ctx, asynq.RedisClientOpt{Addr: rd.Addr}, s3srv.Client, s3srv.Config, chaosConfig{
		Jobs: 30, Workers: 3, Steps: 20, ModelSize: 1 << 20,
		KillEvery: time.Second, MaxKills: 2, Deadline: 150 * time.Second,
		Dir: t.TempDir(), ChildEnv: []string{childEnv + "=1"}, Stderr: testLog{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res.asMap())
	if res.Kills != 2 || res.KillsMidJob == 0 {
		t.Fatalf("kills %d (mid-job %d); want 2, at least one while a job ran", res.Kills, res.KillsMidJob)
	}
	if res.Succeeded != res.Jobs || res.Lost != 0 || res.Failed != 0 || res.Corrupt != 0 {
		t.Fatalf("succeeded %d of %d, lost %d, failed %d (%v), corrupt %d: %v",
			res.Succeeded, res.Jobs, res.Lost, res.Failed, res.FailureReasons, res.Corrupt, res.Problems)
	}
	if res.SucceededTwice != 0 || res.DuplicatedOutputs != 0 {
		t.Fatalf("succeeded twice %d, duplicated outputs %d: %v", res.SucceededTwice, res.DuplicatedOutputs, res.Problems)
	}
}

// testLog writes a test's progress lines to t.Log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

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
