package bench

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/cuda"
)

// Without a CUDA driver Upload fails at once with the backend's reason;
// with one, a small run reports every copy and the sweep it was asked for.
func TestUploadSmallOrUnavailable(t *testing.T) {
	o := UploadOptions{Size: 64 << 20, Dir: t.TempDir(), Reps: 1, SweepThreads: []int{1, 2}}
	res, err := Upload(context.Background(), o, testLog{t})
	if avail := cuda.Available(); avail != nil {
		if err == nil || !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Upload without a driver = %+v, %v; want the backend's reason (%v)", res, err, avail)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.SizeBytes != o.Size || res.Device == "" || !(res.NaiveGBps > 0 && res.GenfleetGBps > 0 && res.PinnedGBps > 0) {
		t.Errorf("size %d device %q naive %v genfleet %v pinned %v: want every copy timed", res.SizeBytes, res.Device, res.NaiveGBps, res.GenfleetGBps, res.PinnedGBps)
	}
	if len(res.StagedGBpsByWorkers) != 2 || res.RatioVsPinned != res.GenfleetGBps/res.PinnedGBps {
		t.Errorf("sweep %v, ratio %v: want 2 worker counts and genfleet/pinned", res.StagedGBpsByWorkers, res.RatioVsPinned)
	}
}

func TestUploadRejectsBadThreads(t *testing.T) {
	for _, n := range []int{-1, 257} {
		if _, err := Upload(context.Background(), UploadOptions{Size: 1 << 20, Threads: n}, nil); err == nil || !strings.Contains(err.Error(), "--threads") {
			t.Errorf("Threads %d: %v, want an error naming --threads", n, err)
		}
	}
}
