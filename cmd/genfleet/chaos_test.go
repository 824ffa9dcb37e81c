package main

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

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

// A job whose worker is SIGKILLed on its last attempt ends failed: the
// recoverer of another worker process archives it, and that process
// writes the failed record, the completed event and the webhook delivery
// the dead worker never wrote. Before, the stored record said running
// until it expired and the webhook never came (GET answered failed from
// the archived task alone).
func TestJobFailsWhenItsWorkerDiesOnTheLastAttempt(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end, ~40s")
	}
	fl, sink := newWebhookFleet(t, 16<<20)
	victim := fl.startWorkerOn("h1", t.TempDir())
	req := job.Request{Model: "demo", Prompt: "a slow fox", Seed: 1, Width: 256, Height: 256, Steps: 60,
		Webhook: &job.Webhook{URL: sink.srv.URL + "/hook"}}
	task, opts, err := job.NewTask("last-attempt-1", req, "cpu", asynq.MaxRetry(0))
	if err != nil {
		t.Fatal(err)
	}
	producer := asynq.NewClient(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer producer.Close()
	if _, err := producer.Enqueue(task, opts...); err != nil {
		t.Fatal(err)
	}
	id := "last-attempt-1"
	rec := fl.wait(id, 60*time.Second, func(r job.Record) bool { return r.Progress != nil && r.Progress.Step > 0 })
	if rec.Status != job.StatusRunning {
		t.Fatalf("job %s before the kill: %s %q", id, rec.Status, rec.Error)
	}
	if err := victim.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.Wait()
	fl.startWorkerOn("h2", t.TempDir())

	rdb := redis.NewClient(&redis.Options{Addr: fl.redis.Addr})
	defer rdb.Close()
	store := job.NewStore(rdb)
	deadline := time.Now().Add(90 * time.Second)
	var stored *job.Record
	for {
		if stored, err = store.Get(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		if stored.Status.Terminal() || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if stored.Status != job.StatusFailed || !strings.Contains(stored.Error, "died") || !strings.Contains(stored.Error, "host h1") {
		t.Fatalf("stored record: %s %q; want failed, naming the dead worker", stored.Status, stored.Error)
	}
	t.Logf("stored record: %s %q", stored.Status, stored.Error)
	ev, err := store.LastEvent(context.Background(), id)
	if err != nil || ev == nil || ev.Type != job.EventCompleted {
		t.Fatalf("last event %+v, %v; want completed", ev, err)
	}
	for {
		if got := sink.payloads(t); len(got) > 0 {
			if len(got) != 1 || got[0].Event != job.EventCompleted || got[0].Job == nil || got[0].Job.Status != job.StatusFailed {
				t.Fatalf("webhook POSTs %+v; want one completed, failed", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no webhook POST for the job")
		}
		time.Sleep(50 * time.Millisecond)
	}
	fl.stopWorkers()
}
