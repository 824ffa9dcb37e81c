package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/scheduler"
)

// lifecycleFlags configure what the scheduler does for a job besides
// queueing it: its event streams (and, with the features that follow,
// webhooks and image URLs).
type lifecycleFlags struct {
	maxEventStreams *int
	eventKeepAlive  *time.Duration
}

func addLifecycleFlags(f flags) *lifecycleFlags {
	return &lifecycleFlags{
		maxEventStreams: f.integer("max-event-streams", "GENFLEET_MAX_EVENT_STREAMS", 256, "most GET /v1/jobs/{id}/events streams open at once (each holds a Redis connection while it waits); one more gets 503"),
		eventKeepAlive:  f.duration("event-keepalive", "GENFLEET_EVENT_KEEPALIVE", 15*time.Second, "how long an event stream stays silent before it sends a keep-alive comment"),
	}
}

// apply sets the scheduler's lifecycle settings from the flags.
func (l *lifecycleFlags) apply(cfg *scheduler.Config) error {
	cfg.MaxEventStreams, cfg.EventKeepAlive = *l.maxEventStreams, *l.eventKeepAlive
	return nil
}

// parsePriorityWeights parses --priority-weights "high=6,normal=3,low=1".
// Every priority must be named, each with a weight of at least 1 (the
// worker checks that too).
func parsePriorityWeights(s string) (map[job.Priority]int, error) {
	out := map[job.Priority]int{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		p := job.Priority(strings.TrimSpace(k))
		if !ok || p == "" || !p.Valid() {
			return nil, fmt.Errorf("--priority-weights: %q is not PRIORITY=WEIGHT with PRIORITY high, normal or low", kv)
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--priority-weights: %q: the weight must be a whole number ≥ 1 (a 0 would starve that priority)", kv)
		}
		if _, dup := out[p]; dup {
			return nil, fmt.Errorf("--priority-weights: %s is given twice", p)
		}
		out[p] = n
	}
	for _, p := range job.Priorities {
		if _, ok := out[p]; !ok {
			return nil, fmt.Errorf("--priority-weights %q: no weight for %s; give all three, e.g. high=6,normal=3,low=1", s, p)
		}
	}
	return out, nil
}
