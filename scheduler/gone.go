package scheduler

import (
	"sort"
	"sync"
	"time"

	"github.com/genfleet/genfleet/job"
)

// goneFor is how long GET /v1/workers keeps listing a host that stopped
// heartbeating, under "gone".
const goneFor = 15 * time.Minute

// goneMax bounds the hosts the memory keeps.
const goneMax = 1000

// GoneHost is a host the scheduler saw that no longer heartbeats: how it
// looked last, and when its latest heartbeat was written.
type GoneHost struct {
	HostView
	LastSeen time.Time `json:"last_seen"`
}

// hostMemory remembers the hosts of the fleet views this process read,
// so that a host whose heartbeats expired shows as gone for goneFor
// instead of vanishing. It is process state: a scheduler that starts
// after a host died does not know that host.
type hostMemory struct {
	mu   sync.Mutex
	last map[string]GoneHost // by host id
}

// observe records the hosts of a fresh view, hbs being its heartbeats.
func (m *hostMemory) observe(hosts []HostView, hbs []job.Heartbeat, now time.Time) {
	at := map[string]time.Time{}
	for _, hb := range hbs {
		if hb.At.After(at[hb.Host]) {
			at[hb.Host] = hb.At
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.last == nil {
		m.last = map[string]GoneHost{}
	}
	for _, h := range hosts {
		seen := at[h.Host]
		if seen.IsZero() {
			seen = now
		}
		m.last[h.Host] = GoneHost{HostView: h, LastSeen: seen.UTC()}
	}
	for id, g := range m.last {
		if now.Sub(g.LastSeen) > goneFor {
			delete(m.last, id)
		}
	}
	if len(m.last) > goneMax {
		// Forget the hosts silent longest.
		old := make([]GoneHost, 0, len(m.last))
		for _, g := range m.last {
			old = append(old, g)
		}
		sort.Slice(old, func(i, j int) bool { return old[i].LastSeen.Before(old[j].LastSeen) })
		for _, g := range old[:len(old)-goneMax] {
			delete(m.last, g.Host)
		}
	}
}

// gone returns the remembered hosts missing from current, silent longest
// last. Their load is zeroed: nothing runs on a host that is gone.
func (m *hostMemory) gone(current []HostView, now time.Time) []GoneHost {
	live := make(map[string]bool, len(current))
	for _, h := range current {
		live[h.Host] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []GoneHost{}
	for id, g := range m.last {
		if live[id] || now.Sub(g.LastSeen) > goneFor {
			continue
		}
		g.InFlight, g.Processes = 0, 0
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastSeen.After(out[j].LastSeen) })
	return out
}
