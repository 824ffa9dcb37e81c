package scheduler

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/job"
)

// Limits of GET /v1/jobs.
const (
	// jobListDefault is the number of jobs listed without ?limit=.
	jobListDefault = 50
	// jobListMax is the largest ?limit= accepted.
	jobListMax = 200
	// jobListPage is how many records of the recent-jobs index one read
	// takes while a filter looks for matches.
	jobListPage = 200
)

// jobFilter is the query of GET /v1/jobs.
type jobFilter struct {
	status job.Status // "" for any
	model  string     // "" for any
	limit  int
}

func (f jobFilter) match(rec *job.Record) bool {
	return (f.status == "" || rec.Status == f.status) && (f.model == "" || rec.Model == f.model)
}

// parseJobFilter reads ?status=, ?model= and ?limit=; an error names the
// parameter (as a job.FieldError).
func parseJobFilter(r *http.Request) (jobFilter, error) {
	q := r.URL.Query()
	f := jobFilter{status: job.Status(q.Get("status")), model: q.Get("model"), limit: jobListDefault}
	switch f.status {
	case "", job.StatusQueued, job.StatusRunning, job.StatusSucceeded, job.StatusFailed, job.StatusCancelled:
	default:
		return f, &job.FieldError{Field: "status", Message: fmt.Sprintf("%q is not a job status (queued, running, succeeded, failed, cancelled)", f.status)}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > jobListMax {
			return f, &job.FieldError{Field: "limit", Message: fmt.Sprintf("%q is not a number from 1 to %d", v, jobListMax)}
		}
		f.limit = n
	}
	return f, nil
}

// jobList is the body of GET /v1/jobs.
type jobList struct {
	Jobs []*job.Record `json:"jobs"`
}

// listJobs answers GET /v1/jobs: the jobs still in a queue (read from
// asynq: pending, scheduled, retrying, running), then the jobs whose
// records were written last (job.Store.Recent), newest first, filtered by
// status and model. It reads what GET /v1/jobs/{id} reads, and keeps no
// state of its own.
func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	f, err := parseJobFilter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	ctx := r.Context()
	var live []*job.Record
	if f.status == "" || f.status == job.StatusQueued || f.status == job.StatusRunning {
		if live, err = s.queuedJobs(ctx, f); err != nil {
			s.unavailable(w, err)
			return
		}
	}
	seen := make(map[string]bool, len(live))
	out := make([]*job.Record, 0, f.limit)
	for _, rec := range live {
		seen[rec.ID] = true
		if f.match(rec) {
			out = append(out, rec)
		}
	}
	// Newest first: a job in a queue by its submit time, an ended one by
	// its end.
	slices.SortStableFunc(out, func(a, b *job.Record) int { return recordTime(b).Compare(recordTime(a)) })
	if len(out) > f.limit {
		out = out[:f.limit]
	}
	// The index orders itself; its records come after the queued ones.
	for start := 0; len(out) < f.limit && start < job.RecentCap; start += jobListPage {
		n := jobListPage
		if f.status == "" && f.model == "" {
			n = f.limit - len(out)
		}
		recs, more, err := s.store.Recent(ctx, start, n)
		if err != nil {
			s.unavailable(w, err)
			return
		}
		for _, rec := range recs {
			if !seen[rec.ID] && f.match(rec) && len(out) < f.limit {
				seen[rec.ID] = true
				out = append(out, rec)
			}
		}
		if !more {
			break
		}
	}
	base := apiBase(r)
	for i, rec := range out {
		out[i] = s.withImageURLs(ctx, rec, base)
	}
	writeJSON(w, http.StatusOK, jobList{Jobs: out})
}

// recordTime is when a job last changed state, as far as its record
// says.
func recordTime(r *job.Record) time.Time {
	for _, t := range []time.Time{r.FinishedAt, r.StartedAt, r.CreatedAt} {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

// queuedJobs returns the jobs asynq holds in its queues (at most
// jobListMax of each state per queue), reconciled with their records the
// way lookup does: a running task shows its record's progress, a task
// whose job already ended (its final record written a moment before
// asynq let go of it) shows that record.
func (s *Server) queuedJobs(ctx context.Context, f jobFilter) ([]*job.Record, error) {
	queues, err := s.inspector.Queues()
	if err != nil {
		return nil, err
	}
	type listFn func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error)
	lists := []listFn{s.inspector.ListActiveTasks}
	if f.status != job.StatusRunning {
		lists = append(lists, s.inspector.ListPendingTasks, s.inspector.ListScheduledTasks, s.inspector.ListRetryTasks)
	}
	var tasks []*asynq.TaskInfo
	for _, q := range queues {
		for _, list := range lists {
			page, err := list(q, asynq.PageSize(jobListMax))
			if errors.Is(err, asynq.ErrQueueNotFound) {
				break
			}
			if err != nil {
				return nil, err
			}
			tasks = append(tasks, page...)
		}
	}
	ids := make([]string, len(tasks))
	for i, ti := range tasks {
		ids[i] = ti.ID
	}
	recs, err := s.store.Records(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make([]*job.Record, 0, len(tasks))
	for i, ti := range tasks {
		out = append(out, reconcile(recs[i], ti))
	}
	return out, nil
}

// reconcile is what lookup reports for task ti and its record rec (nil
// when it has none).
func reconcile(rec *job.Record, ti *asynq.TaskInfo) *job.Record {
	if rec != nil && rec.Status.Terminal() {
		return rec
	}
	if rec == nil {
		rec = &job.Record{ID: ti.ID, Status: job.StatusQueued, Queue: ti.Queue}
		if p, err := job.DecodePayload(ti.Payload); err == nil {
			rec.Model, rec.Request, rec.Route, rec.CreatedAt = p.Request.Model, &p.Request, p.Route, p.SubmittedAt
		} else {
			rec.Error = err.Error()
		}
	}
	switch ti.State {
	case asynq.TaskStateActive:
		if rec.Status == job.StatusQueued {
			rec.Status = job.StatusRunning
		}
	case asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry:
		rec.Status = job.StatusQueued
	}
	return rec
}
