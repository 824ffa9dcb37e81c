package bench

import (
	"context"
	"testing"
)

// Two holder processes (this test binary, started again: TestMain calls
// ShareChild) per mode. Mapped, they share one copy of the model; read,
// each has its own, so the read mode's summed PSS is about one model more.
func TestShareSmall(t *testing.T) {
	const size = 16 << 20
	res, err := Share(context.Background(), ShareOptions{Size: size, Procs: 2, Dir: t.TempDir()}, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.SizeBytes != size || res.Procs != 2 {
		t.Errorf("size %d procs %d, want the options", res.SizeBytes, res.Procs)
	}
	if res.MmapPSSBytes <= 0 || res.ReadPSSBytes <= 0 || res.MmapRSSBytes < res.MmapPSSBytes || res.ReadRSSBytes < res.ReadPSSBytes {
		t.Fatalf("PSS %d/%d, RSS %d/%d: want PSS above 0 and at most RSS", res.MmapPSSBytes, res.ReadPSSBytes, res.MmapRSSBytes, res.ReadRSSBytes)
	}
	if d := res.ReadPSSBytes - res.MmapPSSBytes; d < size/2 {
		t.Errorf("read mode's summed PSS is %d bytes above mmap's; want about one model (%d) more", d, size)
	}
	if res.MmapPSSRatio != float64(res.MmapPSSBytes)/size || res.ReadPSSRatio != float64(res.ReadPSSBytes)/size {
		t.Errorf("ratios %v, %v: want PSS over the model's size", res.MmapPSSRatio, res.ReadPSSRatio)
	}
}

func TestShareRejectsNoProcs(t *testing.T) {
	if _, err := Share(context.Background(), ShareOptions{Size: 1 << 20}, nil); err == nil || err.Error() != "--procs must be at least 1" {
		t.Errorf("Share with no procs: %v", err)
	}
}
