package scheduler

import (
	"context"
	"fmt"
	"net/http"

	"github.com/genfleet/genfleet/job"
)

// claimIdempotency binds the Idempotency-Key key to the new job id and the
// digest of req (job.RequestDigest: the body as decoded, with defaults,
// so field order, spacing and written-out defaults do not matter). When
// the key is already bound it answers the request itself and returns
// answered: 202 with the bound job (duplicate: true) for the same request,
// 422 naming the key for another one, as payment APIs do: a client that
// reuses a key for a new request has a bug, and silently getting the first
// job back would hide it. Otherwise it returns the binding it made, which
// releaseIdem undoes if the enqueue fails.
func (s *Server) claimIdempotency(w http.ResponseWriter, r *http.Request, key, id string, req *job.Request) (job.Idempotency, bool) {
	ctx := r.Context()
	want := job.Idempotency{ID: id, Digest: job.RequestDigest(req)}
	bound, err := s.store.ClaimIdempotencyKey(ctx, key, want, s.cfg.IdempotencyTTL)
	switch {
	case err != nil:
		s.unavailable(w, err)
		return want, true
	case bound == want:
		return want, false
	case !bound.Matches(want.Digest):
		s.submitted.WithLabelValues("idempotency_conflict").Inc()
		writeJSON(w, http.StatusUnprocessableEntity, apiError{
			Error: fmt.Sprintf("Idempotency-Key %q was used with a different request body (for job %s, request %s; this body is %s): "+
				"send the first body again to get that job, or use a new key for a new job",
				key, bound.ID, bound.Digest, want.Digest),
			Field: "Idempotency-Key",
		})
		return want, true
	}
	s.submitted.WithLabelValues("duplicate").Inc()
	st := job.StatusQueued
	if rec, err := s.lookup(ctx, bound.ID); err == nil {
		st = rec.Status
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"id": bound.ID, "status": st, "duplicate": true})
	return bound, true
}

// releaseIdem unbinds key from b, the binding this request made, after its
// enqueue failed (so a retry of the request can enqueue).
func (s *Server) releaseIdem(key string, b job.Idempotency) {
	if key != "" {
		_ = s.store.ReleaseIdempotencyKey(context.Background(), key, b)
	}
}
