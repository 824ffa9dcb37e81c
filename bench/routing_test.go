package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/testenv"
)

// A small Routing on the test's Redis and S3 with genfleet worker
// processes: both passes run every job, each model is loaded at least once
// per pass and no job loads more than once, and the verdict follows from
// the counts.
func TestRoutingSmall(t *testing.T) {
	rd := testenv.Redis(t)
	s3 := testenv.S3Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log strings.Builder
	res, err := Routing(ctx, RoutingOptions{
		Redis: asynq.RedisClientOpt{Addr: rd.Addr}, S3: s3.Config, ModelSize: 2 << 20,
		Jobs: 8, InFlight: 2, Steps: 1, Verbose: true, Executable: genfleetBinary(t),
	}, &log)
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Jobs != 8 || res.InFlight != 2 || res.ModelBytes != 2<<20 {
		t.Errorf("jobs %d inflight %d model %d: want the options", res.Jobs, res.InFlight, res.ModelBytes)
	}
	for label, loads := range map[string]int{"unrouted": res.UnroutedLoads, "routed": res.RoutedLoads} {
		if loads < 2 || loads > 8 {
			t.Errorf("%s: %d loads of 8 jobs over 2 models, want 2..8", label, loads)
		}
	}
	if !(res.UnroutedP50MS > 0 && res.RoutedP50MS > 0) {
		t.Errorf("p50 %v and %v ms: want latencies", res.UnroutedP50MS, res.RoutedP50MS)
	}
	if want := float64(res.RoutedLoads) <= 0.2*float64(res.UnroutedLoads); res.TargetsMet != want {
		t.Errorf("targets_met %v with %d routed and %d unrouted loads", res.TargetsMet, res.RoutedLoads, res.UnroutedLoads)
	}
	// -v: one line per job and pass, with the host that ran it.
	if n := strings.Count(log.String(), " ran=h"); n != 16 {
		t.Errorf("%d verbose job lines, want 16", n)
	}
}

func TestRoutingRejectsNoJobs(t *testing.T) {
	for _, o := range []RoutingOptions{{Jobs: 0, InFlight: 2}, {Jobs: 4, InFlight: 0}} {
		if _, err := Routing(context.Background(), o, nil); err == nil || !strings.Contains(err.Error(), "want at least 1") {
			t.Errorf("Routing(%+v) = %v, want an error naming --jobs and --inflight", o, err)
		}
	}
}
