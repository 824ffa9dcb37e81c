package scheduler

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// A job that ends between lookup's read of its record and its read of the
// task is reported as its final record says: the worker wrote that record
// before asynq deleted (completed) or archived the task, so the task alone
// (gone, or archived with asynq's last error) must not answer.
func TestLookupSeesAJobThatEndsBetweenItsReads(t *testing.T) {
	addr := testenv.Redis(t).Addr
	opt := asynq.RedisClientOpt{Addr: addr}
	cl := s3.New(s3.Options{Region: "us-east-1"}) // never called: no model checks
	s, err := New(Config{Redis: opt, S3: cl, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: "models"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	store := job.NewStore(rdb)
	producer := asynq.NewClient(opt)
	defer producer.Close()
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	ctx := context.Background()
	t.Cleanup(func() { afterRecordRead = nil })

	for _, tc := range []struct {
		name    string
		end     func(id string) error // the worker's last write, then asynq's
		status  job.Status
		message string
	}{
		{"completed", func(id string) error {
			return insp.DeleteTask("pool:cpu", id)
		}, job.StatusSucceeded, ""},
		{"archived", func(id string) error {
			return insp.ArchiveTask("pool:cpu", id)
		}, job.StatusFailed, "failed after 2 attempts: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "job-" + tc.name
			task, opts, err := job.NewTask(id, job.Request{Model: "demo", Prompt: "x"}, "cpu")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := producer.Enqueue(task, opts...); err != nil {
				t.Fatal(err)
			}
			// A worker runs it: its running record is there.
			rec := &job.Record{ID: id, Status: job.StatusRunning, Queue: "pool:cpu", Attempt: 2, StartedAt: time.Now()}
			if err := store.Finish(ctx, rec, ""); err != nil {
				t.Fatal(err)
			}
			afterRecordRead = func(got string) {
				if got != id {
					return
				}
				final := *rec
				final.Status, final.Error, final.FinishedAt = tc.status, tc.message, time.Now()
				if err := store.Finish(ctx, &final, ""); err != nil {
					t.Error(err)
				}
				if err := tc.end(id); err != nil {
					t.Error(err)
				}
			}
			got, err := s.lookup(ctx, id)
			afterRecordRead = nil
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tc.status || got.Error != tc.message {
				t.Errorf("lookup: %s %q, want the final record's %s %q", got.Status, got.Error, tc.status, tc.message)
			}
		})
	}
}
