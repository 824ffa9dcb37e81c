package refgen

import (
	"context"
	"fmt"
)

// ChunkSweeper computes the per-chunk lane sums of one step's sweep for
// another device: out[k][j] must be the sum of w_i·c[j] over chunk k's
// weights i with i mod Lanes = j, in index order from 0, where chunk k is
// weights [k·ChunkParams, (k+1)·ChunkParams). len(out) is Chunks().
type ChunkSweeper func(ctx context.Context, c *[Lanes]float64, out [][Lanes]float64) error

// Chunks returns the number of sweep chunks of the model's weights.
func (m *Model) Chunks() int {
	chunkBytes := 4 * ChunkParams
	return (len(m.weights) + chunkBytes - 1) / chunkBytes
}

// StepWith runs the next step like Step, but takes the per-chunk lane
// sums from sweep (a GPU, say) instead of sweeping the weights here. The
// chunk sums are added in chunk order and the rest of the step runs
// exactly as in Step, so a sweeper that honours ChunkSweeper's contract
// gives bit-identical results to Step. An error from sweep makes the
// generation unusable, as an interrupted Step does.
func (g *Generation) StepWith(ctx context.Context, sweep ChunkSweeper) error {
	if g.err != nil {
		return g.err
	}
	if g.Done() {
		return ErrStepsDone
	}
	step := g.done + 1
	c := g.coefficients(step)
	partial := make([][Lanes]float64, g.m.Chunks())
	if err := sweep(ctx, &c, partial); err != nil {
		g.err = fmt.Errorf("refgen: sweep of step %d: %w", step, err)
		return g.err
	}
	var sums [Lanes]float64
	for k := range partial {
		for j := range Lanes {
			sums[j] += partial[k][j]
		}
	}
	g.finishStep(step, &c, &sums)
	return nil
}

// SweepChunks is the CPU's ChunkSweeper over m's weights, one chunk at a
// time on the calling goroutine: a reference for other sweepers' tests.
func (m *Model) SweepChunks(ctx context.Context, c *[Lanes]float64, out [][Lanes]float64) error {
	chunkBytes := 4 * ChunkParams
	for k := range out {
		if err := ctx.Err(); err != nil {
			return err
		}
		lo := k * chunkBytes
		out[k] = sweepChunk(m.weights[lo:min(lo+chunkBytes, len(m.weights))], c)
	}
	return nil
}
