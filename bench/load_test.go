package bench

import (
	"context"
	"testing"
)

// A small Load: each mode timed, and a warm mapped acquire beats reading
// the model into private memory (by far: at 8 MiB a read copies 8 MiB, a
// mapping copies nothing).
func TestLoadSmall(t *testing.T) {
	res, err := Load(context.Background(), LoadOptions{Size: 8 << 20, Runs: 2, Dir: t.TempDir()}, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.SizeBytes != 8<<20 || res.Runs != 2 {
		t.Errorf("size %d runs %d, want the options", res.SizeBytes, res.Runs)
	}
	if !(res.MmapMS > 0 || res.MmapPopulateMS > 0) || !(res.ReadMS > 0) {
		t.Fatalf("mmap %v ms, populate %v ms, read %v ms: want times", res.MmapMS, res.MmapPopulateMS, res.ReadMS)
	}
	if !(res.Ratio > 1) || res.Ratio != res.ReadMS/max(res.MmapMS, 0.001) {
		t.Errorf("ratio %v for read %v ms / mmap %v ms: want read/mmap, above 1", res.Ratio, res.ReadMS, res.MmapMS)
	}
	if want := float64(8<<20) / 1e9 / (res.ReadMS / 1000); res.ReadGBps != want {
		t.Errorf("read_gb_per_s %v, want %v", res.ReadGBps, want)
	}
}
