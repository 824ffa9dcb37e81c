package cuda

import (
	"testing"
	"time"
)

func TestParseStrategy(t *testing.T) {
	for in, want := range map[string]Strategy{"": Auto, "auto": Auto, " Staged ": Staged, "naive": Naive, "REGISTERED": Registered} {
		if got, err := ParseStrategy(in); err != nil || got != want {
			t.Errorf("ParseStrategy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseStrategy("fast"); err == nil {
		t.Error("ParseStrategy(fast) succeeded")
	}
}

func TestStagedEstimate(t *testing.T) {
	tests := []struct {
		workers int
		want    float64
	}{
		{1, factStagedWorkerBps}, {0, factStagedWorkerBps}, {4, 4 * factStagedWorkerBps},
		{6, 6 * factStagedWorkerBps}, {7, factStagedMaxBps}, {16, factStagedMaxBps},
	}
	for _, tt := range tests {
		if got := stagedEstimate(tt.workers); got != tt.want {
			t.Errorf("stagedEstimate(%d) = %g, want %g", tt.workers, got, tt.want)
		}
	}
}

func TestPolicyChoose(t *testing.T) {
	tests := []struct {
		name    string
		fixed   Strategy
		threads int
		n       int64
		want    Strategy
	}{
		// 4 GiB: staged with 8 workers ≈ 0.089 s; registered ≈ 0.103 + 0.112 s.
		{name: "16 workers stage", fixed: Auto, threads: 16, n: 4 << 30, want: Staged},
		{name: "8 workers stage", fixed: Auto, threads: 8, n: 4 << 30, want: Staged},
		// 2 workers: staged ≈ 13.8 GB/s, so registration pays.
		{name: "2 threads register", fixed: Auto, threads: 2, n: 4 << 30, want: Registered},
		{name: "fixed naive", fixed: Naive, threads: 16, n: 4 << 30, want: Naive},
		{name: "fixed registered", fixed: Registered, threads: 16, n: 1, want: Registered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := newPolicy(tt.fixed, tt.threads).choose(tt.n); got != tt.want {
				t.Errorf("choose = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestPolicyObserve(t *testing.T) {
	p := newPolicy(Auto, 16)
	n := int64(4 << 30)
	if p.choose(n) != Staged {
		t.Fatal("precondition: staged first")
	}
	// This machine's staging turns out slow (host memory bandwidth):
	// registration now wins.
	p.observe(Staged, n, (4 * time.Second / 10).Seconds(), 0)
	if got := p.rate[Staged]; got < 10.7e9 || got > 10.8e9 {
		t.Errorf("staged rate after one sample %g, want ≈ 10.74e9", got)
	}
	if got := p.choose(n); got != Registered {
		t.Errorf("after a slow staged upload chose %s, want registered", got)
	}
	// A second sample is averaged in.
	p.observe(Staged, n, (2 * time.Second / 10).Seconds(), 0)
	if got := p.rate[Staged]; got < 16e9 || got > 16.2e9 {
		t.Errorf("staged rate after two samples %g, want ≈ 16.1e9", got)
	}
	// Registration cost is learnt too; small uploads are ignored.
	p.observe(Registered, n, 0.08, 1.0)
	if p.choose(n) != Staged {
		t.Error("after a 1 s registration still chose registered")
	}
	before := p.rate[Naive]
	p.observe(Naive, 1<<20, 1e-6, 0)
	if p.rate[Naive] != before {
		t.Error("a 1 MiB upload changed the estimate")
	}
}
