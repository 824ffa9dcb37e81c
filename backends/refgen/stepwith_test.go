package refgen

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestStepWithMatchesStep(t *testing.T) {
	for _, size := range []int64{MinSize, 3<<20 + 4093} {
		m, err := Open(makeModel(t, size, 5))
		if err != nil {
			t.Fatal(err)
		}
		want := generate(t, m, "sha256:ab", baseParams)
		g, err := m.NewGeneration("sha256:ab", baseParams)
		if err != nil {
			t.Fatal(err)
		}
		for !g.Done() {
			if err := g.StepWith(context.Background(), m.SweepChunks); err != nil {
				t.Fatal(err)
			}
		}
		if err := g.StepWith(context.Background(), m.SweepChunks); !errors.Is(err, ErrStepsDone) {
			t.Errorf("StepWith after the last step: %v, want ErrStepsDone", err)
		}
		if got := g.Render(); !bytes.Equal(got.Pix, want.Pix) {
			t.Errorf("size %d: StepWith image differs from Step's", size)
		}
	}
	m, err := Open(makeModel(t, MinSize, 5))
	if err != nil {
		t.Fatal(err)
	}
	g, _ := m.NewGeneration("sha256:ab", baseParams)
	boom := errors.New("device lost")
	fail := func(context.Context, *[Lanes]float64, [][Lanes]float64) error { return boom }
	if err := g.StepWith(context.Background(), fail); !errors.Is(err, boom) {
		t.Fatalf("StepWith with a failing sweeper: %v", err)
	}
	if err := g.Step(context.Background()); !errors.Is(err, boom) {
		t.Errorf("Step after a failed StepWith: %v, want the sweeper's error", err)
	}
}
