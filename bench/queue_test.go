package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/testenv"
)

// A tiny Queue on the test's Redis and S3: every figure it reports is
// there and consistent, with either client.
func TestQueueSmall(t *testing.T) {
	rs := testenv.Redis(t)
	s3 := testenv.S3Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	queue := func(o QueueOptions) *QueueResult {
		t.Helper()
		o.Redis, o.S3 = asynq.RedisClientOpt{Addr: rs.Addr}, s3.Config
		o.Concurrency, o.Clients, o.IdleJobs = 4, 8, 3
		res, err := Queue(ctx, o, testLog{t})
		if err != nil {
			t.Fatalf("Queue(%+v): %v", o, err)
		}
		return res
	}
	if res := queue(QueueOptions{Jobs: 20, Rounds: 1, Client: QueueClientNetHTTP}); res.Client != "net/http" || !(res.GenfleetJobsPerS > 0) {
		t.Errorf("client net/http: client %v, %v jobs/s", res.Client, res.GenfleetJobsPerS)
	}
	res := queue(QueueOptions{Jobs: 60, Rounds: 2, BatchJobs: 250, BatchSize: 100})
	if res.Client != "lean" {
		t.Errorf("client %v, want lean by default", res.Client)
	}
	for k, v := range map[string]float64{
		"genfleet_jobs_per_s": res.GenfleetJobsPerS, "asynq_jobs_per_s": res.AsynqJobsPerS, "ratio": res.Ratio,
		"idle_start_p50_ms": res.IdleStartP50MS, "idle_start_p99_ms": res.IdleStartP99MS,
		"genfleet_cpu_us_per_job": res.GenfleetCPUUsPerJob, "asynq_cpu_us_per_job": res.AsynqCPUUsPerJob,
		"genfleet_redis_cpu_us_per_job": res.GenfleetRedisCPUUsPerJob, "asynq_redis_cpu_us_per_job": res.AsynqRedisCPUUsPerJob,
		"batch_jobs_per_s": res.BatchJobsPerS, "asynq_enqueue_jobs_per_s": res.AsynqEnqueueJobsPerS, "batch_ratio": res.BatchRatio,
	} {
		if !(v > 0) {
			t.Errorf("%s = %v, want a figure above 0", k, v)
		}
	}
	rr := res.RoundRatios
	if res.Jobs != 60 || res.Rounds != 2 || len(rr) != 2 || len(res.RoundGenfleetJobsPerS) != 2 || len(res.RoundAsynqJobsPerS) != 2 {
		t.Fatalf("jobs %v rounds %v round_ratios %v, want 60, 2 and two figures per round", res.Jobs, res.Rounds, rr)
	}
	if res.BatchJobs != 250 || res.BatchSize != 100 || len(res.RoundBatchRatios) != 2 {
		t.Errorf("batch phase: %d jobs in batches of %d, round ratios %v; want 250, 100 and two figures", res.BatchJobs, res.BatchSize, res.RoundBatchRatios)
	}
	// Two rounds: the median is their mean (each rounded to 3 places).
	if want := (rr[0] + rr[1]) / 2; res.Ratio < want-0.002 || res.Ratio > want+0.002 {
		t.Errorf("ratio %v, want the median of the rounds' %v", res.Ratio, rr)
	}
}

func TestQueueRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		o    QueueOptions
		want string
	}{
		{QueueOptions{Jobs: 10, Rounds: 1, Client: "curl"}, "--client"},
		{QueueOptions{Jobs: 0, Rounds: 1}, "--jobs 0"},
		{QueueOptions{Jobs: 10, Rounds: 0}, "--rounds 0"},
	} {
		if _, err := Queue(context.Background(), tc.o, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Queue(%+v) = %v, want an error naming %s", tc.o, err, tc.want)
		}
	}
}
