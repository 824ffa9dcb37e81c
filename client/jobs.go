package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/genfleet/genfleet/job"
)

// Accepted is the API's answer to a submit (POST /v1/jobs).
type Accepted struct {
	// ID is the job's id; for a duplicate, the first job's.
	ID string `json:"id"`
	// Queue is the queue the job was routed to (empty for a duplicate).
	Queue string `json:"queue,omitempty"`
	// Status is the job's status: queued, or the first job's for a
	// duplicate.
	Status job.Status `json:"status"`
	// Duplicate says the idempotency key was seen before with the same
	// request: nothing was queued, ID is the first job's.
	Duplicate bool `json:"duplicate,omitempty"`
}

// SubmitOption sets something of a submit besides its request.
type SubmitOption func(*submitOptions)

type submitOptions struct{ idempotencyKey string }

// IdempotencyKey sends key as the submit's Idempotency-Key (docs/jobs.md):
// the same key with the same request returns the first job again; with
// another request the API refuses it (an *Error with status 422).
func IdempotencyKey(key string) SubmitOption {
	return func(o *submitOptions) { o.idempotencyKey = key }
}

// Submit submits req (POST /v1/jobs). A field of req left at its zero
// value takes the API's default, except Guidance and Seed, which the API
// takes as given (0 is a valid guidance scale: set job.DefaultGuidance for
// the default one).
func (c *Client) Submit(ctx context.Context, req job.Request, opts ...SubmitOption) (*Accepted, error) {
	withDefaultN(&req)
	var o submitOptions
	for _, opt := range opts {
		opt(&o)
	}
	var hdr []string
	if o.idempotencyKey != "" {
		hdr = []string{"Idempotency-Key", o.idempotencyKey}
	}
	var a Accepted
	if err := c.doJSON(ctx, http.MethodPost, "/v1/jobs", req, http.StatusAccepted, &a, hdr...); err != nil {
		return nil, err
	}
	return &a, nil
}

// withDefaultN sets a zero N to 1: JSON's "n" is left out for one image,
// and "n": 0 is an invalid request, not the default.
func withDefaultN(req *job.Request) {
	if req.N == 0 {
		req.N = 1
	}
}

// BatchJob is one job of a batch submit: its request, whose zero fields
// take defaults as Submit's do, and, optionally, its idempotency key.
type BatchJob struct {
	Request        job.Request `json:"request"`
	IdempotencyKey string      `json:"idempotency_key,omitempty"`
}

// BatchItem is the API's answer for one job of a batch, in the job's
// place (see job.BatchItem).
type BatchItem = job.BatchItem

// BatchResult is the API's answer to a batch submit.
type BatchResult = job.BatchResult

// SubmitBatch submits up to 1,000 jobs in one request (POST
// /v1/jobs:batch). Each job is checked on its own: one that is refused is
// named in its item, and the others are queued all the same, so a nil
// error does not mean every job was queued (see BatchResult.Failed). The
// error is an *Error only when the API took none of them (a body it
// cannot use, 400 or 413; Redis unreachable, 503).
func (c *Client) SubmitBatch(ctx context.Context, jobs []BatchJob) (*BatchResult, error) {
	jobs = slices.Clone(jobs)
	if jobs == nil {
		jobs = []BatchJob{}
	}
	for i := range jobs {
		withDefaultN(&jobs[i].Request)
	}
	var res BatchResult
	if err := c.doJSON(ctx, http.MethodPost, "/v1/jobs:batch", struct {
		Jobs []BatchJob `json:"jobs"`
	}{jobs}, http.StatusOK, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Job returns job id's record as the API reports it (GET /v1/jobs/{id});
// an unknown id is an *Error with status 404.
func (c *Client) Job(ctx context.Context, id string) (*job.Record, error) {
	var rec job.Record
	if err := c.doJSON(ctx, http.MethodGet, jobPath(id), nil, http.StatusOK, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// Cancelled is the API's answer to a cancel.
type Cancelled struct {
	ID string `json:"id"`
	// Status is cancelled for a job that was still queued; for a running
	// job it is its status now, and CancelRequested is true: the job stops
	// at its next step and ends cancelled.
	Status          job.Status `json:"status"`
	CancelRequested bool       `json:"cancel_requested,omitempty"`
}

// Cancel cancels job id (DELETE /v1/jobs/{id}). A job that already ended
// is an *Error with status 409.
func (c *Client) Cancel(ctx context.Context, id string) (*Cancelled, error) {
	req, err := c.newRequest(ctx, http.MethodDelete, jobPath(id), nil)
	if err != nil {
		return nil, err
	}
	var res Cancelled
	if err := c.decode(req, &res, http.StatusOK, http.StatusAccepted); err != nil {
		return nil, err
	}
	return &res, nil
}

// PollInterval is how often Poll and Wait (on a scheduler without job
// events) read a job.
const PollInterval = 200 * time.Millisecond

// Poll reads job id every PollInterval until it ends, calling fn (when
// not nil) with each record read, and returns the last. When ctx ends
// first the error wraps ctx's and names the last status seen.
func (c *Client) Poll(ctx context.Context, id string, fn func(*job.Record)) (*job.Record, error) {
	for {
		rec, err := c.Job(ctx, id)
		if err != nil {
			return nil, err
		}
		if fn != nil {
			fn(rec)
		}
		if rec.Status.Terminal() {
			return rec, nil
		}
		select {
		case <-ctx.Done():
			return rec, fmt.Errorf("gave up (last status %s): %w", rec.Status, ctx.Err())
		case <-time.After(PollInterval):
		}
	}
}

// Wait waits until job id ends and returns its record: it follows the
// job's events (Follow) and, on a scheduler that serves none, polls
// (Poll). A job that failed or was cancelled is not an error: check the
// record's Status.
func (c *Client) Wait(ctx context.Context, id string) (*job.Record, error) {
	rec, err := c.Follow(ctx, id, nil)
	if errors.Is(err, ErrNoEvents) {
		return c.Poll(ctx, id, nil)
	}
	return rec, err
}

func jobPath(id string) string { return "/v1/jobs/" + url.PathEscape(id) }
