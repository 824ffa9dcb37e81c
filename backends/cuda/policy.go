package cuda

import (
	"fmt"
	"math"
	"strings"
	"sync"
)

// Strategy is a way of copying weights from the host mapping to the device.
type Strategy string

const (
	// Naive calls cuMemcpyHtoD straight from the pageable mapping: the
	// driver stages through its own small pinned buffer (6.3 GB/s measured
	// on an H200 from a warm mapping).
	Naive Strategy = "naive"
	// Staged copies the mapping into pinned buffers (cuMemAllocHost) with
	// several host goroutines, rotating through the buffers while
	// cuMemcpyHtoDAsync on several streams drains them (33.7 GB/s with 8
	// host threads, 42.3 GB/s with 16). On a cold model the host copy is
	// what faults the pages in, so disk reads overlap the device copies.
	Staged Strategy = "staged"
	// Registered page-locks the mapping with cuMemHostRegister
	// (read-only) and copies from it directly: 55.3 GB/s, after a
	// registration that took 103 ms for 4 GiB. The registration is undone
	// before Generate returns (the backend must not hold the mapping), so
	// it is paid on every upload.
	Registered Strategy = "registered"
	// Auto picks, per upload, the strategy with the lowest estimated time
	// (see policy).
	Auto Strategy = "auto"
)

// ParseStrategy parses a strategy name; "" means Auto.
func ParseStrategy(s string) (Strategy, error) {
	switch st := Strategy(strings.ToLower(strings.TrimSpace(s))); st {
	case "":
		return Auto, nil
	case Naive, Staged, Registered, Auto:
		return st, nil
	default:
		return "", fmt.Errorf("cuda: unknown upload strategy %q (want auto, naive, staged or registered)", s)
	}
}

// Figures measured on an H200 (see docs/gpu.md); the policy's starting
// estimates until it has measured this machine.
const (
	factNaiveBps        = 6.3e9
	factPinnedBps       = 55.3e9
	factStaged8Bps      = 33.7e9
	factStaged16Bps     = 42.3e9
	factRegisterSeconds = 0.103 // for 4 GiB
	factRegisterBytes   = 4 << 30
)

// stagedEstimate returns the expected staged rate with threads host
// copy goroutines: the measured points, linear between them, capped at
// 16 threads' figure and proportional below 8.
func stagedEstimate(threads int) float64 {
	switch {
	case threads >= 16:
		return factStaged16Bps
	case threads >= 8:
		return factStaged8Bps + (factStaged16Bps-factStaged8Bps)*float64(threads-8)/8
	default:
		return factStaged8Bps * float64(max(threads, 1)) / 8
	}
}

// policy chooses an upload strategy by estimated time and learns each
// strategy's rate from the uploads it times. Safe for concurrent use.
type policy struct {
	mu sync.Mutex
	// fixed, when not Auto, is used for every upload.
	fixed Strategy
	// rate is bytes per second of the copy itself, per strategy.
	rate map[Strategy]float64
	// regSecPerByte is the registration cost of Registered.
	regSecPerByte float64
	// measured marks rates that come from this machine.
	measured map[Strategy]bool
}

// newPolicy starts from the measured H200 figures, with the staged rate
// for the given number of host copy goroutines.
func newPolicy(fixed Strategy, threads int) *policy {
	return &policy{
		fixed: fixed,
		rate: map[Strategy]float64{
			Naive:      factNaiveBps,
			Staged:     stagedEstimate(threads),
			Registered: factPinnedBps,
		},
		regSecPerByte: factRegisterSeconds / factRegisterBytes,
		measured:      map[Strategy]bool{},
	}
}

// estimate returns the expected seconds to upload n bytes with s.
func (p *policy) estimate(s Strategy, n int64) float64 {
	t := float64(n) / p.rate[s]
	if s == Registered {
		t += float64(n) * p.regSecPerByte
	}
	return t
}

// choose returns the strategy for an upload of n bytes: the fixed one if
// set, else the one with the lowest estimate (ties go to the first of
// staged, registered, naive).
func (p *policy) choose(n int64) Strategy {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fixed != Auto && p.fixed != "" {
		return p.fixed
	}
	best, bestT := Staged, math.Inf(1)
	for _, s := range []Strategy{Staged, Registered, Naive} {
		if t := p.estimate(s, n); t < bestT {
			best, bestT = s, t
		}
	}
	return best
}

// observe records an upload of n bytes with s that took copySec seconds
// of copying plus setupSec of setup (registration). The first sample
// replaces the built-in figure; later ones are averaged in with weight
// 1/2, so the policy follows this machine without jumping on one noisy
// upload. Uploads under 64 MiB are too short to time and are ignored.
func (p *policy) observe(s Strategy, n int64, copySec, setupSec float64) {
	if n < 64<<20 || copySec <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := float64(n) / copySec
	if p.measured[s] {
		r = (r + p.rate[s]) / 2
	}
	p.rate[s] = r
	p.measured[s] = true
	if s == Registered && setupSec > 0 {
		p.regSecPerByte = setupSec / float64(n)
	}
}
