package fleetsim

import (
	"reflect"
	"testing"
)

// Fifty cold hosts start one job each on the same 10 GB model at once:
// from S3 alone S3 sends it fifty times, with peers once (the elected host
// pulls it, the others stream from it and from each other), and the hosts
// are warm sooner.
func TestOneModelManyHosts(t *testing.T) {
	const size = 10e9
	tr := Trace{Models: []Model{{Size: size, JobTime: 1}}, Duration: 60}
	for range 50 {
		tr.Jobs = append(tr.Jobs, Arrival{T: 0, Model: 0})
	}
	c := Config{StartHosts: 50, MinHosts: 50, MaxHosts: 50, WarmModels: -1}
	s3 := Run(c, tr, S3Only)
	peers := Run(c, tr, Peers)
	t.Logf("s3-only %+v\npeers %+v", s3, peers)
	if s3.Jobs != 50 || peers.Jobs != 50 || s3.ColdStarts != 50 || peers.ColdStarts != 50 {
		t.Fatalf("jobs %d/%d, cold starts %d/%d; want 50 each", s3.Jobs, peers.Jobs, s3.ColdStarts, peers.ColdStarts)
	}
	if s3.S3Bytes < 49.9*size || s3.S3Bytes > 50.1*size {
		t.Errorf("S3 only: S3 sent %.3g bytes, want 50 × the model", s3.S3Bytes)
	}
	if peers.S3Bytes < 0.99*size || peers.S3Bytes > 1.01*size {
		t.Errorf("peers: S3 sent %.3g bytes, want the model once", peers.S3Bytes)
	}
	if peers.WarmMax >= s3.WarmMax {
		t.Errorf("peers: every host warm after %vs, S3 only after %vs; want sooner", peers.WarmMax, s3.WarmMax)
	}
}

// The same trace and config give the same result.
func TestDeterministic(t *testing.T) {
	tc := DefaultTrace()
	tc.Duration, tc.Models, tc.Rate, tc.Launches, tc.Bursts = 300, 20, 5, 1, 2
	c := Config{MaxHosts: 100, StartHosts: 20}
	a, b := Run(c, Generate(tc), PeersWarmth), Run(c, Generate(tc), PeersWarmth)
	if !reflect.DeepEqual(a, b) || a.Jobs == 0 {
		t.Errorf("two runs differ (or ran nothing):\n%+v\n%+v", a, b)
	}
}

// The warmth-aware signal: a queue on a model no host holds asks for new
// hosts; the same queue on a model whose warm hosts drain it before a cold
// start would finish asks for none; a queue too long for them asks for more.
func TestWarmthDesired(t *testing.T) {
	tr := Trace{Models: []Model{{Size: 10e9, JobTime: 2}, {Size: 10e9, JobTime: 2}}}
	c := DefaultConfig().withDefaults()
	s := &sim{c: c, tr: tr, queued: make([][]int, 2), cold: map[int]float64{}}
	for range 4 { // hosts warm for model 0
		h := s.addHost(0)
		h.cache[0] = 0
	}
	queue := func(m, n int) {
		s.queued = make([][]int, 2)
		for range n {
			s.queued[m] = append(s.queued[m], 0)
		}
	}
	queue(1, 10) // cold
	if got := s.warmthDesired(0); got != 5 {
		t.Errorf("10 jobs on a cold model: %d hosts, want 5", got)
	}
	queue(0, 10) // 8 absorbed, 2 over: 2 × 2s / 4 hosts = 1s, well under a cold start
	if got := s.warmthDesired(0); got != 4 {
		t.Errorf("10 jobs on a model warm on 4 hosts: %d hosts, want 4 (the warm ones)", got)
	}
	queue(0, 1000) // 992 over: 496s on 4 hosts, much more than a cold start
	if got := s.warmthDesired(0); got != 4+496 {
		t.Errorf("1000 jobs on a model warm on 4 hosts: %d hosts, want %d", got, 4+496)
	}
}
