package backends

import (
	"context"
	"time"
)

// PhaseFunc receives a phase of a job that a backend measured itself,
// such as "engine_load" (an out-of-process engine loading the weights
// during the job), for the job's record and metrics.
type PhaseFunc func(name string, d time.Duration)

type phasesKey struct{}

// WithPhases returns a context whose ReportPhase calls go to fn. The
// worker passes such a context to Generate.
func WithPhases(ctx context.Context, fn PhaseFunc) context.Context {
	return context.WithValue(ctx, phasesKey{}, fn)
}

// ReportPhase reports a phase of the job that ctx belongs to; nothing
// happens when ctx carries no PhaseFunc. A backend calls it from
// Generate's goroutine before Generate returns, so the receiver needs no
// lock.
func ReportPhase(ctx context.Context, name string, d time.Duration) {
	if fn, ok := ctx.Value(phasesKey{}).(PhaseFunc); ok && fn != nil {
		fn(name, d)
	}
}
