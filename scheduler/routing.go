package scheduler

import (
	"fmt"
	"sort"
	"strings"

	"github.com/genfleet/genfleet/job"
)

// HostView is one host as the router sees it: its processes' heartbeats
// merged, plus the backlog of its host queue.
type HostView struct {
	Host        string          `json:"host"`
	DeviceClass string          `json:"device_class"`
	Engines     []string        `json:"engines,omitempty"`
	Processes   int             `json:"processes"`
	Concurrency int             `json:"concurrency"`
	InFlight    int             `json:"in_flight"`
	Backlog     int             `json:"backlog"` // pending jobs in host:<Host>
	CacheUsed   int64           `json:"cache_used"`
	CacheBudget int64           `json:"cache_budget"`
	Blobs       []job.BlobState `json:"blobs"`
}

// resident returns the smallest resident fraction over digests on h, and
// whether h holds every one of them on disk.
func (h *HostView) resident(digests []string) (float64, bool) {
	if len(digests) == 0 {
		return 0, false
	}
	min := 1.0
	for _, d := range digests {
		found := false
		for _, b := range h.Blobs {
			if b.Digest == d {
				found = true
				if b.Resident < min {
					min = b.Resident
				}
				break
			}
		}
		if !found {
			return 0, false
		}
	}
	return min, true
}

// load is the host's queued plus running jobs per slot.
func (h *HostView) load() float64 {
	slots := h.Concurrency
	if slots < 1 {
		slots = 1
	}
	return float64(h.Backlog+h.InFlight) / float64(slots)
}

// Policy tunes Route.
type Policy struct {
	// Enabled turns routing on; off, every job goes to the pool queue, as
	// plain asynq would.
	Enabled bool
	// WarmFraction is the resident fraction at or above which a model
	// counts as warm on a host. Default 0.5.
	WarmFraction float64
	// BacklogCap is the most jobs a host queue may hold before the router
	// stops sending more there. Default 2 per concurrency slot.
	BacklogCap int
}

// Route picks the queue for a job whose model consists of digests, for a
// worker of device class class: the host queue of the least-loaded host
// where the model is warm and whose backlog is under the cap, else the
// pool. It is a pure function; the reason says why in words an operator
// reads in the job's status.
func Route(p Policy, class string, digests []string, hosts []HostView) job.Route {
	return RouteWithLoRAs(p, class, digests, nil, hosts)
}

// RouteWithLoRAs is Route for a job that also applies LoRAs, whose files'
// digests are loras: among the hosts where the model is warm and under the
// backlog cap, one that holds every LoRA on disk comes first (a LoRA is
// small, but fetching it still delays the job), then the least loaded.
func RouteWithLoRAs(p Policy, class string, digests, loras []string, hosts []HostView) job.Route {
	pool := job.PoolQueue(class)
	if !p.Enabled {
		return job.Route{Queue: pool, Pool: pool, Reason: "routing off"}
	}
	if len(digests) == 0 {
		return job.Route{Queue: pool, Pool: pool, Reason: "model digest unknown until fetched"}
	}
	warmAt := p.WarmFraction
	if warmAt <= 0 {
		warmAt = 0.5
	}
	type cand struct {
		h     *HostView
		res   float64
		loras bool // holds every LoRA on disk
	}
	var warm []cand
	var full []string
	for i := range hosts {
		h := &hosts[i]
		if h.DeviceClass != class {
			continue
		}
		res, ok := h.resident(digests)
		if !ok || res < warmAt {
			continue
		}
		limit := p.BacklogCap
		if limit <= 0 {
			limit = 2 * max(h.Concurrency, 1)
		}
		if h.Backlog >= limit {
			full = append(full, fmt.Sprintf("%s backlog %d ≥ cap %d", h.Host, h.Backlog, limit))
			continue
		}
		_, hasLoRAs := h.resident(loras)
		warm = append(warm, cand{h, res, hasLoRAs || len(loras) == 0})
	}
	if len(warm) == 0 {
		if len(full) > 0 {
			return job.Route{Queue: pool, Pool: pool, Reason: "warm hosts are over their backlog cap (" + strings.Join(full, ", ") + ")"}
		}
		return job.Route{Queue: pool, Pool: pool, Reason: "no host holds the model warm"}
	}
	sort.Slice(warm, func(i, j int) bool {
		if warm[i].loras != warm[j].loras {
			return warm[i].loras
		}
		li, lj := warm[i].h.load(), warm[j].h.load()
		if li != lj {
			return li < lj
		}
		if warm[i].res != warm[j].res {
			return warm[i].res > warm[j].res
		}
		return warm[i].h.Host < warm[j].h.Host
	})
	best := warm[0]
	withLoRAs := ""
	switch {
	case len(loras) > 0 && best.loras:
		withLoRAs = fmt.Sprintf(", its %d LoRA(s) on disk", len(loras))
	case len(loras) > 0:
		withLoRAs = ", no warm host holds its LoRAs"
	}
	return job.Route{
		Queue: job.HostQueue(best.h.Host),
		Host:  best.h.Host,
		Pool:  pool,
		Reason: fmt.Sprintf("model warm on %s (%.0f%% resident%s, backlog %d, %d/%d busy)",
			best.h.Host, 100*best.res, withLoRAs, best.h.Backlog, best.h.InFlight, best.h.Concurrency),
	}
}

// MergeHeartbeats folds per-process heartbeats into one view per host.
func MergeHeartbeats(hbs []job.Heartbeat) []HostView {
	byHost := map[string]*HostView{}
	var order []string
	for _, hb := range hbs {
		h := byHost[hb.Host]
		if h == nil {
			h = &HostView{Host: hb.Host, DeviceClass: hb.DeviceClass, Engines: hb.Engines}
			byHost[hb.Host] = h
			order = append(order, hb.Host)
		}
		h.Processes++
		h.Concurrency += hb.Concurrency
		h.InFlight += hb.InFlight
		// Processes of a host share one cache: keep the freshest report.
		if len(hb.Blobs) > 0 || h.Blobs == nil {
			h.Blobs = hb.Blobs
			h.CacheUsed, h.CacheBudget = hb.CacheUsed, hb.CacheBudget
		}
	}
	sort.Strings(order)
	out := make([]HostView, 0, len(order))
	for _, host := range order {
		out = append(out, *byHost[host])
	}
	return out
}
