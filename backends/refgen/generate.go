package refgen

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"image"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/genfleet/genfleet/backends"
)

// Algorithm constants. Changing any of them changes every image; they are
// part of the family's definition, like the file layout.
const (
	// Lanes is the number of weight sums per step: weight i adds to lane
	// i mod Lanes.
	Lanes = 8
	// ChunkParams is the number of weights per sweep chunk: the unit of
	// parallel work whose sums are combined in order.
	ChunkParams = 1 << 18
	// GridSize is the latent's width and height; it has 3 channels.
	GridSize = 16
	// latentLen is the number of latent values, channel-major.
	latentLen = 3 * GridSize * GridSize
	// roundChunks is how many chunks are swept between barriers (and
	// context checks): 64 MiB of weights.
	roundChunks = 64
	// mix is the fraction of the way the latent moves to each step's
	// target.
	mix = 0.3
)

// Limits on generation parameters, beyond which NewGeneration refuses.
const (
	MaxDimension = 8192
	MaxSteps     = 1000
)

// ErrStepsDone is returned by Step once every step has run.
var ErrStepsDone = errors.New("refgen: all steps done")

// rng is a splitmix64 stream.
type rng struct{ seed, n uint64 }

func (r *rng) next() uint64 {
	v := splitmix64(r.seed, r.n)
	r.n++
	return v
}

// unit returns a float64 in [0, 1) from the top 53 bits of the next output.
func (r *rng) unit() float64 { return float64(r.next()>>11) * (1.0 / (1 << 53)) }

// signed returns a float64 in [-1, 1).
func (r *rng) signed() float64 { return 2*r.unit() - 1 }

func writeString(h hash.Hash, s string) {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
	h.Write(n[:])
	h.Write([]byte(s))
}

// conditionHash is sha256 of the request: a domain string, then digest,
// prompt and negative prompt each as a little-endian uint64 length and
// bytes, then seed (int64), width, height, steps (uint32 each) and the
// float64 bits of guidance, all little-endian.
func conditionHash(digest string, p backends.Params) [32]byte {
	h := sha256.New()
	h.Write([]byte(Family + "/cond"))
	writeString(h, digest)
	writeString(h, p.Prompt)
	writeString(h, p.NegativePrompt)
	var b [28]byte
	binary.LittleEndian.PutUint64(b[0:], uint64(p.Seed))
	binary.LittleEndian.PutUint32(b[8:], uint32(p.Width))
	binary.LittleEndian.PutUint32(b[12:], uint32(p.Height))
	binary.LittleEndian.PutUint32(b[16:], uint32(p.Steps))
	binary.LittleEndian.PutUint64(b[20:], math.Float64bits(p.Guidance))
	h.Write(b[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// styleHash is sha256 of a domain string and the prompt and negative
// prompt, each as a little-endian uint64 length and bytes.
func styleHash(p backends.Params) [32]byte {
	h := sha256.New()
	h.Write([]byte(Family + "/style"))
	writeString(h, p.Prompt)
	writeString(h, p.NegativePrompt)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Generation is one image being generated. It is not safe for concurrent
// use; Step runs its sweep on up to GOMAXPROCS goroutines internally.
type Generation struct {
	m      *Model
	params backends.Params
	steps  int
	done   int
	err    error // set when a step was interrupted

	latent [latentLen]float64
	// Per-lane constants of the coefficient schedule.
	theta, omega [Lanes]float64
	// Per-channel constants of the target pattern.
	fx, fy, phase [3]float64
	// Palette: colour = a + b·cos(2π(c·t + d)) per RGB channel.
	pa, pb, pc, pd [3]float64
	// ripple is the pixel-scale pattern: cycles across the image and its
	// direction.
	rippleK, rippleCos, rippleSin float64

	laneCount [Lanes]int64
	// loraDelta is, per lane, the sum of the applied LoRAs' deltas times
	// their weights (ApplyLoRA): a step adds c_j·loraDelta[j] to lane j.
	loraDelta [Lanes]float64
	// round is the number of chunks per round, roundChunks except in
	// tests of the round logic.
	round   int
	partial [roundChunks][Lanes]float64
}

// NewGeneration starts generating an image for request p with the model
// whose file digest is digest ("sha256:<hex>"; it only seeds the
// conditioning). It fails for a width or height outside 1..MaxDimension,
// steps outside 1..MaxSteps, or a guidance that is not finite.
func (m *Model) NewGeneration(digest string, p backends.Params) (*Generation, error) {
	bad := backends.ErrBadParams
	switch {
	case p.Width < 1 || p.Width > MaxDimension || p.Height < 1 || p.Height > MaxDimension:
		return nil, fmt.Errorf("refgen: image size %dx%d is outside 1..%d: %w", p.Width, p.Height, MaxDimension, bad)
	case p.Steps < 1 || p.Steps > MaxSteps:
		return nil, fmt.Errorf("refgen: steps %d is outside 1..%d: %w", p.Steps, MaxSteps, bad)
	case math.IsNaN(p.Guidance) || math.IsInf(p.Guidance, 0):
		return nil, fmt.Errorf("refgen: guidance %v is not a finite number: %w", p.Guidance, bad)
	case p.SamplingMethod != "" || p.Scheduler != "":
		return nil, fmt.Errorf("refgen: the built-in engine has one fixed sampler; sampling_method and scheduler are for engines such as sdcpp: %w", bad)
	case len(p.Options) > 0:
		return nil, fmt.Errorf("refgen: the built-in engine takes no engine options (docs/engines.md): %w", bad)
	}
	if err := checkInputs(p); err != nil {
		return nil, err
	}
	g := &Generation{m: m, params: p, steps: p.Steps, round: roundChunks}

	cond := conditionHash(digest, p)
	r := rng{seed: binary.LittleEndian.Uint64(cond[0:]) ^ binary.LittleEndian.Uint64(cond[8:])}
	for i := range g.latent {
		g.latent[i] = r.signed()
	}
	for j := range Lanes {
		g.theta[j] = math.Pi * r.signed()
		g.omega[j] = 0.5 + r.unit()
	}
	for c := range 3 {
		g.fx[c] = (0.15 + 0.45*r.unit()) * sign(r.signed())
		g.fy[c] = (0.15 + 0.45*r.unit()) * sign(r.signed())
		g.phase[c] = math.Pi * r.signed()
	}

	style := styleHash(p)
	s := rng{seed: binary.LittleEndian.Uint64(style[0:]) ^ binary.LittleEndian.Uint64(style[8:])}
	for c := range 3 {
		g.pa[c] = 0.4 + 0.15*s.unit()
		g.pb[c] = 0.3 + 0.15*s.unit()
		g.pc[c] = 0.6 + 0.8*s.unit()
		g.pd[c] = s.unit()
	}
	g.rippleK = 3 + 6*s.unit()
	angle := math.Pi * s.signed()
	g.rippleCos, g.rippleSin = math.Cos(angle), math.Sin(angle)

	n := m.Params
	for j := range Lanes {
		g.laneCount[j] = n / Lanes
		if int64(j) < n%Lanes {
			g.laneCount[j]++
		}
	}
	return g, nil
}

func sign(x float64) float64 {
	if x < 0 {
		return -1
	}
	return 1
}

// Steps returns the number of steps the generation runs.
func (g *Generation) Steps() int { return g.steps }

// StepsDone returns the number of steps run so far.
func (g *Generation) StepsDone() int { return g.done }

// Done reports whether every step has run.
func (g *Generation) Done() bool { return g.done >= g.steps }

// coefficients returns the lane coefficients of the next step, float32
// values so that products with weights are exact in float64.
func (g *Generation) coefficients(step int) [Lanes]float64 {
	var c [Lanes]float64
	for j := range Lanes {
		v := 0.75*math.Sin(g.theta[j]+float64(step)*g.omega[j]) +
			0.25*math.Tanh(g.latent[(j*97+step*31)%latentLen])
		c[j] = float64(float32(v))
	}
	return c
}

// Step runs the next step: one sweep of every weight, then a latent
// update. It checks ctx between rounds of 64 MiB of weights and returns
// ctx's error once ctx is done; the generation is then unusable and every
// later Step returns that error. After the last step it returns
// ErrStepsDone.
func (g *Generation) Step(ctx context.Context) error {
	if g.err != nil {
		return g.err
	}
	if g.Done() {
		return ErrStepsDone
	}
	step := g.done + 1
	c := g.coefficients(step)
	sums, err := g.sweep(ctx, &c)
	if err != nil {
		g.err = err
		return err
	}
	g.finishStep(step, &c, &sums)
	return nil
}

// finishStep adds the LoRAs' part of the sweep to sums and moves the
// latent: the rest of a step once the weights are swept.
func (g *Generation) finishStep(step int, c, sums *[Lanes]float64) {
	var u [Lanes]float64
	for j := range Lanes {
		s := sums[j] + c[j]*g.loraDelta[j]
		u[j] = math.Tanh(s / math.Sqrt(float64(max(g.laneCount[j], 1))/3))
	}
	g.update(&u)
	g.done = step
}

// ApplyLoRA applies l with weight to the generation's model, before the
// first step: the steps sweep the model's weights as they are in the
// mapping and add the LoRA's part from its factors (see LoRA). It fails,
// wrapping backends.ErrBadModel, for a LoRA that does not fit the model.
func (g *Generation) ApplyLoRA(l *LoRA, weight float64) error {
	if g.done > 0 {
		return fmt.Errorf("refgen: ApplyLoRA after %d steps: a LoRA applies to the whole generation", g.done)
	}
	if math.IsNaN(weight) || math.IsInf(weight, 0) {
		return fmt.Errorf("refgen: LoRA weight %v is not finite: %w", weight, backends.ErrBadParams)
	}
	d, err := l.laneDelta(g.m)
	if err != nil {
		return err
	}
	for j := range Lanes {
		g.loraDelta[j] += weight * d[j]
	}
	return nil
}

// sweep returns, per lane, the sum of weight·c over every weight, summed
// per chunk in index order and then over chunks in chunk order.
func (g *Generation) sweep(ctx context.Context, c *[Lanes]float64) ([Lanes]float64, error) {
	var total [Lanes]float64
	w := g.m.weights
	chunkBytes := 4 * ChunkParams
	nChunks := (len(w) + chunkBytes - 1) / chunkBytes
	for first := 0; first < nChunks; first += g.round {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		count := min(g.round, nChunks-first)
		chunk := func(k int) []byte {
			lo := (first + k) * chunkBytes
			return w[lo:min(lo+chunkBytes, len(w))]
		}
		workers := min(runtime.GOMAXPROCS(0), count)
		if workers <= 1 {
			for k := range count {
				g.partial[k] = sweepChunk(chunk(k), c)
			}
		} else {
			var next atomic.Int64
			var wg sync.WaitGroup
			work := func() {
				for {
					k := int(next.Add(1) - 1)
					if k >= count {
						return
					}
					g.partial[k] = sweepChunk(chunk(k), c)
				}
			}
			wg.Add(workers - 1)
			for range workers - 1 {
				go func() {
					defer wg.Done()
					work()
				}()
			}
			work()
			wg.Wait()
		}
		for k := range count {
			for j := range Lanes {
				total[j] += g.partial[k][j]
			}
		}
	}
	return total, nil
}

// sweepChunk sums weight·c per lane over b, little-endian F32 weights
// whose first one is in lane 0, in index order. Each product of two
// float32 values is exact in float64, so the only rounding is the adds.
func sweepChunk(b []byte, c *[Lanes]float64) [Lanes]float64 {
	var a0, a1, a2, a3, a4, a5, a6, a7 float64
	c0, c1, c2, c3, c4, c5, c6, c7 := c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
	for len(b) >= 32 {
		v := b[:32:32]
		a0 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[0:]))) * c0
		a1 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[4:]))) * c1
		a2 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[8:]))) * c2
		a3 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[12:]))) * c3
		a4 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[16:]))) * c4
		a5 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[20:]))) * c5
		a6 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[24:]))) * c6
		a7 += float64(math.Float32frombits(binary.LittleEndian.Uint32(v[28:]))) * c7
		b = b[32:]
	}
	acc := [Lanes]float64{a0, a1, a2, a3, a4, a5, a6, a7}
	for j := 0; len(b) >= 4; j++ {
		acc[j] += float64(math.Float32frombits(binary.LittleEndian.Uint32(b))) * c[j]
		b = b[4:]
	}
	return acc
}

// update moves the latent toward the step's target pattern: per channel a
// plane wave plus rings, scaled by guidance. The squashed sums u bend the
// waves' frequencies (lanes 0-2), move the rings' centre (3-4), set the
// rings' frequency (5) and shift the phases (6-7).
func (g *Generation) update(u *[Lanes]float64) {
	amp := 0.7 + 0.04*math.Min(math.Abs(g.params.Guidance), 15)
	const mid = (GridSize - 1) / 2.0
	cx, cy := mid+5*u[3], mid+5*u[4]
	for ch := range 3 {
		fx := g.fx[ch] * (1 + 0.5*u[ch])
		fy := g.fy[ch] * (1 - 0.5*u[(ch+1)%3])
		ph := g.phase[ch] + math.Pi*u[6+ch%2]
		rf := 0.5 + 0.3*u[5]
		rp := math.Pi * u[7-ch%2]
		for y := range GridSize {
			for x := range GridSize {
				dx, dy := float64(x)-cx, float64(y)-cy
				wave := math.Sin(fx*(float64(x)-mid) + fy*(float64(y)-mid) + ph)
				ring := math.Cos(rf*math.Sqrt(dx*dx+dy*dy) + rp)
				t := amp * (0.65*wave + 0.35*ring)
				i := (ch*GridSize+y)*GridSize + x
				g.latent[i] += mix * (t - g.latent[i])
			}
		}
	}
}

// tap is one Catmull-Rom interpolation: four grid indices and weights.
type tap struct {
	i [4]int
	w [4]float64
}

// taps returns the interpolation taps for each of n pixels across the
// GridSize-wide latent, pixel centres mapped onto grid points.
func taps(n int) []tap {
	out := make([]tap, n)
	for p := range out {
		x := (float64(p)+0.5)*GridSize/float64(n) - 0.5
		x = math.Max(0, math.Min(GridSize-1, x))
		i := int(x)
		t := x - float64(i)
		t2, t3 := t*t, t*t*t
		out[p].w = [4]float64{
			(-t3 + 2*t2 - t) / 2,
			(3*t3 - 5*t2 + 2) / 2,
			(-3*t3 + 4*t2 + t) / 2,
			(t3 - t2) / 2,
		}
		for k := range 4 {
			out[p].i[k] = min(max(i-1+k, 0), GridSize-1)
		}
	}
	return out
}

// Render draws the current latent as a Width×Height image. It can be
// called at any time (before the last step it shows a preview) and runs
// on up to GOMAXPROCS goroutines; pixels do not depend on how rows are
// split among them.
func (g *Generation) Render() *image.NRGBA {
	w, h := g.params.Width, g.params.Height
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	xt, yt := taps(w), taps(h)
	workers := min(runtime.GOMAXPROCS(0), h)
	var wg sync.WaitGroup
	for k := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for y := k; y < h; y += workers {
				g.renderRow(img, y, xt, &yt[y])
			}
		}()
	}
	wg.Wait()
	if g.params.InitImage != nil {
		blend(img, g.params)
	}
	return img
}

func (g *Generation) renderRow(img *image.NRGBA, y int, xt []tap, ty *tap) {
	w, h := g.params.Width, g.params.Height
	// Interpolate the latent's rows once for this pixel row: rowv[ch][gx].
	var rowv [3][GridSize]float64
	for ch := range 3 {
		for gx := range GridSize {
			var v float64
			for k := range 4 {
				v += ty.w[k] * g.latent[(ch*GridSize+ty.i[k])*GridSize+gx]
			}
			rowv[ch][gx] = v
		}
	}
	fy := (float64(y)+0.5)/float64(h) - 0.5
	pix := img.Pix[y*img.Stride : y*img.Stride+4*w]
	for x := range w {
		tx := &xt[x]
		var v [3]float64
		for ch := range 3 {
			for k := range 4 {
				v[ch] += tx.w[k] * rowv[ch][tx.i[k]]
			}
		}
		fx := (float64(x)+0.5)/float64(w) - 0.5
		ripple := 0.06 * math.Sin(2*math.Pi*g.rippleK*(fx*g.rippleCos+fy*g.rippleSin)+2*v[1])
		t := 0.5 + 0.45*math.Tanh(v[0]+0.5*v[1]) + ripple
		shade := 0.8 + 0.2*math.Tanh(1.5*v[2])
		for c := range 3 {
			col := (g.pa[c] + g.pb[c]*math.Cos(2*math.Pi*(g.pc[c]*t+g.pd[c]))) * shade
			pix[4*x+c] = uint8(math.Round(255 * math.Max(0, math.Min(1, col))))
		}
		pix[4*x+3] = 255
	}
}
