package bench

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/genfleet/genfleet/bench/fleetsim"
)

// SimOptions is one run of Sim: a trace and a fleet for package fleetsim.
type SimOptions struct {
	// Hosts caps the fleet; Models is how many models the trace has
	// before its launches; Duration its length in seconds.
	Hosts, Models int
	Duration      float64
	// S3Bandwidth is S3's bandwidth to the whole fleet and PeerBandwidth
	// what each host serves its peers (bytes/s).
	S3Bandwidth, PeerBandwidth float64
	Seed                       uint64
}

// SimResult compares the three policies on one trace; S3 only is the
// anchor of the ratios.
type SimResult struct {
	Hosts    int     `json:"hosts"`
	Models   int     `json:"models"`
	Jobs     int     `json:"jobs"`
	Duration float64 `json:"duration_s"`
	// ModelBytes is the size of all the trace's models together: what S3
	// sends at least, once each.
	ModelBytes float64           `json:"model_bytes"`
	Policies   []fleetsim.Result `json:"policies"`
	// S3BytesVsS3Only is, per policy, its S3 bytes over S3 only's.
	S3BytesVsS3Only map[fleetsim.Policy]float64 `json:"s3_bytes_vs_s3_only"`
}

// Sim generates a trace (fleetsim.DefaultTrace, scaled by the options) and
// replays it under each policy.
func Sim(ctx context.Context, o SimOptions, progress io.Writer) (*SimResult, error) {
	progress = orDiscard(progress)
	if o.Hosts < 1 || o.Models < 1 || o.Duration <= 0 {
		return nil, errors.New("--hosts, --models and --duration must be above 0")
	}
	tc := fleetsim.DefaultTrace()
	tc.Models, tc.Duration, tc.Seed = o.Models, o.Duration, o.Seed
	tr := fleetsim.Generate(tc)
	c := fleetsim.DefaultConfig()
	c.MaxHosts = o.Hosts
	c.StartHosts = min(c.StartHosts, o.Hosts)
	c.MinHosts = min(c.MinHosts, o.Hosts)
	if o.S3Bandwidth > 0 {
		c.S3 = o.S3Bandwidth
	}
	if o.PeerBandwidth > 0 {
		c.PeerUp = o.PeerBandwidth
	}
	res := &SimResult{Hosts: o.Hosts, Models: len(tr.Models), Jobs: len(tr.Jobs), Duration: tr.Duration,
		S3BytesVsS3Only: map[fleetsim.Policy]float64{}}
	for _, m := range tr.Models {
		res.ModelBytes += m.Size
	}
	fmt.Fprintf(progress, "trace: %d jobs on %d models over %.0fs; fleet up to %d hosts\n", len(tr.Jobs), len(tr.Models), tr.Duration, o.Hosts)
	for _, p := range fleetsim.Policies {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r := fleetsim.Run(c, tr, p)
		fmt.Fprintf(progress, "%-13s S3 %.2f TB, peers %.2f TB, %d cold starts, warm p50 %.1fs p95 %.1fs, wait p95 %.1fs, %.0f host-hours\n",
			p, r.S3Bytes/1e12, r.PeerBytes/1e12, r.ColdStarts, r.WarmP50, r.WarmP95, r.WaitP95, r.HostHours)
		res.Policies = append(res.Policies, r)
	}
	for _, r := range res.Policies {
		res.S3BytesVsS3Only[r.Policy] = round3(r.S3Bytes / res.Policies[0].S3Bytes)
	}
	return res, nil
}
