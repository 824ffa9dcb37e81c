package job

import "strings"

// Priority is a job's class in the queues: "high", "normal" or "low". The
// empty Priority is normal: a request without "priority" and one with
// "priority": "normal" ask for the same job (decoding stores "normal" as
// empty, so both have one RequestDigest).
//
// Each priority has queues of its own (PriorityQueue): a worker takes its
// host's queues strictly before its pool's, and between priorities picks
// by weight, so a high job overtakes a backlog of low ones while low jobs
// still run (docs/fleet.md, "Priorities").
type Priority string

const (
	PriorityHigh   Priority = "high"
	PriorityNormal Priority = "normal"
	PriorityLow    Priority = "low"
)

// Priorities lists every priority, highest first.
var Priorities = []Priority{PriorityHigh, PriorityNormal, PriorityLow}

// Valid reports whether p is one of Priorities or empty (normal).
func (p Priority) Valid() bool {
	return p == "" || p == PriorityHigh || p == PriorityNormal || p == PriorityLow
}

// OrNormal returns p, or PriorityNormal for the empty Priority.
func (p Priority) OrNormal() Priority {
	if p == "" {
		return PriorityNormal
	}
	return p
}

// PriorityQueue returns the queue of priority p for base, a HostQueue or a
// PoolQueue: base itself for normal (so that producers and autoscalers
// that know only the base names keep working), base + ":high" and
// base + ":low" for the others.
func PriorityQueue(base string, p Priority) string {
	switch p {
	case PriorityHigh, PriorityLow:
		return base + ":" + string(p)
	}
	return base
}

// PriorityQueues returns base's queues, highest priority first.
func PriorityQueues(base string) []string {
	out := make([]string, len(Priorities))
	for i, p := range Priorities {
		out[i] = PriorityQueue(base, p)
	}
	return out
}

// SplitQueue returns the base queue and the priority of queue q, the
// inverse of PriorityQueue: "pool:cpu:high" → ("pool:cpu", high),
// "host:h1" → ("host:h1", normal).
func SplitQueue(q string) (base string, p Priority) {
	for _, p := range [...]Priority{PriorityHigh, PriorityLow} {
		if b, ok := strings.CutSuffix(q, ":"+string(p)); ok {
			return b, p
		}
	}
	return q, PriorityNormal
}
