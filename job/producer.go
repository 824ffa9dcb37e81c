package job

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
)

// Producer enqueues jobs straight into Redis with asynq, without going
// through the scheduler's HTTP API. The scheduler's API still finds these
// jobs by id (GET /v1/jobs/{id}).
type Producer struct {
	client *asynq.Client
	// Pool is the device class whose queue jobs go to. Default DefaultPool.
	Pool string
}

// NewProducer returns a producer that enqueues into the Redis at opt.
func NewProducer(opt asynq.RedisConnOpt) *Producer {
	return &Producer{client: asynq.NewClient(opt), Pool: DefaultPool}
}

// Enqueue validates id (ValidID) and req and enqueues the job; it returns
// the job id. When id is empty a random one is made. Enqueueing an id again
// fails with asynq.ErrTaskIDConflict while asynq holds the first task (it is
// queued, running, waiting to retry or archived as failed); once the first
// job has ended, a worker skips the second task without running it (see
// docs/jobs.md, "Job ids and duplicates").
func (p *Producer) Enqueue(ctx context.Context, id string, req Request, opts ...asynq.Option) (string, error) {
	if id == "" {
		id = uuid.NewString()
	}
	task, all, err := NewTask(id, req, p.Pool, opts...)
	if err != nil {
		return "", err
	}
	if _, err := p.client.EnqueueContext(ctx, task, all...); err != nil {
		return "", fmt.Errorf("enqueue job %s: %w", id, err)
	}
	return id, nil
}

// Close closes the producer's Redis connection.
func (p *Producer) Close() error { return p.client.Close() }
