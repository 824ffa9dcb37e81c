package scheduler

import (
	"strings"
	"testing"

	"github.com/genfleet/genfleet/job"
)

func host(name string, conc, inflight, backlog int, blobs ...job.BlobState) HostView {
	return HostView{Host: name, DeviceClass: "cpu", Processes: 1, Concurrency: conc, InFlight: inflight, Backlog: backlog, Blobs: blobs}
}

func blob(d string, res float64) job.BlobState {
	return job.BlobState{Digest: d, Size: 100, Resident: res}
}

func TestRoute(t *testing.T) {
	on := Policy{Enabled: true}
	tests := []struct {
		name      string
		policy    Policy
		class     string
		digests   []string
		hosts     []HostView
		wantQueue string
		wantWhy   string
	}{
		{"routing off", Policy{}, "cpu", []string{"a"}, []HostView{host("h1", 1, 0, 0, blob("a", 1))}, "pool:cpu", "routing off"},
		{"warm host", on, "cpu", []string{"a"}, []HostView{host("h1", 1, 0, 0, blob("b", 1)), host("h2", 1, 0, 0, blob("a", 1))}, "host:h2", "warm on h2"},
		{"no host has it", on, "cpu", []string{"a"}, []HostView{host("h1", 1, 0, 0, blob("b", 1))}, "pool:cpu", "no host holds"},
		{"on disk but cold", on, "cpu", []string{"a"}, []HostView{host("h1", 1, 0, 0, blob("a", 0.1))}, "pool:cpu", "no host holds"},
		{"least loaded warm host", on, "cpu", []string{"a"}, []HostView{
			host("h1", 1, 1, 1, blob("a", 1)), host("h2", 2, 1, 0, blob("a", 1)), host("h3", 1, 0, 1, blob("a", 1)),
		}, "host:h2", "warm on h2"},
		{"warm host over cap falls back to pool", Policy{Enabled: true, BacklogCap: 3}, "cpu", []string{"a"}, []HostView{host("h1", 1, 1, 3, blob("a", 1))}, "pool:cpu", "over their backlog cap"},
		{"default cap is 2 per slot", on, "cpu", []string{"a"}, []HostView{host("h1", 2, 2, 4, blob("a", 1)), host("h2", 2, 2, 3, blob("a", 1))}, "host:h2", "warm on h2"},
		{"multi-file model needs every file", on, "cpu", []string{"a", "b"}, []HostView{host("h1", 1, 0, 0, blob("a", 1)), host("h2", 1, 0, 0, blob("a", 1), blob("b", 0.9))}, "host:h2", "90% resident"},
		{"other device class ignored", on, "cuda", []string{"a"}, []HostView{host("h1", 1, 0, 0, blob("a", 1))}, "pool:cuda", "no host holds"},
		{"unknown digest", on, "cpu", nil, []HostView{host("h1", 1, 0, 0, blob("a", 1))}, "pool:cpu", "digest unknown"},
		{"tie broken by residency", on, "cpu", []string{"a"}, []HostView{host("h1", 1, 0, 0, blob("a", 0.6)), host("h2", 1, 0, 0, blob("a", 0.95))}, "host:h2", "warm on h2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Route(tt.policy, tt.class, tt.digests, tt.hosts)
			if r.Queue != tt.wantQueue {
				t.Fatalf("queue %q, want %q (%s)", r.Queue, tt.wantQueue, r.Reason)
			}
			if !strings.Contains(r.Reason, tt.wantWhy) {
				t.Fatalf("reason %q lacks %q", r.Reason, tt.wantWhy)
			}
		})
	}
}

// A job with LoRAs goes to a warm host that holds its LoRAs too, even a
// busier one; without such a host, to the least loaded warm one.
func TestRouteWithLoRAs(t *testing.T) {
	on := Policy{Enabled: true}
	both := []HostView{
		host("h1", 1, 0, 0, blob("m", 1)),
		host("h2", 1, 1, 1, blob("m", 1), blob("l", 0)),
	}
	r := RouteWithLoRAs(on, "cpu", []string{"m"}, []string{"l"}, both)
	if r.Queue != "host:h2" || !strings.Contains(r.Reason, "its 1 LoRA(s) on disk") {
		t.Fatalf("with the LoRA on h2: %+v", r)
	}
	r = RouteWithLoRAs(on, "cpu", []string{"m"}, []string{"l", "x"}, both)
	if r.Queue != "host:h1" || !strings.Contains(r.Reason, "no warm host holds its LoRAs") {
		t.Fatalf("with a LoRA nowhere: %+v", r)
	}
	// The LoRA alone does not make a host warm for the model.
	r = RouteWithLoRAs(on, "cpu", []string{"m"}, []string{"l"}, []HostView{host("h3", 1, 0, 0, blob("l", 1))})
	if r.Queue != "pool:cpu" {
		t.Fatalf("LoRA without the model: %+v", r)
	}
	if r := Route(on, "cpu", []string{"m"}, both); r.Queue != "host:h1" {
		t.Fatalf("without LoRAs: %+v", r)
	}
}

func TestMergeHeartbeats(t *testing.T) {
	hbs := []job.Heartbeat{
		{Host: "h2", PID: 1, DeviceClass: "cpu", Concurrency: 1, InFlight: 1, Blobs: []job.BlobState{blob("a", 1)}},
		{Host: "h1", PID: 2, DeviceClass: "cpu", Concurrency: 2},
		{Host: "h2", PID: 3, DeviceClass: "cpu", Concurrency: 1, InFlight: 0, Blobs: []job.BlobState{blob("a", 1)}},
	}
	got := MergeHeartbeats(hbs)
	if len(got) != 2 || got[0].Host != "h1" || got[1].Host != "h2" {
		t.Fatalf("hosts %+v", got)
	}
	if h := got[1]; h.Processes != 2 || h.Concurrency != 2 || h.InFlight != 1 || len(h.Blobs) != 1 {
		t.Fatalf("h2 merged as %+v", h)
	}
}
