package scheduler

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// submission is one job on its way into the queues: the request of a
// POST /v1/jobs, or one item of a POST /v1/jobs:batch. submit fills in
// the outcome: id and route (queued), dup (its Idempotency-Key names an
// earlier job with the same request: id is that job's), or fail.
type submission struct {
	req     job.Request
	idemKey string

	class   string   // the device class whose pool runs the model's engine
	digests []string // the model's file digests, for routing; nil when unknown
	loras   []string // the LoRAs' file digests, for routing

	id    string
	route job.Route
	idem  job.Idempotency // the binding this submission made, if any
	dup   bool
	fail  *submitError
}

// submitError is why a submission was not queued: the status a single
// submit answers with, the outcome genfleet_scheduler_jobs_submitted_total
// counts, the error and the field to blame.
type submitError struct {
	code    int
	outcome string
	err     error
	field   string
}

func (e *submitError) body() apiError {
	b := apiError{Error: e.err.Error(), Field: e.field}
	var fe *job.FieldError
	if b.Field == "" && errors.As(e.err, &fe) {
		b.Field = fe.Field
	}
	return b
}

// write answers a single submit that failed with e: a 503 as unavailable
// does (logged, Retry-After), anything else as it is.
func (s *Server) writeSubmitError(w http.ResponseWriter, e *submitError) {
	if e.code == http.StatusServiceUnavailable {
		s.log.Error("redis unavailable", "err", e.err)
		w.Header().Set("Retry-After", retryAfter)
	}
	writeJSON(w, e.code, e.body())
}

// submit takes decoded, valid requests into the queues: it checks each
// model against the registry, binds Idempotency-Keys, routes and enqueues,
// with every Redis step for all of subs pipelined into one round trip (the
// keys' binding first, when any submission has a key: two round trips in
// all). A submission that fails gets its fail and does not hold up the
// others; one whose enqueue fails has its key released, so a retry can
// enqueue. Each outcome is counted.
func (s *Server) submit(ctx context.Context, subs []*submission) {
	for _, sub := range subs {
		s.checkWebhook(sub)
		s.checkModel(ctx, sub)
		sub.id = uuid.NewString()
	}
	s.claimKeys(ctx, subs)
	var queue []*submission
	for _, sub := range subs {
		if sub.fail == nil && !sub.dup {
			queue = append(queue, sub)
		}
	}
	s.routeAll(ctx, queue)
	tasks := make([]asynq.BatchTask, len(queue))
	for i, sub := range queue {
		// No record is written here: the route travels in the task's
		// payload and the worker records it. Until a worker starts the
		// job, lookup reads it from asynq.
		task, opts, err := job.NewRoutedTask(sub.id, sub.req, sub.class, &sub.route)
		if err != nil {
			sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", err: err}
			continue
		}
		tasks[i] = asynq.BatchTask{Task: task, Opts: opts}
	}
	var errs []error
	if len(tasks) == 1 && tasks[0].Task != nil {
		// One job: asynq's own Enqueue, a single script, is cheaper than
		// a pipeline of one (go-redis's pipelines cost more per call).
		_, err := s.client.EnqueueContext(ctx, tasks[0].Task, tasks[0].Opts...)
		errs = []error{err}
	} else {
		_, errs = s.client.EnqueueBatch(ctx, tasks)
	}
	var release []*submission
	for i, sub := range queue {
		if sub.fail != nil {
			continue
		}
		if errs[i] != nil {
			sub.fail = &submitError{code: http.StatusServiceUnavailable, outcome: "unavailable", err: fmt.Errorf("queue unavailable: %w", errs[i])}
			if sub.idemKey != "" {
				release = append(release, sub)
			}
		}
	}
	if len(release) > 0 {
		// Unbind the keys of jobs that were not queued, so that a retry of
		// the request can queue them.
		pipe := s.rdb.Pipeline()
		for _, sub := range release {
			s.store.QueueReleaseIdempotencyKey(context.WithoutCancel(ctx), pipe, sub.idemKey, sub.idem)
		}
		_, _ = pipe.Exec(context.WithoutCancel(ctx))
	}
	for _, sub := range subs {
		switch {
		case sub.fail != nil:
			s.submitted.WithLabelValues(sub.fail.outcome).Inc()
		case sub.dup:
			s.submitted.WithLabelValues("duplicate").Inc()
		default:
			s.submitted.WithLabelValues("enqueued").Inc()
			s.log.Debug("job enqueued", "job", sub.id, "model", sub.req.Model, "queue", sub.route.Queue, "route", sub.route.Reason)
		}
	}
}

// checkModel checks what sub asks for against the registry and the
// outputs bucket, and sets sub's class, digests and LoRA digests, or its
// fail. It resolves the model (Config.CheckModels): 404 for a model the
// registry does not know, 422 for one whose manifest no worker could use,
// 400 for a model whose engine no pool serves or a request its engine
// cannot take. Then admitGeneration checks the generation features (the
// LoRAs are registered LoRAs of the model's engine, the input images exist
// and fit the job). A registry or S3 that cannot be reached does not stop
// submission: the worker checks again.
func (s *Server) checkModel(ctx context.Context, sub *submission) {
	sub.class = s.cfg.Pool
	if sub.fail != nil {
		return
	}
	man := s.resolveFor(ctx, sub)
	if sub.fail != nil {
		return
	}
	sub.loras, sub.fail = s.admitGeneration(ctx, man, &sub.req)
}

// resolveFor resolves sub's model in the registry (Config.CheckModels) and
// sets sub's class and digests, or its fail; it returns the manifest, or
// nil when the registry was not asked or could not be reached.
func (s *Server) resolveFor(ctx context.Context, sub *submission) *modelcache.Manifest {
	if !s.cfg.CheckModels {
		return nil
	}
	man, err := s.resolve(ctx, sub.req.Model)
	switch {
	case err == nil:
	case errors.Is(err, modelcache.ErrModelNotFound):
		sub.fail = &submitError{code: http.StatusNotFound, outcome: "unknown_model", err: err, field: "model"}
		return nil
	case errors.Is(err, modelcache.ErrBadManifest):
		// The request is fine; the model's registry entry is not, and no
		// worker could run it (docs/jobs.md).
		sub.fail = &submitError{code: http.StatusUnprocessableEntity, outcome: "bad_model", err: err, field: "model"}
		return nil
	case errors.Is(err, modelcache.ErrInvalidRef):
		sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", err: err, field: "model"}
		return nil
	default:
		// The worker checks again; an unreachable registry must not stop
		// the queue from taking work.
		s.log.Warn("model check failed; accepting job", "model", sub.req.Model, "err", err)
		return nil
	}
	class, field, err := s.poolFor(man, &sub.req)
	if err != nil {
		sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", err: err, field: field}
		return nil
	}
	sub.class = class
	for _, f := range man.Files {
		if f.Digest == "" {
			sub.digests = nil // a raw ref: its digest is known only once fetched
			break
		}
		sub.digests = append(sub.digests, f.Digest)
	}
	return man
}

// claimKeys binds the Idempotency-Key of every submission that has one
// (and no fail yet) to the submission's new id and request digest
// (job.RequestDigest: the request as decoded, with defaults, so field
// order, spacing and written-out defaults do not matter), in one round
// trip. A key already bound to the same request makes the submission a
// duplicate of that job; a key bound to another request fails it with 422,
// as payment APIs do: a client that reuses a key for a new request has a
// bug, and silently getting the first job back would hide it.
func (s *Server) claimKeys(ctx context.Context, subs []*submission) {
	if len(subs) == 1 && subs[0].idemKey != "" && subs[0].fail == nil {
		// One key: one script, no pipeline (see submit).
		sub := subs[0]
		sub.idem = job.Idempotency{ID: sub.id, Digest: job.RequestDigest(&sub.req)}
		bound, err := s.store.ClaimIdempotencyKey(ctx, sub.idemKey, sub.idem, s.cfg.IdempotencyTTL)
		s.settleKey(sub, bound, err)
		return
	}
	pipe := s.rdb.Pipeline()
	results := make([]func() (job.Idempotency, error), len(subs))
	for i, sub := range subs {
		if sub.idemKey == "" || sub.fail != nil {
			continue
		}
		sub.idem = job.Idempotency{ID: sub.id, Digest: job.RequestDigest(&sub.req)}
		results[i] = s.store.QueueClaimIdempotencyKey(ctx, pipe, sub.idemKey, sub.idem, s.cfg.IdempotencyTTL)
	}
	if pipe.Len() == 0 {
		return
	}
	_, _ = pipe.Exec(ctx)
	for i, sub := range subs {
		if results[i] == nil {
			continue
		}
		bound, err := results[i]()
		s.settleKey(sub, bound, err)
	}
}

// settleKey applies what claiming sub's Idempotency-Key found: the key is
// sub's now, or names an earlier job with the same request (a
// duplicate), or another request (a conflict), or Redis failed.
func (s *Server) settleKey(sub *submission, bound job.Idempotency, err error) {
	switch {
	case err != nil:
		sub.fail = &submitError{code: http.StatusServiceUnavailable, outcome: "unavailable", err: fmt.Errorf("queue unavailable: %w", err)}
	case bound == sub.idem:
	case !bound.Matches(sub.idem.Digest):
		sub.fail = &submitError{code: http.StatusUnprocessableEntity, outcome: "idempotency_conflict", field: "Idempotency-Key",
			err: fmt.Errorf("Idempotency-Key %q was used with a different request body (for job %s, request %s; this body is %s): "+
				"send the first body again to get that job, or use a new key for a new job",
				sub.idemKey, bound.ID, bound.Digest, sub.idem.Digest)}
	default:
		sub.dup, sub.id, sub.idem = true, bound.ID, job.Idempotency{}
	}
}

// routeAll routes each submission and puts it in the queues of its
// priority. One submission is routed as routeJob does; a batch reads the
// fleet view once and counts each job it sends to a host into that host's
// backlog as it goes, so the backlog cap holds within the batch too.
func (s *Server) routeAll(ctx context.Context, subs []*submission) {
	if len(subs) == 1 {
		subs[0].route = s.routeJob(ctx, subs[0].class, subs[0].digests, subs[0].loras, subs[0].req.Priority)
		return
	}
	var hosts []HostView
	if s.cfg.Routing.Enabled {
		view, _, err := s.fleetView(ctx)
		if err != nil {
			s.log.Warn("fleet view unavailable; routing to the pool", "err", err)
		}
		hosts = append([]HostView(nil), view...)
	}
	toHost := false
	for _, sub := range subs {
		var r job.Route
		if len(sub.digests) > 0 {
			r = RouteWithLoRAs(s.cfg.Routing, sub.class, sub.digests, sub.loras, hosts)
		} else {
			r = Route(s.cfg.Routing, sub.class, nil, nil)
		}
		for i := range hosts {
			if hosts[i].Host == r.Host && r.Host != "" {
				hosts[i].Backlog++
				toHost = true
			}
		}
		s.countRoute(r)
		sub.route = withPriority(r, sub.req.Priority)
	}
	if toHost {
		s.invalidateView()
	}
}
