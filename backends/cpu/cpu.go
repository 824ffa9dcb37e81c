// Package cpu is the "cpu" backend: it runs genfleet's reference model
// family (package refgen) on the CPU, reading the weights straight from
// the worker's read-only mapping. Importing it registers the backend.
package cpu

import (
	"context"
	"fmt"
	"image"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/refgen"
)

func init() { backends.Register("cpu", New) }

// Backend runs refgen models on the CPU. It holds no state; one Backend
// may serve concurrent Generate calls, each using up to GOMAXPROCS
// goroutines while it sweeps the weights.
type Backend struct{}

var _ backends.Backend = (*Backend)(nil)

// New returns the cpu backend. It never fails: every machine has a CPU.
func New() (backends.Backend, error) { return &Backend{}, nil }

// Name returns "cpu".
func (*Backend) Name() string { return "cpu" }

// DeviceClass returns "cpu".
func (*Backend) DeviceClass() string { return "cpu" }

// Engines returns the built-in engine: the backend runs refgen models.
func (*Backend) Engines() []string { return []string{refgen.Engine} }

// Features returns the built-in engine's: init images, masks and LoRAs.
func (*Backend) Features() []string { return refgen.Features }

// Generate runs the refgen model in m.Main().Data (without copying it) for p and
// returns an *image.NRGBA of exactly p.Width×p.Height. It checks ctx before
// each step and between 64 MiB rounds of a step's sweep, and once ctx is
// done returns an error wrapping ctx.Err(). progress, if not nil, is called
// after each step. A model that is not a refgen model yields an error
// wrapping backends.ErrBadModel; parameters refgen cannot honour yield an
// error wrapping backends.ErrBadParams. The job's LoRAs (m.LoRAs) are
// applied from their mapped files; an init image and mask in p are
// blended as package refgen says. One call makes one image, for p.Seed:
// backends.GenerateAll makes a job's n.
func (b *Backend) Generate(ctx context.Context, m backends.Model, p backends.Params, progress backends.ProgressFunc) (image.Image, error) {
	f := m.Main()
	model, err := refgen.Open(f.Data)
	if err != nil {
		return nil, fmt.Errorf("cpu: %w", err)
	}
	g, err := model.NewGeneration(f.Digest, p)
	if err != nil {
		return nil, fmt.Errorf("cpu: %w", err)
	}
	if err := g.ApplyLoRAs(m.LoRAs); err != nil {
		return nil, fmt.Errorf("cpu: %w", err)
	}
	for !g.Done() {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("cpu: stopped after %d of %d steps: %w", g.StepsDone(), g.Steps(), err)
		}
		if err := g.Step(ctx); err != nil {
			return nil, fmt.Errorf("cpu: stopped in step %d of %d: %w", g.StepsDone()+1, g.Steps(), err)
		}
		if progress != nil {
			progress(g.StepsDone(), g.Steps())
		}
	}
	return g.Render(), nil
}
