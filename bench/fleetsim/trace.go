// Package fleetsim is a trace-driven simulator of model delivery to a GPU
// fleet: no bytes move, only their rates. It replays one trace of job
// arrivals (many models, with launches of new ones) against a fleet of up
// to thousands of hosts under three policies — every host fetching from
// S3, hosts fetching from their peers (one S3 fetch per model per fleet),
// and peers with warmth-aware autoscaling — and reports what S3 sends, how
// long hosts take to warm up and how many jobs wait for a cold start.
//
// The model of the world is deliberately small (see Config): hosts with a
// NIC, a serving cap and an LRU disk cache; S3 with one aggregate
// bandwidth; max-min fair sharing of every bottleneck; jobs routed to a
// warm host first, as genfleet's scheduler does; an autoscaler that adds
// and removes hosts. It is for comparing policies on the same trace, not
// for predicting absolute times.
package fleetsim

import (
	"math"
	"math/rand/v2"
	"sort"
)

// Model is one model of a trace.
type Model struct {
	Size    float64 // bytes
	JobTime float64 // seconds one job on it takes on a warm host
}

// Arrival is one job: when it is submitted and for which model.
type Arrival struct {
	T     float64
	Model int
}

// Trace is what a run replays.
type Trace struct {
	Models   []Model
	Jobs     []Arrival // sorted by T
	Duration float64   // seconds
}

// TraceConfig shapes Generate's trace.
type TraceConfig struct {
	// Models is how many models the trace has before launches; Launches
	// adds that many new models, each launched at an even spread through
	// the trace with a burst of demand.
	Models, Launches int
	// Duration is the trace's length in seconds.
	Duration float64
	// Rate is the background job rate (jobs/s), spread over the models
	// with Zipf popularity (exponent Zipf).
	Rate, Zipf float64
	// LaunchRate is a launched model's peak job rate; demand ramps up over
	// a minute, holds for LaunchHold seconds, then decays by half every
	// LaunchHold.
	LaunchRate, LaunchHold float64
	// Bursts are short spikes of demand on already popular models (one of
	// the five most popular, by turns), evenly spread: BurstRate more
	// jobs/s for BurstLen seconds. Hosts that hold those models warm can
	// drain them; new hosts would arrive after the spike.
	Bursts              int
	BurstRate, BurstLen float64
	// MinSize and MaxSize bound model sizes (log-uniform); launched models
	// are MaxSize/2.
	MinSize, MaxSize float64
	// JobTime is a job's mean run time; each model's is within ±50% of it.
	JobTime float64
	Seed    uint64
}

// DefaultTrace is an hour of a 100-model fleet: 20 jobs/s in the
// background, three launches of a 7 GB model at 30 jobs/s each, and twelve
// 30-second spikes of 40 jobs/s on popular models.
func DefaultTrace() TraceConfig {
	return TraceConfig{Models: 100, Launches: 3, Duration: 3600, Rate: 20, Zipf: 1.1,
		LaunchRate: 30, LaunchHold: 600, Bursts: 12, BurstRate: 40, BurstLen: 30,
		MinSize: 2e9, MaxSize: 14e9, JobTime: 8, Seed: 1}
}

// Generate makes a trace; the same config gives the same trace.
func Generate(c TraceConfig) Trace {
	r := rand.New(rand.NewPCG(c.Seed, 0x6a09e667f3bcc909))
	tr := Trace{Duration: c.Duration}
	for range c.Models {
		size := c.MinSize * math.Exp(r.Float64()*math.Log(c.MaxSize/c.MinSize))
		tr.Models = append(tr.Models, Model{Size: size, JobTime: c.JobTime * (0.5 + r.Float64())})
	}
	// Background: Poisson arrivals, Zipf over the base models.
	weights := make([]float64, c.Models)
	var total float64
	for i := range weights {
		weights[i] = 1 / math.Pow(float64(i+1), c.Zipf)
		total += weights[i]
	}
	cum := make([]float64, c.Models)
	acc := 0.0
	for i, w := range weights {
		acc += w / total
		cum[i] = acc
	}
	if c.Rate > 0 && c.Models > 0 {
		for t := r.ExpFloat64() / c.Rate; t < c.Duration; t += r.ExpFloat64() / c.Rate {
			m := sort.SearchFloat64s(cum, r.Float64())
			tr.Jobs = append(tr.Jobs, Arrival{T: t, Model: min(m, c.Models-1)})
		}
	}
	// Launches: thinning of a Poisson process with the launch's rate curve.
	for l := range c.Launches {
		id := len(tr.Models)
		tr.Models = append(tr.Models, Model{Size: c.MaxSize / 2, JobTime: c.JobTime})
		start := c.Duration * float64(l+1) / float64(c.Launches+1) * 0.8
		rate := func(t float64) float64 {
			d := t - start
			switch {
			case d < 0:
				return 0
			case d < 60:
				return c.LaunchRate * d / 60
			case d < 60+c.LaunchHold:
				return c.LaunchRate
			}
			return c.LaunchRate * math.Pow(0.5, (d-60-c.LaunchHold)/c.LaunchHold)
		}
		for t := start + r.ExpFloat64()/c.LaunchRate; t < c.Duration; t += r.ExpFloat64() / c.LaunchRate {
			if r.Float64() < rate(t)/c.LaunchRate {
				tr.Jobs = append(tr.Jobs, Arrival{T: t, Model: id})
			}
		}
	}
	for b := range c.Bursts {
		if c.BurstRate <= 0 || c.Models == 0 {
			break
		}
		start := c.Duration * (float64(b) + 0.5) / float64(c.Bursts)
		m := b % min(5, c.Models)
		for t := start + r.ExpFloat64()/c.BurstRate; t < start+c.BurstLen && t < c.Duration; t += r.ExpFloat64() / c.BurstRate {
			tr.Jobs = append(tr.Jobs, Arrival{T: t, Model: m})
		}
	}
	sort.Slice(tr.Jobs, func(i, j int) bool { return tr.Jobs[i].T < tr.Jobs[j].T })
	return tr
}
