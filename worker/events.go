package worker

import (
	"context"
	"encoding/json"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// The worker's part of a job's events (job.EventStarted and the others):
// the started event rides on the running record's write, the first event
// or the final write, whichever comes first; progress on the throttled
// progress write (job.Store.Progress), requeued and completed on the
// record's final write (job.Store.Finish); the model event is written
// here, once the job has its model.

// modelEvent is the data of a model event.
type modelEvent struct {
	Model        string  `json:"model"`
	Source       string  `json:"source"`
	CacheHit     bool    `json:"cache_hit"`
	FetchedBytes int64   `json:"fetched_bytes"`
	WaitMS       float64 `json:"wait_ms"`
	AcquireMS    float64 `json:"acquire_ms"`
}

// notifyStarted queues the webhook delivery of the job's started event
// when its webhook asks for it: the dequeue script that published the
// event could not know (a failed write is logged; the job goes on).
func (w *Worker) notifyStarted(ctx context.Context, rec *job.Record) {
	if rec.Request == nil || !rec.Request.Webhook.Wants(job.EventStarted) {
		return
	}
	if err := w.store.Notify(ctx, rec.ID, job.EventStarted); err != nil {
		w.log.Warn("queue webhook delivery", "job", rec.ID, "err", err)
	}
}

// publishModel publishes where the job's model came from. Events are
// advisory: a failed write is logged, and the job goes on.
func (w *Worker) publishModel(ctx context.Context, rec *job.Record, r modelcache.Report) {
	data, _ := json.Marshal(modelEvent{Model: rec.Model, Source: string(r.Origin), CacheHit: r.Hit,
		FetchedBytes: r.FetchedBytes, WaitMS: ms(r.Wait), AcquireMS: rec.Timings["acquire"]})
	if err := w.store.Publish(context.WithoutCancel(ctx), rec, job.EventModel, data); err != nil {
		w.log.Warn("publish model event", "job", rec.ID, "err", err)
	}
}
