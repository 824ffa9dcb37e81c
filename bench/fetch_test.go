package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/modelcache"
)

// A small Fetch on the test's S3 server: every contender timed in every
// run, the medians and ratios consistent with them, modelcache's defaults
// reported where none were given.
func TestFetchSmall(t *testing.T) {
	s3 := testenv.S3Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log strings.Builder
	res, err := Fetch(ctx, FetchOptions{S3: s3.Config, Size: 4 << 20, Runs: 3, Dir: t.TempDir()}, &log)
	if err != nil {
		t.Fatal(err)
	}
	if res.SizeBytes != 4<<20 || res.Runs != 3 || res.PartSize != modelcache.DefaultPartSize || res.Concurrency != modelcache.DefaultFetchConcurrency {
		t.Errorf("size %d runs %d part %d concurrency %d: want the options, defaults filled in", res.SizeBytes, res.Runs, res.PartSize, res.Concurrency)
	}
	for name, runs := range map[string][]float64{"genfleet": res.GenfleetRunsMBps, "transfermanager": res.TMRunsMBps, "disk_write": res.DiskWriteRunsMBps} {
		if len(runs) != 3 {
			t.Errorf("%s: %d runs %v, want 3", name, len(runs), runs)
		}
		if got := strings.Count(log.String(), " "+name+" "); got != 3 {
			t.Errorf("%s: %d progress lines, want one per run:\n%s", name, got, log.String())
		}
	}
	if !(res.GenfleetMBps > 0) || res.RatioVsTM != res.GenfleetMBps/res.TransferManagerMBps || res.RatioVsDisk != res.GenfleetMBps/res.DiskWriteMBps {
		t.Errorf("genfleet %v MB/s, ratios %v and %v: want rates above 0 and ratios of the medians", res.GenfleetMBps, res.RatioVsTM, res.RatioVsDisk)
	}
	if m := median(res.GenfleetRunsMBps); m < round1(res.GenfleetMBps)-0.1 || m > round1(res.GenfleetMBps)+0.1 {
		t.Errorf("genfleet %v MB/s is not the median of its runs %v", res.GenfleetMBps, res.GenfleetRunsMBps)
	}
}

func TestFetchRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    FetchOptions
		want string
	}{
		{"no size", FetchOptions{Runs: 1}, "--size"},
		{"no runs", FetchOptions{Size: 1 << 20}, "--runs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Fetch(context.Background(), tc.o, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Fetch(%+v) = %v, want an error naming %s", tc.o, err, tc.want)
			}
		})
	}
}
