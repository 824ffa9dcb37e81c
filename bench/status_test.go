package bench

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// A job polled while it finishes never reads as "not found". A worker that
// claims a job at dequeue writes no record until it ends (or has run for a
// while), and the final record lands with the completion that deletes
// asynq's task: a status read that misses the record and then the task
// must look at the record again. The fleet is Queue's: the API and a no-op
// worker in this process, fast enough to poll each job as it finishes.
func TestStatusNeverMissesAFinishingJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an S3 server")
	}
	ctx := context.Background()
	fleet, err := startNoopFleet(ctx, testenv.S3Server(t).Config, asynq.RedisClientOpt{Addr: testenv.Redis(t).Addr}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.stop()
	body := []byte(`{"model":"demo","prompt":"noop","width":64,"height":64,"steps":1}`)
	for i := range 150 {
		id, err := fleet.submit(ctx, body)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err := http.Get("http://" + fleet.addr + "/v1/jobs/" + id)
			if err != nil {
				t.Fatal(err)
			}
			var rec job.Record
			derr := json.NewDecoder(resp.Body).Decode(&rec)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || derr != nil {
				t.Fatalf("job %d (%s): GET answered %s (%v) while it ran", i, id, resp.Status, derr)
			}
			if rec.Status.Terminal() {
				if rec.Status != job.StatusSucceeded {
					t.Fatalf("job %s: %s %q", id, rec.Status, rec.Error)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s still %s after 20 s", id, rec.Status)
			}
		}
	}
}
