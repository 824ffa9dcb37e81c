package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/job"
)

// leaseExpiredArchived ends the record of a job that asynq's recoverer
// archived because its lease expired on the last attempt: the worker
// running it died, and no attempt is left. No handler returns for such a
// job, so without this its record would say running until it expired (GET
// answers failed from the archived task, but nothing else learns of it):
// here it becomes failed, with the completed event and, when the job asked
// for one, its webhook delivery. A record that already ended is left as it
// is (the worker wrote it just before it died). asynq calls this in the one
// worker process whose recoverer archived the task; that process counts the
// job as failed, as the dead one would have.
func (w *Worker) leaseExpiredArchived(ctx context.Context, task *asynq.TaskInfo, err error) {
	if task.Type != job.TaskType {
		return
	}
	log := w.log.With("job", task.ID, "queue", task.Queue)
	rec, gerr := w.store.Get(ctx, task.ID)
	switch {
	case errors.Is(gerr, job.ErrNoRecord):
		rec = &job.Record{ID: task.ID, Queue: task.Queue}
		if p, perr := job.DecodePayload(task.Payload); perr == nil {
			rec.Model, rec.Request, rec.Route, rec.CreatedAt = p.Request.Model, &p.Request, p.Route, p.SubmittedAt
		}
	case gerr != nil:
		log.Error("job archived after its worker died; its record could not be read to mark it failed", "err", gerr)
		return
	}
	if rec.Status.Terminal() {
		return
	}
	who := "its worker"
	if rec.Worker != nil {
		who = fmt.Sprintf("its worker (host %s, pid %d)", rec.Worker.Host, rec.Worker.PID)
	}
	rec.Status = job.StatusFailed
	rec.Error = fmt.Sprintf("failed after %d attempts: %s died running it and its lease expired (%v)", task.Retried+1, who, err)
	rec.Progress = nil
	rec.FinishedAt = time.Now().UTC()
	wrote, ferr := w.store.FinishUnlessEnded(ctx, rec)
	if ferr != nil {
		log.Error("job archived after its worker died; its record could not be marked failed", "err", ferr)
		return
	}
	if wrote {
		w.metrics.jobs.WithLabelValues(string(job.StatusFailed)).Inc()
		log.Warn("job failed: its worker died on the last attempt", "attempts", task.Retried+1)
	}
}
