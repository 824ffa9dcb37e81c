package ui

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/job"
)

func TestSplitQueue(t *testing.T) {
	for _, tt := range []struct{ name, kind, subject, prio string }{
		{"pool:cpu", "pool", "cpu", ""},
		{"pool:cpu:high", "pool", "cpu", "high"},
		{"pool:sdcpp:p7", "pool", "sdcpp", "p7"},
		{"host:gpu-07", "host", "gpu-07", ""},
		{"host:gpu-07:low", "host", "gpu-07", "low"},
		{"host:a:b", "host", "a:b", ""},
		{"default", "", "default", ""},
	} {
		k, s, p := splitQueue(tt.name)
		if k != tt.kind || s != tt.subject || p != tt.prio {
			t.Errorf("splitQueue(%q) = %q %q %q, want %q %q %q", tt.name, k, s, p, tt.kind, tt.subject, tt.prio)
		}
	}
}

// Queues group by device class (a host queue by its host's class, also
// a gone host's) and priority; the history sums per group.
func TestQueueGroups(t *testing.T) {
	q := &queuesJSON{Queues: []queueJSON{
		{Name: "pool:cpu", Pending: 3, Active: 1},
		{Name: "host:h1", Pending: 2},
		{Name: "host:h2:high", Active: 2},
		{Name: "pool:cpu:high", Pending: 1, Retry: 1},
		{Name: "pool:cuda", Pending: 5},
		{Name: "host:ghost", Pending: 1},
	}}
	t0 := time.Now()
	for i := range 3 {
		q.History = append(q.History, struct {
			At     time.Time         `json:"at"`
			Queues map[string][3]int `json:"queues"`
		}{At: t0.Add(time.Duration(i) * 10 * time.Second), Queues: map[string][3]int{"pool:cpu": {i, 1, 0}, "host:h1": {1, 0, 0}}})
	}
	w := &workersJSON{Hosts: []hostJSON{{Host: "h1", DeviceClass: "cpu"}}, Gone: []hostJSON{{Host: "h2", DeviceClass: "cpu"}}}
	var got []string
	for _, g := range queueGroups(q, w) {
		got = append(got, fmt.Sprintf("%s/%s p%d a%d r%d q%d now%d max%d", g.Class, g.Priority, g.Pending, g.Active, g.Retry, len(g.Queues), g.Spark.Now, g.Spark.Max))
	}
	want := "[cpu/high p1 a2 r1 q2 now0 max0 cpu/default p5 a1 r0 q2 now4 max4 cuda/default p5 a0 r0 q1 now0 max0 unknown class/default p1 a0 r0 q1 now0 max0]"
	if fmt.Sprint(got) != want {
		t.Fatalf("groups\n got %v\nwant %s", got, want)
	}
}

// The waterfall lays phases end to end in pipeline order, leaves out
// empty ones, ends with the worker's unaccounted time, and keeps phases
// it does not know.
func TestWaterfall(t *testing.T) {
	bars, total := waterfall(map[string]float64{
		"queue_wait": 100, "resolve": 10, "wait": 0, "fetch": 200, "verify": 40, "map": 1, "acquire": 251,
		"generate": 400, "encode": 50, "upload": 20, "gpu_upload": 30, "total": 800,
	})
	var got []string
	for _, b := range bars {
		got = append(got, fmt.Sprintf("%s@%.1f+%.1f", b.Phase, b.Start, b.Len))
	}
	// Worker phases sum to 751 of its 800 ms: "other" is 49 ms.
	want := "[queue_wait@0.0+11.1 resolve@11.1+1.1 fetch@12.2+22.2 verify@34.4+4.4 map@38.9+0.3 generate@39.0+44.4 encode@83.4+5.6 upload@89.0+2.2 gpu_upload@91.2+3.3 other@94.6+5.4]"
	if fmt.Sprint(got) != want {
		t.Fatalf("bars\n got %v\nwant %s", got, want)
	}
	if total != "900 ms" {
		t.Fatalf("total %q", total)
	}
	// engine_load is part of generate: said there, not a bar of its own.
	bars, _ = waterfall(map[string]float64{"generate": 900, "engine_load": 200, "total": 900})
	if len(bars) != 1 || !strings.Contains(bars[0].Note, "of which 200 ms the engine loading") {
		t.Fatalf("with engine_load: %+v", bars)
	}
	if bars, _ := waterfall(nil); bars != nil {
		t.Fatalf("no timings gave %v", bars)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/ui/jobs?status=failed": "/ui/jobs?status=failed",
		"https://evil.example/":  "/ui/",
		"//evil.example/ui/":     "/ui/",
		"/ui/\\evil":             "/ui/",
		"/v1/jobs":               "/ui/",
		"":                       "/ui/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

// A host's card names its models from the registry, says which are on
// the GPU, and marks a host whose heartbeat is late.
func TestHostCards(t *testing.T) {
	now := time.Now()
	w := &workersJSON{
		Hosts: []hostJSON{{Host: "g1", DeviceClass: "cuda", Processes: 1, Concurrency: 2, InFlight: 1, CacheUsed: 3 << 30, CacheBudget: 4 << 30,
			Blobs: []job.BlobState{{Digest: "sha256:aaaaaaaaaaaaaaaaaaaa", Size: 2 << 30, Resident: 0.97, LastUsed: now.Add(-time.Minute)}, {Digest: "sha256:bbbbbbbbbbbbbbbbbbbb", Size: 1 << 30}}}},
		Workers: []job.Heartbeat{{Host: "g1", PID: 7, Backend: "cuda", Device: "NVIDIA H100", At: now.Add(-8 * time.Second),
			Models: []job.ModelState{{Ref: "sdxl", Digests: []string{"sha256:aaaaaaaaaaaaaaaaaaaa"}, OnDevice: true}}}},
	}
	cards := hostCards(w, nil, now)
	if len(cards) != 1 {
		t.Fatal(cards)
	}
	c := cards[0]
	if !c.Late || c.Gone || strings.Join(c.Devices, ",") != "NVIDIA H100" || c.CachePercent != 75 {
		t.Fatalf("card %+v", c)
	}
	if c.Models[0].Name != "sdxl" || !c.Models[0].OnDevice || c.Models[0].Resident != 97 || c.Models[1].OnDevice || c.Models[1].Name != "(unregistered file)" {
		t.Fatalf("models %+v", c.Models)
	}
}
