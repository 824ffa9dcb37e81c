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
	// driver stages through its own small pinned buffer (6.3–9.8 GB/s
	// measured on H200s from a warm mapping).
	Naive Strategy = "naive"
	// Staged runs staging workers, each an OS thread that copies chunks
	// of the mapping into its own pinned buffers (cuMemAllocHost) and
	// drains them with cuMemcpyHtoDAsync on its own stream (8 workers of
	// 4 × 2 MiB: 0.92 of the pinned ceiling on an H200, 0.87 on an H100). On a cold model the workers' copies are what fault the
	// pages in, so disk reads overlap the device copies.
	Staged Strategy = "staged"
	// Registered page-locks the mapping with cuMemHostRegister
	// (read-only) and copies from it directly at the pinned rate, after a
	// registration that took 73–112 ms for 4 GiB and followed by an
	// unregistration of 34 ms. The registration is undone before
	// Generate returns (the backend must not hold the mapping), so both
	// are paid on every upload.
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

// Figures measured on an H200 (docs/benchmarks.md, "upload"); the
// policy's starting estimates until it has measured this machine.
const (
	factNaiveBps = 6.3e9
	// factRegisteredBps is the registered copy with its unregistration:
	// 4 GiB in 77.5 ms + 34.4 ms.
	factRegisteredBps   = 38.4e9
	factRegisterSeconds = 0.103 // for 4 GiB
	factRegisterBytes   = 4 << 30
	// A staging worker (4 × 2 MiB) moves about 7 GB/s (H200: 1: 8.3,
	// 2: 14.1, 4: 27.8; H100 host: 7.5, 15.0, 27.7); 8 of them reached
	// 50.4 GB/s on the H200 and 48.3 on the H100, and more did not go much
	// faster.
	factStagedWorkerBps = 6.9e9
	factStagedMaxBps    = 48.3e9
)

// stagedEstimate returns the expected staged rate with the given number
// of staging workers: proportional to the workers, capped at the
// measured best.
func stagedEstimate(workers int) float64 {
	return min(float64(max(workers, 1))*factStagedWorkerBps, factStagedMaxBps)
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
// for the given number of staging workers.
func newPolicy(fixed Strategy, threads int) *policy {
	return &policy{
		fixed: fixed,
		rate: map[Strategy]float64{
			Naive:      factNaiveBps,
			Staged:     stagedEstimate(threads),
			Registered: factRegisteredBps,
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
