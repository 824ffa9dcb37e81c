package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/scheduler"
)

func routingOn(c *scheduler.Config) {
	c.Pool = "cpu"
	c.Routing = scheduler.Policy{Enabled: true, BacklogCap: 1}
	c.HostTimeout = 1500 * time.Millisecond
}

// waitWarm waits until the fleet view shows model blob digest warm on host.
func (fl *fleet) waitWarm(host, digest string) {
	fl.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		code, b := fl.do("GET", "/v1/workers", "")
		if code != http.StatusOK {
			fl.t.Fatalf("GET /v1/workers = %d %s", code, b)
		}
		var v struct{ Hosts []scheduler.HostView }
		if err := json.Unmarshal(b, &v); err != nil {
			fl.t.Fatal(err)
		}
		for _, h := range v.Hosts {
			for _, bl := range h.Blobs {
				if h.Host == host && bl.Digest == digest && bl.Resident >= 0.5 {
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	fl.t.Fatalf("model %s never showed warm on %s", digest, host)
}

// warmUp runs one job through the pool and returns the host that ran it and
// the model's digest.
func (fl *fleet) warmUp() (string, string) {
	fl.t.Helper()
	id := fl.submit(jobBody(100))
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded {
		fl.t.Fatalf("warm-up job: %s %s", rec.Status, rec.Error)
	}
	if rec.Route == nil || rec.Route.Queue != "pool:cpu" {
		fl.t.Fatalf("cold model routed to %+v, want the pool", rec.Route)
	}
	fl.waitWarm(rec.Worker.Host, rec.Result.ModelDigest)
	return rec.Worker.Host, rec.Result.ModelDigest
}

// A job goes to the host where its model is warm; when that host's queue is
// over the cap, it goes to the pool.
func TestRoutingToWarmHostAndFallback(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleetWith(t, 2<<20, routingOn)
	fl.startWorkerOn("h1", t.TempDir())
	fl.startWorkerOn("h2", t.TempDir())
	warm, _ := fl.warmUp()

	id := fl.submit(jobBody(101))
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded || rec.Route.Host != warm || rec.Queue != "host:"+warm || rec.Worker.Host != warm {
		t.Fatalf("warm job: status %s route %+v ran on %s; want routed to and run on %s", rec.Status, rec.Route, rec.Worker.Host, warm)
	}
	if !strings.Contains(rec.Route.Reason, "warm on "+warm) {
		t.Fatalf("route reason %q", rec.Route.Reason)
	}

	// Fill the warm host: one long job running, one waiting (cap is 1).
	long := `{"model":"demo","prompt":"keep busy","seed":%d,"width":64,"height":64,"steps":200}`
	busy := fl.submit(fmt.Sprintf(long, 1))
	fl.wait(busy, 30*time.Second, func(r job.Record) bool { return r.Status == job.StatusRunning })
	queued := fl.submit(fmt.Sprintf(long, 2))
	if r := fl.get(queued); r.Route.Host != warm {
		t.Fatalf("second long job routed %+v, want %s (backlog 0 < cap 1)", r.Route, warm)
	}
	over := fl.submit(jobBody(102))
	r := fl.get(over)
	if r.Route.Queue != "pool:cpu" || !strings.Contains(r.Route.Reason, "backlog cap") {
		t.Fatalf("job for a full warm host routed %+v, want the pool because of the cap", r.Route)
	}
	for _, id := range []string{busy, queued, over} {
		if rec := fl.wait(id, 120*time.Second, nil); rec.Status != job.StatusSucceeded {
			t.Fatalf("job %s: %s %s", id, rec.Status, rec.Error)
		}
	}
	code, b := fl.do("GET", "/metrics", "")
	if code != 200 || !strings.Contains(string(b), `genfleet_scheduler_routing_decisions_total{decision="host",reason="warm"}`) ||
		!strings.Contains(string(b), `genfleet_queue_jobs{queue="pool:cpu",state="pending"}`) {
		t.Fatalf("/metrics lacks routing or queue metrics")
	}
}

// A host killed with jobs pending in its host queue: every job completes
// on another host, exactly once.
func TestDeadHostJobsMoveToPool(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleetWith(t, 2<<20, func(c *scheduler.Config) {
		routingOn(c)
		c.Routing.BacklogCap = 100
	})
	h1 := fl.startWorkerOn("h1", t.TempDir())
	h2 := fl.startWorkerOn("h2", t.TempDir())
	warm, _ := fl.warmUp()
	victim, survivor := h1, "h2"
	if warm == "h2" {
		victim, survivor = h2, "h1"
	}
	// Kill the warm host; its heartbeat is still fresh, so the next jobs are
	// routed to its queue and sit there.
	if err := victim.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.Wait()
	var ids []string
	for i := range 6 {
		id := fl.submit(jobBody(200 + i))
		if r := fl.get(id); r.Route.Host != warm {
			t.Fatalf("job %d routed %+v; the test needs it on the dead host's queue", i, r.Route)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		rec := fl.wait(id, 60*time.Second, nil)
		if rec.Status != job.StatusSucceeded || rec.Worker.Host != survivor {
			t.Fatalf("job %s: %s on %v (%s); want succeeded on %s", id, rec.Status, rec.Worker, rec.Error, survivor)
		}
		if !strings.Contains(rec.Route.Reason, "stopped heartbeating") {
			t.Fatalf("route reason %q does not say the job was moved", rec.Route.Reason)
		}
	}
	keys, err := fl.reg.Src.List(context.Background(), outputsBucket, "outputs/")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(ids)+1 {
		t.Fatalf("%d output objects, want %d (one per job)", len(keys), len(ids)+1)
	}
}
