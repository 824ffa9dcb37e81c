package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// permanentReason says why retrying err cannot help, in words for the job
// record, or "" when a retry might. Such a job fails at the attempt that
// met the error: asynq archives it (SkipRetry) and its record says why.
//
// A digest mismatch is here because the cache has already fetched the file
// afresh once before reporting it: the object in S3 is not what the
// manifest promises, and will not become so by asking again.
func permanentReason(err error) string {
	var fe *job.FieldError
	switch {
	case errors.As(err, &fe) && fe.Field == "id":
		return "the job id is not valid"
	case errors.Is(err, job.ErrInvalid):
		return "the request is invalid"
	case errors.Is(err, modelcache.ErrBadManifest):
		return "the model's manifest is invalid; push the model again"
	case errors.Is(err, modelcache.ErrDigestMismatch):
		return "the model's file in S3 does not match its manifest's digest"
	case errors.Is(err, modelcache.ErrModelNotFound):
		return "the model is not registered"
	case errors.Is(err, modelcache.ErrInvalidRef):
		return "the model reference is malformed"
	case errors.Is(err, errWrongEngine):
		return "the model's engine does not run on this pool"
	case errors.Is(err, backends.ErrBadModel):
		return "the backend cannot run this model"
	case errors.Is(err, backends.ErrBadParams):
		return "the backend does not support these parameters"
	}
	return ""
}

// failPermanently ends a job that met an error permanentReason names: the
// record says the error and that it is not retried, and the returned
// error makes asynq archive the task at once.
func (w *Worker) failPermanently(ctx context.Context, rec *job.Record, err error, reason string, started time.Time, owner string, log *slog.Logger) error {
	w.finish(ctx, rec, job.StatusFailed, fmt.Sprintf("%v (not retried: %s)", err, reason), started, owner)
	log.Warn("job failed; not retried", "reason", reason, "err", err)
	return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
}

// rejectID fails a task whose id is not a valid job id (job.ValidID)
// before anything else is done for it. It writes no job record: the id
// cannot name one the API would serve (it answers 400 for such ids), and
// must not reach a Redis key or an object name. The archived task carries
// the error (asynq's inspector shows it). A run claim the dequeue took
// under the id is released.
func (w *Worker) rejectID(ctx context.Context, id, owner string, err error) error {
	if owner != "" {
		if rerr := w.store.ReleaseClaim(ctx, id, owner); rerr != nil {
			w.log.Warn("release run claim", "err", rerr)
		}
	}
	w.metrics.jobs.WithLabelValues(string(job.StatusFailed)).Inc()
	w.log.Warn("task refused: its id is not a valid job id; not run, not retried", "err", err)
	return fmt.Errorf("not a valid job id, so the task was not run: %w (not retried): %w", err, asynq.SkipRetry)
}

// skipDuplicate handles a task whose job already ended (job.StartDone): a
// redelivery, a copy moved from a dead host's queue, or a producer that
// enqueued an ended job's id again, which Redis accepts once asynq has
// forgotten the first task. It never runs the job twice. It counts the
// skip and logs it at warn with the digests of the ended job's request and
// of this task's (job.RequestDigest), so a producer whose new request was
// dropped can be found; p is nil when this task's payload did not decode.
func (w *Worker) skipDuplicate(ctx context.Context, id string, payload []byte, p *job.Payload, log *slog.Logger) {
	ended, newDigest, same := "", "", "unknown"
	if p != nil {
		newDigest = job.RequestDigest(&p.Request)
	}
	var status job.Status
	rec, err := w.store.Get(ctx, id)
	if err == nil {
		status = rec.Status
		if rec.Request != nil {
			ended = job.RequestDigest(rec.Request)
		}
	}
	switch {
	case ended == "" || newDigest == "":
	case ended == newDigest:
		same = "same"
	default:
		same = "different"
	}
	w.metrics.duplicates.WithLabelValues(same).Inc()
	sum := sha256.Sum256(payload)
	log.Warn("job already ended; duplicate task skipped without running it",
		"status", status, "request", same,
		"ended_request_digest", ended, "task_request_digest", newDigest,
		"task_payload_sha256", hex.EncodeToString(sum[:]))
}

// handedBack reports whether ctx, a handler's, ended because asynq handed
// its job back to the queue at the end of the shutdown timeout: asynq then
// cancels the handler's context with no cause of its own, before Run
// cancels every handler with errShutdown.
func (w *Worker) handedBack(ctx context.Context) bool {
	return w.stopping.Load() && errors.Is(ctx.Err(), context.Canceled)
}
