package scheduler

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/genfleet/genfleet/job"
)

// MaxBatchJobs is the most jobs one POST /v1/jobs:batch may carry.
const MaxBatchJobs = 1000

// batchRequest is the body of POST /v1/jobs:batch.
type batchRequest struct {
	Jobs []batchItem `json:"jobs"`
}

// batchItem is one job of a batch: its request, as POST /v1/jobs takes it,
// and an optional idempotency key, as the Idempotency-Key header of
// POST /v1/jobs.
type batchItem struct {
	Request        json.RawMessage `json:"request"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
}

// createBatch is POST /v1/jobs:batch: up to MaxBatchJobs requests, each
// checked on its own, the valid ones enqueued together in pipelined Redis
// round trips (submit). It answers 200 with one result per item, in order,
// unless the body itself is unusable (400, 413) or Redis could take none of
// them (503: nothing was queued).
func (s *Server) createBatch(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBatchBytes)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("batch body larger than %d bytes; send at most %d jobs of a few KiB each per batch", tooBig.Limit, MaxBatchJobs))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("read request body: %w", err))
		return
	}
	var br batchRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&br); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf(`the body must be {"jobs": [{"request": {…}, "idempotency_key": "…"}, …]}: %v`, err), Field: "jobs"})
		return
	}
	switch {
	case len(br.Jobs) == 0:
		writeJSON(w, http.StatusBadRequest, apiError{Error: "jobs: the batch is empty", Field: "jobs"})
		return
	case len(br.Jobs) > MaxBatchJobs:
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("jobs: %d jobs, at most %d per batch", len(br.Jobs), MaxBatchJobs), Field: "jobs"})
		return
	}
	s.batchSize.Observe(float64(len(br.Jobs)))
	subs := make([]*submission, len(br.Jobs))
	for i, it := range br.Jobs {
		sub := &submission{idemKey: it.IdempotencyKey}
		subs[i] = sub
		switch {
		case len(it.IdempotencyKey) > maxIdempotencyKey:
			sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", field: "idempotency_key",
				err: fmt.Errorf("idempotency_key longer than %d bytes", maxIdempotencyKey)}
		case len(bytes.TrimSpace(it.Request)) == 0 || bytes.Equal(bytes.TrimSpace(it.Request), []byte("null")):
			sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", field: "request", err: errors.New("request: is required")}
		default:
			// The envelope's decode checked that it is one JSON value:
			// no second scan by json.Unmarshal.
			if err := sub.req.UnmarshalJSON(it.Request); err != nil {
				sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", err: requestError(err)}
			} else if err := sub.req.Validate(); err != nil {
				sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", err: err}
			}
		}
	}
	s.submit(r.Context(), subs)
	resp := job.BatchResult{Jobs: make([]job.BatchItem, len(subs))}
	for i, sub := range subs {
		switch {
		case sub.fail != nil:
			b := sub.fail.body()
			if b.Field == "Idempotency-Key" {
				b.Field = "idempotency_key" // where a batch carries it
			}
			resp.Jobs[i] = job.BatchItem{Error: b.Error, Field: b.Field, Code: sub.fail.code}
			resp.Failed++
		case sub.dup:
			resp.Jobs[i] = job.BatchItem{ID: sub.id, Duplicate: true}
			resp.Duplicates++
		default:
			resp.Jobs[i] = job.BatchItem{ID: sub.id, Queue: sub.route.Queue, Status: job.StatusQueued}
			resp.Queued++
		}
	}
	code := http.StatusOK
	if s.allUnavailable(subs) {
		// Nothing was queued, for want of Redis: the whole batch may be
		// sent again.
		s.log.Error("redis unavailable", "err", subs[0].fail.err)
		w.Header().Set("Retry-After", retryAfter)
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, resp)
}

// allUnavailable reports whether every submission failed for want of Redis.
func (s *Server) allUnavailable(subs []*submission) bool {
	for _, sub := range subs {
		if sub.fail == nil || sub.fail.code != http.StatusServiceUnavailable {
			return false
		}
	}
	return len(subs) > 0
}
