package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/testenv"
)

// Three worker processes of one host; two of them are SIGKILLed while they
// run a job and restarted with the same host id. Every job still ends
// succeeded, once, with exactly the PNG the cpu backend makes of its
// request in this process. The killed jobs come back only through asynq's
// lease recovery (lease 30s, recovered 30s after it expired, checked every
// minute by each worker process), so this test takes about 70s.
// `genfleet bench chaos` is the long version.
func TestChaosKilledWorkersLoseNoJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end, ~70s")
	}
	rd := testenv.Redis(t)
	s3srv := testenv.S3Server(t, chaosModels, chaosOutputs)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := runChaos(ctx, asynq.RedisClientOpt{Addr: rd.Addr}, s3srv.Client, s3srv.Config, chaosConfig{
		Jobs: 30, Workers: 3, Steps: 20, ModelSize: 1 << 20,
		KillEvery: time.Second, MaxKills: 2, Deadline: 150 * time.Second,
		Dir: t.TempDir(), ChildEnv: []string{childEnv + "=1"}, Stderr: testLog{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res.asMap())
	if res.Kills != 2 || res.KillsMidJob == 0 {
		t.Fatalf("kills %d (mid-job %d); want 2, at least one while a job ran", res.Kills, res.KillsMidJob)
	}
	if res.Succeeded != res.Jobs || res.Lost != 0 || res.Failed != 0 || res.Corrupt != 0 {
		t.Fatalf("succeeded %d of %d, lost %d, failed %d (%v), corrupt %d: %v",
			res.Succeeded, res.Jobs, res.Lost, res.Failed, res.FailureReasons, res.Corrupt, res.Problems)
	}
	if res.SucceededTwice != 0 || res.DuplicatedOutputs != 0 {
		t.Fatalf("succeeded twice %d, duplicated outputs %d: %v", res.SucceededTwice, res.DuplicatedOutputs, res.Problems)
	}
}

// testLog writes a test's progress lines to t.Log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
