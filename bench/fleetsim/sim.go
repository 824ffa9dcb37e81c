package fleetsim

import (
	"math"
	"slices"
	"sort"

	"github.com/genfleet/genfleet/internal/defaults"
)

// Policy is how hosts get models and how the fleet scales.
type Policy string

const (
	// S3Only: every host fetches every model it lacks from S3; the fleet
	// scales on queue depth (jobs queued and running, every job alike).
	S3Only Policy = "s3-only"
	// Peers: a host fetches from peers that hold the model or its parts;
	// when none does, one host (the elected one) pulls it from S3 and the
	// others stream from it and each other. Scaling on queue depth.
	Peers Policy = "peers"
	// PeersWarmth: Peers, scaled on the warmth-aware signal
	// (scheduler.Plan): a backlog no warm host takes asks for new hosts, one
	// that warm hosts drain before a new host could be warm does not.
	PeersWarmth Policy = "peers+warmth"
	// S3Warmth: S3Only's transfers with PeersWarmth's scaling, to tell
	// what the signal is worth where cold starts are dear.
	S3Warmth Policy = "s3-only+warmth"
)

// Policies are the three the comparison is about, in the order it shows
// them, then S3Warmth.
var Policies = []Policy{S3Only, Peers, PeersWarmth, S3Warmth}

// fromPeers reports whether p fetches from peers.
func (p Policy) fromPeers() bool { return p == Peers || p == PeersWarmth }

// warmthAware reports whether p scales on the warmth-aware signal.
func (p Policy) warmthAware() bool { return p == PeersWarmth || p == S3Warmth }

// Config is the fleet and its limits. Zero fields take the defaults in
// DefaultConfig.
type Config struct {
	// MaxHosts caps the fleet; MinHosts is its floor; StartHosts are up at
	// the start, each holding one of the WarmModels most popular models
	// (negative: none; a cold fleet).
	MaxHosts, MinHosts, StartHosts, WarmModels int
	// HostDown is a host's download bandwidth (bytes/s); PeerUp what its
	// blob server sends to peers (bytes/s, its --peer-bandwidth).
	HostDown, PeerUp float64
	// S3 is S3's bandwidth to the whole fleet (bytes/s): per-prefix limits
	// and the egress budget, in one figure.
	S3 float64
	// LoadRate is how fast a fetched model is loaded onto the device
	// (bytes/s); CacheBytes each host's disk cache (LRU).
	LoadRate, CacheBytes float64
	// BootTime is how long a new host takes before it can take jobs.
	BootTime float64
	// ScaleEvery is how often the autoscaler decides; IdleBeforeRemove is
	// its scale-down window: the fleet shrinks only to the highest signal
	// of that long (the HPA's stabilization window), by removing idle
	// hosts.
	ScaleEvery, IdleBeforeRemove float64
	// JobsPerWorker is the autoscaler's target of jobs (running and
	// queued) per host, and the router's backlog cap per warm host.
	JobsPerWorker int
	// Step is the simulation's time step in seconds.
	Step float64
}

// DefaultConfig is a fleet of up to 1,000 single-GPU hosts on 25 Gbit/s
// NICs, serving peers at 1 GB/s each, behind 25 GB/s (200 Gbit/s) of S3.
func DefaultConfig() Config {
	return Config{MaxHosts: 1000, MinHosts: 50, StartHosts: 200, WarmModels: 10,
		HostDown: 3.125e9, PeerUp: 1e9, S3: 25e9, LoadRate: 2e9, CacheBytes: 100e9,
		BootTime: 60, ScaleEvery: 15, IdleBeforeRemove: 300, JobsPerWorker: 2, Step: 0.1}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	defaults.Positive(&c.MaxHosts, d.MaxHosts)
	defaults.Positive(&c.MinHosts, d.MinHosts)
	defaults.Positive(&c.StartHosts, d.StartHosts)
	defaults.Zero(&c.WarmModels, d.WarmModels) // negative: none
	defaults.Positive(&c.JobsPerWorker, d.JobsPerWorker)
	defaults.Positive(&c.HostDown, d.HostDown)
	defaults.Positive(&c.PeerUp, d.PeerUp)
	defaults.Positive(&c.S3, d.S3)
	defaults.Positive(&c.LoadRate, d.LoadRate)
	defaults.Positive(&c.CacheBytes, d.CacheBytes)
	defaults.Positive(&c.BootTime, d.BootTime)
	defaults.Positive(&c.ScaleEvery, d.ScaleEvery)
	defaults.Positive(&c.IdleBeforeRemove, d.IdleBeforeRemove)
	defaults.Positive(&c.Step, d.Step)
	return c
}

// Result is one policy's run of a trace.
type Result struct {
	Policy Policy `json:"policy"`
	// S3Bytes is what S3 sent; PeerBytes what hosts sent each other.
	S3Bytes   float64 `json:"s3_bytes"`
	PeerBytes float64 `json:"peer_bytes"`
	// Fetches are model downloads completed; ColdStarts the jobs that ran
	// on a host that had to fetch their model first.
	Fetches    int `json:"fetches"`
	ColdStarts int `json:"cold_starts"`
	// WarmP50/P95/Max are times from a fetch's start until the model was
	// loaded (seconds).
	WarmP50 float64 `json:"time_to_warm_p50_s"`
	WarmP95 float64 `json:"time_to_warm_p95_s"`
	WarmMax float64 `json:"time_to_warm_max_s"`
	// WaitP50/P95 are jobs' times from submission to start (seconds).
	WaitP50 float64 `json:"job_wait_p50_s"`
	WaitP95 float64 `json:"job_wait_p95_s"`
	// Jobs ran to the end; Unfinished had not by the end of the run (the
	// trace plus an hour to drain).
	Jobs       int `json:"jobs"`
	Unfinished int `json:"unfinished"`
	// PeakHosts is the most hosts up or booting at once; HostHours what
	// the fleet cost.
	PeakHosts int     `json:"peak_hosts"`
	HostHours float64 `json:"host_hours"`
}

type host struct {
	up        bool    // counted in the fleet (booting or ready)
	ready     float64 // time from which it takes jobs
	cache     map[int]float64
	cached    float64 // bytes
	job       int     // running (or loading for) job; -1: idle
	busyUntil float64 // when its job ends (job ≥ 0 and not fetching)
	fetch     *fetch
	idleSince float64
}

type fetch struct {
	host, model, job int
	got, start       float64
	leader           bool // pulling from S3 for the fleet (Peers)
	loadUntil        float64
	rate, s3rate     float64
}

type job struct {
	model    int
	arrive   float64
	start    float64
	started  bool
	finished bool
}

type sim struct {
	c      Config
	tr     Trace
	p      Policy
	t      float64
	hosts  []*host
	jobs   []job
	queued [][]int // per model: pending job indices, oldest first
	fetch  []*fetch
	res    Result
	warm   []float64 // times to warm
	waits  []float64
	cold   map[int]float64 // model → measured time to warm (EWMA)
	// recent are the autoscaler's signals of the last IdleBeforeRemove
	// seconds: (time, desired hosts).
	recent [][2]float64
}

// Run replays tr on a fleet c under policy p.
func Run(c Config, tr Trace, p Policy) Result {
	c = c.withDefaults()
	s := &sim{c: c, tr: tr, p: p, queued: make([][]int, len(tr.Models)), cold: map[int]float64{}}
	s.res.Policy = p
	for i := range c.StartHosts {
		h := s.addHost(0)
		h.ready = 0
		if c.WarmModels > 0 && len(tr.Models) > 0 {
			m := i % min(c.WarmModels, len(tr.Models))
			h.cache[m] = 0
			h.cached = tr.Models[m].Size
		}
	}
	// The fleet at the start counts as the autoscaler's recent signal, so
	// that it is not cut down before the first window has passed.
	s.recent = [][2]float64{{0, float64(c.StartHosts)}}
	s.jobs = make([]job, len(tr.Jobs))
	next := 0
	end := tr.Duration + 3600
	nextScale := 0.0
	for s.t = 0; s.t < end; s.t += c.Step {
		for next < len(tr.Jobs) && tr.Jobs[next].T <= s.t {
			a := tr.Jobs[next]
			s.jobs[next] = job{model: a.Model, arrive: a.T}
			s.queued[a.Model] = append(s.queued[a.Model], next)
			next++
		}
		s.transfer()
		s.complete()
		s.dispatch()
		if s.t >= nextScale {
			s.scale()
			nextScale = s.t + c.ScaleEvery
		}
		up := 0
		for _, h := range s.hosts {
			if h.up {
				up++
			}
		}
		s.res.PeakHosts = max(s.res.PeakHosts, up)
		s.res.HostHours += float64(up) * c.Step / 3600
		if next == len(tr.Jobs) && s.res.Jobs == len(tr.Jobs) {
			break
		}
	}
	s.res.Unfinished = len(tr.Jobs) - s.res.Jobs
	s.res.WarmP50, s.res.WarmP95, s.res.WarmMax = pct(s.warm, 0.5), pct(s.warm, 0.95), pct(s.warm, 1)
	s.res.WaitP50, s.res.WaitP95 = pct(s.waits, 0.5), pct(s.waits, 0.95)
	return s.res
}

func (s *sim) addHost(ready float64) *host {
	h := &host{up: true, ready: ready, cache: map[int]float64{}, job: -1, idleSince: ready}
	for i, old := range s.hosts {
		if !old.up { // reuse the slot of a removed host
			s.hosts[i] = h
			return h
		}
	}
	s.hosts = append(s.hosts, h)
	return h
}

// transfer moves the bytes of every download for one step: max-min fair
// shares of S3 (the downloads pulling from it) and of each model's swarm
// (its holders' and downloaders' serving caps), each download capped by
// its host's NIC and, in a swarm without a complete copy, by the leader's
// progress.
func (s *sim) transfer() {
	if len(s.fetch) == 0 {
		return
	}
	dt := s.c.Step
	var fromS3 []*fetch
	byModel := map[int][]*fetch{}
	for _, f := range s.fetch {
		f.rate, f.s3rate = 0, 0
		if f.got >= s.tr.Models[f.model].Size {
			continue // loading
		}
		byModel[f.model] = append(byModel[f.model], f)
	}
	holders := map[int]int{}
	if s.p.fromPeers() {
		for _, h := range s.hosts {
			if h.up && s.t >= h.ready {
				for m := range h.cache {
					holders[m]++
				}
			}
		}
	}
	models := make([]int, 0, len(byModel))
	for m := range byModel {
		models = append(models, m)
	}
	slices.Sort(models) // map order would make runs differ
	for _, m := range models {
		fs := byModel[m]
		if !s.p.fromPeers() {
			fromS3 = append(fromS3, fs...)
			continue
		}
		if holders[m] > 0 {
			for _, f := range fs {
				f.leader = false
			}
			s.share(fs, s.c.PeerUp*float64(holders[m]+seeding(fs)), math.Inf(1))
			continue
		}
		// No complete copy: one leader pulls from S3, the others follow.
		lead := fs[0]
		for _, f := range fs {
			if f.leader || f.got > lead.got {
				lead = f
			}
		}
		for _, f := range fs {
			f.leader = f == lead
		}
		fromS3 = append(fromS3, lead)
		var rest []*fetch
		for _, f := range fs {
			if f != lead {
				rest = append(rest, f)
			}
		}
		s.share(rest, s.c.PeerUp*float64(seeding(fs)), lead.got)
	}
	s.shareS3(fromS3)
	for _, m := range models {
		for _, f := range byModel[m] {
			size := s.tr.Models[f.model].Size
			add := math.Min(f.rate*dt, size-f.got)
			s3 := math.Min(f.s3rate*dt, add)
			f.got += add
			s.res.S3Bytes += s3
			s.res.PeerBytes += add - s3
		}
	}
}

// seeding counts the downloads that have bytes to give.
func seeding(fs []*fetch) int {
	n := 0
	for _, f := range fs {
		if f.got > 0 {
			n++
		}
	}
	return n
}

// share gives fs max-min fair shares of capacity, each capped by the NIC
// and by how far ahead of it the bytes exist (limit).
func (s *sim) share(fs []*fetch, capacity, limit float64) {
	caps := make([]float64, len(fs))
	for i, f := range fs {
		caps[i] = s.c.HostDown
		if !math.IsInf(limit, 1) {
			caps[i] = math.Min(caps[i], math.Max(0, limit-f.got)/s.c.Step)
		}
	}
	rates := maxMin(capacity, caps)
	for i, f := range fs {
		f.rate += rates[i]
	}
}

// shareS3 gives the downloads from S3 max-min fair shares of S3.
func (s *sim) shareS3(fs []*fetch) {
	caps := make([]float64, len(fs))
	for i := range fs {
		caps[i] = s.c.HostDown
	}
	rates := maxMin(s.c.S3, caps)
	for i, f := range fs {
		f.rate += rates[i]
		f.s3rate += rates[i]
	}
}

// maxMin splits capacity among demands capped by caps, max-min fairly.
func maxMin(capacity float64, caps []float64) []float64 {
	out := make([]float64, len(caps))
	idx := make([]int, len(caps))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return caps[idx[a]] < caps[idx[b]] })
	left := capacity
	for k, i := range idx {
		fair := left / float64(len(idx)-k)
		out[i] = math.Min(caps[i], fair)
		left -= out[i]
	}
	return out
}

// complete ends finished downloads (the model goes into the cache, then
// loads) and finished jobs.
func (s *sim) complete() {
	keep := s.fetch[:0]
	for _, f := range s.fetch {
		size := s.tr.Models[f.model].Size
		h := s.hosts[f.host]
		if f.got < size {
			keep = append(keep, f)
			continue
		}
		if f.loadUntil == 0 {
			f.loadUntil = s.t + size/s.c.LoadRate
			s.install(h, f.model)
			s.res.Fetches++
		}
		if s.t < f.loadUntil {
			keep = append(keep, f)
			continue
		}
		d := f.loadUntil - f.start
		s.warm = append(s.warm, d)
		if old, ok := s.cold[f.model]; ok {
			s.cold[f.model] = 0.7*old + 0.3*d
		} else {
			s.cold[f.model] = d
		}
		h.fetch = nil
		s.run(h, f.job, f.loadUntil)
	}
	s.fetch = keep
	for _, h := range s.hosts {
		if h.up && h.job >= 0 && h.fetch == nil && s.t >= h.busyUntil {
			j := &s.jobs[h.job]
			j.finished = true
			s.res.Jobs++
			h.cache[j.model] = s.t
			h.job = -1
			h.idleSince = s.t
		}
	}
}

// install puts model m into h's cache, evicting least recently used
// models (never one in use) to stay within CacheBytes.
func (s *sim) install(h *host, m int) {
	h.cache[m] = s.t
	h.cached += s.tr.Models[m].Size
	for h.cached > s.c.CacheBytes {
		victim, oldest := -1, math.Inf(1)
		for mm, used := range h.cache {
			if mm != m && (used < oldest || used == oldest && mm < victim) {
				victim, oldest = mm, used
			}
		}
		if victim < 0 {
			return
		}
		delete(h.cache, victim)
		h.cached -= s.tr.Models[victim].Size
	}
}

// run starts job j on h at time at.
func (s *sim) run(h *host, j int, at float64) {
	jb := &s.jobs[j]
	jb.start, jb.started = at, true
	s.waits = append(s.waits, at-jb.arrive)
	h.job = j
	h.busyUntil = at + s.tr.Models[jb.model].JobTime
	h.cache[jb.model] = at
}

// dispatch routes queued jobs as genfleet's scheduler does: to an idle
// host that holds the model; while warm hosts have room in their backlog
// (JobsPerWorker each) the job waits for them; else to any idle host,
// which fetches the model first (a cold start).
func (s *sim) dispatch() {
	var idle []*host
	for _, h := range s.hosts {
		if h.up && s.t >= h.ready && h.job < 0 && h.fetch == nil {
			idle = append(idle, h)
		}
	}
	if len(idle) == 0 {
		return
	}
	// Warm first.
	for _, h := range idle {
		best, bestAt := -1, math.Inf(1)
		for m := range h.cache {
			if q := s.queued[m]; len(q) > 0 && (s.jobs[q[0]].arrive < bestAt || s.jobs[q[0]].arrive == bestAt && m < best) {
				best, bestAt = m, s.jobs[q[0]].arrive
			}
		}
		if best >= 0 {
			j := s.queued[best][0]
			s.queued[best] = s.queued[best][1:]
			s.run(h, j, s.t)
		}
	}
	warmHosts := s.warmHosts()
	for _, h := range idle {
		if h.job >= 0 {
			continue
		}
		// The oldest job whose warm hosts' backlogs are full.
		best, bestAt := -1, math.Inf(1)
		for m, q := range s.queued {
			if len(q) > warmHosts[m]*s.c.JobsPerWorker && s.jobs[q[0]].arrive < bestAt {
				best, bestAt = m, s.jobs[q[0]].arrive
			}
		}
		if best < 0 {
			return
		}
		j := s.queued[best][0]
		s.queued[best] = s.queued[best][1:]
		s.res.ColdStarts++
		h.job = j
		f := &fetch{host: slices.Index(s.hosts, h), model: best, job: j, start: s.t}
		h.fetch = f
		s.fetch = append(s.fetch, f)
	}
}

// warmHosts counts, per model, the ready hosts that hold it.
func (s *sim) warmHosts() []int {
	n := make([]int, len(s.tr.Models))
	for _, h := range s.hosts {
		if h.up && s.t >= h.ready {
			for m := range h.cache {
				n[m]++
			}
		}
	}
	return n
}

// scale adds or removes hosts toward the policy's desired count.
func (s *sim) scale() {
	J := s.c.JobsPerWorker
	running, pending := 0, 0
	for _, h := range s.hosts {
		if h.up && h.job >= 0 {
			running++
		}
	}
	for _, q := range s.queued {
		pending += len(q)
	}
	desired := (running + pending + J - 1) / J
	if s.p.warmthAware() {
		desired = s.warmthDesired(running)
	}
	up := 0
	for _, h := range s.hosts {
		if h.up {
			up++
		}
	}
	desired = max(desired, s.c.MinHosts)
	if desired >= up {
		for range min(desired, s.c.MaxHosts) - up {
			s.addHost(s.t + s.c.BootTime)
		}
	}
	// Scale in to the highest signal of the last IdleBeforeRemove seconds
	// (the HPA's scale-down stabilization window), removing idle hosts,
	// longest idle first.
	s.recent = append(s.recent, [2]float64{s.t, float64(desired)})
	for len(s.recent) > 0 && s.recent[0][0] < s.t-s.c.IdleBeforeRemove {
		s.recent = s.recent[1:]
	}
	for _, r := range s.recent {
		desired = max(desired, int(r[1]))
	}
	if desired >= up {
		return
	}
	var idle []*host
	for _, h := range s.hosts {
		if h.up && s.t >= h.ready && h.job < 0 && h.fetch == nil {
			idle = append(idle, h)
		}
	}
	sort.Slice(idle, func(a, b int) bool { return idle[a].idleSince < idle[b].idleSince })
	for _, h := range idle {
		if up <= desired {
			break
		}
		h.up = false
		up--
	}
}

// warmthDesired is scheduler.Plan's rule over the simulated fleet.
func (s *sim) warmthDesired(running int) int {
	J := s.c.JobsPerWorker
	warm := s.warmHosts()
	absorbed, extra := 0, 0
	for m, q := range s.queued {
		n := len(q)
		if n == 0 {
			continue
		}
		mod := s.tr.Models[m]
		cold, ok := s.cold[m]
		if !ok {
			cold = mod.Size/s.c.HostDown + mod.Size/s.c.LoadRate
		}
		switch w := warm[m]; {
		case w == 0:
			extra += (n + J - 1) / J
		case n <= w*J:
			absorbed += n
		default:
			absorbed += w * J
			over := n - w*J
			if float64(over)*mod.JobTime/float64(w) > cold {
				extra += (over + J - 1) / J
			}
		}
	}
	return (running+absorbed+J-1)/J + extra
}

// pct returns the p-quantile (0..1) of xs, nearest rank; 0 for none.
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return math.Round(s[max(i, 0)]*10) / 10
}
