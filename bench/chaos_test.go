package bench

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
// lease recovery (lease 30s, recovered 5s after it expired, checked every
// 5s by each worker process), so this test takes about 45s. The workers
// are built as this test binary is (-race or not), so that they run the
// jobs about as fast as the test computes the expected images; without the
// race detector both are many times faster, and the jobs get ten times the
// steps on an eight times larger model, so that the kills (1s and 2s in)
// still land while jobs run.
// `genfleet bench chaos` is the long version.
func TestChaosKilledWorkersLoseNoJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end, ~45s")
	}
	steps, size := 20, int64(1<<20)
	if !testenv.RaceEnabled {
		steps, size = 200, 8<<20
	}
	rd := testenv.Redis(t)
	s3srv := testenv.S3Server(t, chaosModels, chaosOutputs)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Chaos(ctx, ChaosOptions{
		Redis: asynq.RedisClientOpt{Addr: rd.Addr}, S3: s3srv.Config,
		Jobs: 30, Workers: 3, Steps: steps, ModelSize: size,
		KillEvery: time.Second, MaxKills: 2, Deadline: 150 * time.Second,
		Executable: genfleetBinary(t),
	}, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Kills != 2 || res.KillsMidJob == 0 {
		t.Fatalf("kills %d (mid-job %d); want 2, at least one while a job ran", res.Kills, res.KillsMidJob)
	}
	if res.Succeeded != res.Jobs || res.Lost != 0 || res.Failed != 0 || res.Corrupt != 0 {
		t.Fatalf("succeeded %d of %d, lost %d, failed %d (%v), corrupt %d: %v",
			res.Succeeded, res.Jobs, res.Lost, res.Failed, res.FailureReasons, res.Corrupt, res.Problems)
	}
	if res.SucceededTwice != 0 || res.DuplicatedOutputs != 0 || !res.TargetsMet {
		t.Fatalf("succeeded twice %d, duplicated outputs %d, targets met %v: %v", res.SucceededTwice, res.DuplicatedOutputs, res.TargetsMet, res.Problems)
	}
}

func TestChaosRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		o    ChaosOptions
		want string
	}{
		{ChaosOptions{Workers: 3, KillEvery: time.Second}, "--jobs 0"},
		{ChaosOptions{Jobs: 3, KillEvery: time.Second}, "--workers 0"},
		{ChaosOptions{Jobs: 3, Workers: 3}, "--kill-every"},
	} {
		if _, err := Chaos(context.Background(), tc.o, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Chaos(%+v) = %v, want an error naming %s", tc.o, err, tc.want)
		}
	}
}
