package worker

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// models tracks the models this process has acquired, for heartbeats.
// It is safe for concurrent use.
type models struct {
	mu sync.Mutex
	m  map[string]*job.ModelState // by ref
}

// used records an acquire of ref, a model or a LoRA by kind (timings set,
// cold when it was not on disk), or, with timings nil, the end of its use
// by a job.
func (ms *models) used(ref, kind string, digests []string, timings map[string]float64, mapped, cold bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	st := ms.state(ref)
	st.Kind = ""
	if kind != modelcache.KindModel {
		st.Kind = kind
	}
	st.Digests = digests
	st.Mapped = mapped
	st.LastUsed = time.Now().UTC()
	if timings != nil {
		st.Timings = timings
		if cold {
			st.ColdStartMS = timings["wait"] + timings["fetch"] + timings["verify"] + timings["map"]
		}
	}
}

// ran records the run time of a job on ref from its record's timings.
func (ms *models) ran(ref string, timings map[string]float64) {
	if timings["generate"] == 0 {
		return // the job did not get as far as the engine
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.state(ref).JobMS = timings["generate"] + timings["encode"] + timings["upload"]
}

// state returns ref's entry, creating it. The caller holds ms.mu.
func (ms *models) state(ref string) *job.ModelState {
	if ms.m == nil {
		ms.m = map[string]*job.ModelState{}
	}
	st := ms.m[ref]
	if st == nil {
		st = &job.ModelState{Ref: ref}
		ms.m[ref] = st
	}
	return st
}

// snapshot returns the models, most recently used first, at most n.
func (ms *models) snapshot(n int) []job.ModelState {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	out := make([]job.ModelState, 0, len(ms.m))
	for _, st := range ms.m {
		c := *st
		c.Digests = append([]string(nil), st.Digests...)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastUsed.After(out[j].LastUsed) })
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// heartbeat publishes this process's state every HeartbeatInterval until
// ctx ends, then removes it. It runs in its own goroutine, started by Run.
type heartbeat struct {
	w        *Worker
	fleet    *job.Fleet
	interval time.Duration
	started  time.Time
}

func (h *heartbeat) run(ctx context.Context) {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		h.beat(ctx)
		select {
		case <-ctx.Done():
			lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = h.fleet.Leave(lctx, h.w.cfg.HostID, h.w.pid)
			cancel()
			return
		case <-t.C:
		case <-h.w.beatNow:
			// The cache changed (a model fetched, so maybe another
			// evicted): tell the router now, not at the next tick, so it
			// does not send jobs after a model that just left.
		}
	}
}

func (h *heartbeat) beat(ctx context.Context) {
	hb := h.w.state(h.started)
	if err := h.fleet.Beat(ctx, hb, 3*h.interval); err != nil && ctx.Err() == nil {
		h.w.log.Warn("heartbeat failed", "err", err)
	}
}

// state is this process's heartbeat now.
func (w *Worker) state(started time.Time) *job.Heartbeat {
	hb := &job.Heartbeat{
		Host: w.cfg.HostID, PID: w.pid,
		Backend: w.cfg.Backend.Name(), DeviceClass: w.cfg.Backend.DeviceClass(),
		Engines:     w.cfg.Backend.Engines(),
		Concurrency: w.cfg.Concurrency, InFlight: int(w.inFlight.Load()),
		StartedAt: started.UTC(), At: time.Now().UTC(),
		Models: w.models.snapshot(32),
	}
	blobs, err := w.cfg.Cache.List()
	if err != nil {
		w.log.Warn("list cache for heartbeat", "err", err)
	}
	for _, b := range blobs {
		st := job.BlobState{Digest: b.Digest, Size: b.Size, ResidentBytes: b.ResidentBytes, InUse: b.InUse, LastUsed: b.LastUsed}
		if b.Size > 0 {
			st.Resident = float64(b.ResidentBytes) / float64(b.Size)
		}
		hb.Blobs = append(hb.Blobs, st)
	}
	if used, budget, err := w.cfg.Cache.Usage(); err == nil {
		hb.CacheUsed, hb.CacheBudget = used, budget
	}
	if d, ok := w.cfg.Backend.(deviceReporter); ok {
		hb.Device = d.DeviceName()
		for i := range hb.Models {
			hb.Models[i].OnDevice = slices.ContainsFunc(hb.Models[i].Digests, d.OnDevice)
		}
	}
	if w.cfg.Advertise != nil {
		hb.Peer = w.cfg.Advertise()
	}
	return hb
}

// deviceReporter is a backend that runs on a device of its own (cuda):
// the device's name, and whether a file's weights are resident there.
type deviceReporter interface {
	DeviceName() string
	OnDevice(digest string) bool
}

// digestsOf lists a manifest's file digests ("sha256:<hex>").
func digestsOf(m *modelcache.Model) []string {
	out := make([]string, 0, len(m.Blobs))
	for _, b := range m.Blobs {
		out = append(out, b.Digest)
	}
	return out
}
