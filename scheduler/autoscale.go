package scheduler

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/job"
)

// Autoscaling that knows warmth. The queue-depth signal
// (genfleet_pool_desired_workers) counts every queued job alike, but a job
// for a model some host holds warm is taken by that host within
// milliseconds, while one for a model no host holds waits for a worker to
// fetch and load it: a cold start. Plan weighs the two: per device class it
// asks for new workers for a backlog no warm host will drain, and for none
// where warm hosts drain the backlog before a new worker could even be warm.
// docs/fleet.md ("Autoscaling") states the rule; KEDA reads it from
// GET /autoscale (infra/k8s/components/keda-warmth).

// Defaults of Plan when nothing was measured yet.
const (
	// DefaultColdStart is the cold start assumed for a model no worker
	// reported one for, in a class with no measurement to scale from.
	DefaultColdStart = 60 * time.Second
	// DefaultJobTime is the run time assumed for a job of a model no
	// worker reported one for, in a class with none either.
	DefaultJobTime = 10 * time.Second
)

// QueuedModel is one model's share of a device class's queued jobs.
type QueuedModel struct {
	Ref     string
	Class   string
	Digests []string // empty when unknown (a raw s3:// ref): then no host counts as warm
	Size    int64    // bytes of all its files; 0 when unknown
	Queued  int      // pending jobs in the class's pool and host queues
}

// ClassDemand is a device class's autoscaling signal and what it is made of.
type ClassDemand struct {
	Hosts   int `json:"hosts"`   // live hosts of the class
	Workers int `json:"workers"` // their worker processes
	Pending int `json:"pending"` // jobs waiting in the class's pool and host queues
	Active  int `json:"active"`  // jobs running
	// ColdPending are the pending jobs whose model no host of the class
	// holds warm.
	ColdPending int `json:"cold_pending"`
	// DesiredWorkers is the signal: worker processes the class wants.
	DesiredWorkers int `json:"desired_workers"`
	// ColdStartSecondsPerGiB is the class's median measured cold start
	// per GiB of model (0: none measured): how unmeasured models are
	// estimated.
	ColdStartSecondsPerGiB float64 `json:"cold_start_s_per_gib,omitempty"`
	// Models are the queued models (in GET /v1/autoscale only).
	Models []ModelDemand `json:"models,omitempty"`
}

// ModelDemand is one queued model's part in its class's signal.
type ModelDemand struct {
	Model  string `json:"model"`
	Queued int    `json:"queued"`
	// WarmHosts hold every file of the model resident at or above the
	// warm fraction; CachedHosts hold every file on disk (warm or not).
	WarmHosts   int `json:"warm_hosts"`
	CachedHosts int `json:"cached_hosts"`
	WarmWorkers int `json:"warm_workers"` // processes on the warm hosts
	// ColdStartSeconds is what a new worker pays before its first job on
	// the model, and where the figure comes from: measured (median of
	// what workers reported), estimated (the class's seconds per GiB ×
	// the model's size) or default.
	ColdStartSeconds float64 `json:"cold_start_s"`
	ColdStartFrom    string  `json:"cold_start_from"`
	JobSeconds       float64 `json:"job_s"`
	NewWorkers       int     `json:"new_workers"`
	Reason           string  `json:"reason"`
}

// AutoscalePolicy tunes Plan.
type AutoscalePolicy struct {
	// WarmFraction is the resident fraction at which a model counts as
	// warm on a host (the router's). Default 0.5.
	WarmFraction float64
	// JobsPerWorker is the jobs (running and queued) one worker process is
	// meant to carry. Default JobsPerWorker.
	JobsPerWorker int
}

// Plan computes each class's signal from what is queued and running and
// from the fleet's heartbeats (hosts merged, and per process for the
// measured cold starts and job times). It is a pure function.
//
// For a queued model m of class c with q jobs, warm hosts W running P
// worker processes with S slots, cold start C and job time T:
//
//	no warm host:          new_m = ⌈q / J⌉         (the backlog needs new workers)
//	q ≤ P·J:               new_m = 0               (warm hosts take it)
//	overflow o = q − P·J:  new_m = 0 when o·T/S ≤ C (drained before a new worker is warm)
//	                       new_m = ⌈o / J⌉ otherwise
//
// and desired(c) = ⌈(active + Σ min(q, P·J)) / J⌉ + Σ new_m, J being
// JobsPerWorker: the workers the running and warm-absorbed jobs keep busy,
// plus the new ones.
func Plan(p AutoscalePolicy, queued []QueuedModel, active map[string]int, hosts []HostView, hbs []job.Heartbeat) map[string]*ClassDemand {
	defaults.Positive(&p.WarmFraction, 0.5)
	defaults.Positive(&p.JobsPerWorker, JobsPerWorker)
	J := p.JobsPerWorker
	out := map[string]*ClassDemand{}
	class := func(c string) *ClassDemand {
		if out[c] == nil {
			out[c] = &ClassDemand{}
		}
		return out[c]
	}
	for _, h := range hosts {
		d := class(h.DeviceClass)
		d.Hosts++
		d.Workers += h.Processes
	}
	for c, n := range active {
		class(c).Active += n
	}
	m := measure(hbs)
	absorbed := map[string]int{}
	for _, q := range queued {
		d := class(q.Class)
		d.Pending += q.Queued
		md := ModelDemand{Model: q.Ref, Queued: q.Queued}
		warmSlots := 0
		for i := range hosts {
			h := &hosts[i]
			if h.DeviceClass != q.Class || len(q.Digests) == 0 {
				continue
			}
			res, ok := h.resident(q.Digests)
			if !ok {
				continue
			}
			md.CachedHosts++
			if res >= p.WarmFraction {
				md.WarmHosts++
				md.WarmWorkers += h.Processes
				warmSlots += max(h.Concurrency, 1)
			}
		}
		md.ColdStartSeconds, md.ColdStartFrom = m.coldStart(q)
		md.JobSeconds = m.jobTime(q)
		capacity := md.WarmWorkers * J
		switch {
		case md.WarmHosts == 0:
			d.ColdPending += q.Queued
			md.NewWorkers = ceilDiv(q.Queued, J)
			md.Reason = fmt.Sprintf("no %s host holds it warm: %d job(s) wait for new workers, each paying a cold start of about %.0fs", q.Class, q.Queued, md.ColdStartSeconds)
		case q.Queued <= capacity:
			absorbed[q.Class] += q.Queued
			md.Reason = fmt.Sprintf("%d warm host(s) take the %d job(s)", md.WarmHosts, q.Queued)
		default:
			absorbed[q.Class] += capacity
			over := q.Queued - capacity
			drain := float64(over) * md.JobSeconds / float64(max(warmSlots, 1))
			if drain <= md.ColdStartSeconds {
				md.Reason = fmt.Sprintf("warm hosts drain the %d job(s) over their share in about %.0fs, before a new worker would be warm (%.0fs)", over, drain, md.ColdStartSeconds)
			} else {
				md.NewWorkers = ceilDiv(over, J)
				md.Reason = fmt.Sprintf("warm hosts would need about %.0fs for the %d job(s) over their share, longer than a cold start (%.0fs)", drain, over, md.ColdStartSeconds)
			}
		}
		d.DesiredWorkers += md.NewWorkers
		d.Models = append(d.Models, md)
	}
	for c, d := range out {
		d.DesiredWorkers += ceilDiv(d.Active+absorbed[c], J)
		d.ColdStartSecondsPerGiB = round2(m.perGiB[c])
		sort.Slice(d.Models, func(i, j int) bool {
			if d.Models[i].NewWorkers != d.Models[j].NewWorkers {
				return d.Models[i].NewWorkers > d.Models[j].NewWorkers
			}
			return d.Models[i].Model < d.Models[j].Model
		})
	}
	return out
}

// measurements are the cold starts and job times workers reported.
type measurements struct {
	cold   map[string][]float64 // by class + "\x00" + ref, seconds
	jobs   map[string][]float64
	perGiB map[string]float64 // by class: median seconds per GiB
	jobsOf map[string]float64 // by class: median job seconds
}

func measure(hbs []job.Heartbeat) measurements {
	m := measurements{cold: map[string][]float64{}, jobs: map[string][]float64{}, perGiB: map[string]float64{}, jobsOf: map[string]float64{}}
	perGiB := map[string][]float64{}
	jobs := map[string][]float64{}
	for _, hb := range hbs {
		sizes := map[string]int64{}
		for _, b := range hb.Blobs {
			sizes[b.Digest] = b.Size
		}
		for _, ms := range hb.Models {
			key := hb.DeviceClass + "\x00" + ms.Ref
			if ms.ColdStartMS > 0 {
				m.cold[key] = append(m.cold[key], ms.ColdStartMS/1000)
				var size int64
				for _, d := range ms.Digests {
					size += sizes[d]
				}
				if size > 0 {
					perGiB[hb.DeviceClass] = append(perGiB[hb.DeviceClass], ms.ColdStartMS/1000/(float64(size)/(1<<30)))
				}
			}
			if ms.JobMS > 0 {
				m.jobs[key] = append(m.jobs[key], ms.JobMS/1000)
				jobs[hb.DeviceClass] = append(jobs[hb.DeviceClass], ms.JobMS/1000)
			}
		}
	}
	for c, xs := range perGiB {
		m.perGiB[c] = medianOf(xs)
	}
	for c, xs := range jobs {
		m.jobsOf[c] = medianOf(xs)
	}
	return m
}

// coldStart is q's cold start in seconds and where the figure comes from.
func (m measurements) coldStart(q QueuedModel) (float64, string) {
	if xs := m.cold[q.Class+"\x00"+q.Ref]; len(xs) > 0 {
		return round2(medianOf(xs)), "measured"
	}
	if r := m.perGiB[q.Class]; r > 0 && q.Size > 0 {
		return round2(r * float64(q.Size) / (1 << 30)), "estimated"
	}
	return DefaultColdStart.Seconds(), "default"
}

// jobTime is q's job run time in seconds: measured for the model, else the
// class's median, else DefaultJobTime.
func (m measurements) jobTime(q QueuedModel) float64 {
	if xs := m.jobs[q.Class+"\x00"+q.Ref]; len(xs) > 0 {
		return round2(medianOf(xs))
	}
	if t := m.jobsOf[q.Class]; t > 0 {
		return round2(t)
	}
	return DefaultJobTime.Seconds()
}

func medianOf(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func round2(x float64) float64 { return math.Round(x*100) / 100 }

// maxScan bounds how many pending tasks of one queue are read to learn
// their models; the rest of a longer queue is shared out like the tasks
// read.
const maxScan = 5000

// autoscaleCache holds the last autoscale view for a second: KEDA,
// Prometheus and people may ask at once.
type autoscaleCache struct {
	mu   sync.Mutex
	at   time.Time
	view map[string]*ClassDemand
}

// autoscale gathers the queued models per class and plans.
func (s *Server) autoscale(ctx context.Context) (map[string]*ClassDemand, error) {
	s.scale.mu.Lock()
	defer s.scale.mu.Unlock()
	if time.Since(s.scale.at) < time.Second {
		return s.scale.view, nil
	}
	hosts, hbs, err := s.fleetView(ctx)
	if err != nil {
		return nil, err
	}
	hostClass := map[string]string{}
	for _, h := range hosts {
		hostClass[job.HostQueue(h.Host)] = h.DeviceClass
	}
	queues, err := s.inspector.Queues()
	if err != nil {
		return nil, err
	}
	active := map[string]int{}
	counts := map[[2]string]int{} // class, ref → queued
	for _, q := range queues {
		// Every priority's queue counts toward its class: pool:cpu:high is
		// pool:cpu's, host:h1:low host:h1's (job.PriorityQueue).
		base, _ := job.SplitQueue(q)
		var class string
		switch {
		case strings.HasPrefix(base, "pool:"):
			class = strings.TrimPrefix(base, "pool:")
		case strings.HasPrefix(base, "host:"):
			if class = hostClass[base]; class == "" {
				continue // a dead host's queue: the reaper moves it to a pool
			}
		default:
			continue
		}
		info, err := s.inspector.GetQueueInfo(q)
		if err != nil {
			return nil, err
		}
		active[class] += info.Active
		if info.Pending == 0 {
			continue
		}
		refs, err := s.pendingModels(q, info.Pending)
		if err != nil {
			return nil, err
		}
		for ref, n := range refs {
			counts[[2]string{class, ref}] += n
		}
	}
	var queued []QueuedModel
	for k, n := range counts {
		qm := QueuedModel{Class: k[0], Ref: k[1], Queued: n}
		if man, err := s.resolve(ctx, k[1]); err == nil {
			for _, f := range man.Files {
				if f.Digest != "" {
					qm.Digests = append(qm.Digests, f.Digest)
				}
				qm.Size += f.Size
			}
		}
		queued = append(queued, qm)
	}
	view := Plan(AutoscalePolicy{WarmFraction: s.cfg.Routing.WarmFraction}, queued, active, hosts, hbs)
	s.scale.at, s.scale.view = time.Now(), view
	return view, nil
}

// pendingModels counts the pending tasks of queue q by model ref, reading
// at most maxScan of its pending tasks and scaling up to pending.
func (s *Server) pendingModels(q string, pending int) (map[string]int, error) {
	refs := map[string]int{}
	read := 0
	for page := 1; read < min(pending, maxScan); page++ {
		tasks, err := s.inspector.ListPendingTasks(q, asynq.PageSize(1000), asynq.Page(page))
		if err != nil {
			return nil, err
		}
		if len(tasks) == 0 {
			break
		}
		for _, ti := range tasks {
			ref := "(unreadable payload)"
			if p, err := job.DecodePayload(ti.Payload); err == nil {
				ref = p.Request.Model
			}
			refs[ref]++
			read++
		}
	}
	if read > 0 && read < pending {
		scaled := map[string]int{}
		for ref, n := range refs {
			scaled[ref] = int(math.Round(float64(n) * float64(pending) / float64(read)))
		}
		return scaled, nil
	}
	return refs, nil
}

// getAutoscale serves GET /autoscale (open, like /metrics: per class
// numbers only) and GET /v1/autoscale (authenticated: with each queued
// model's part). With ?class=C either answers C's demand alone, zero for
// a class nothing is known of (what a KEDA trigger reads: its value is
// always there).
func (s *Server) getAutoscale(w http.ResponseWriter, r *http.Request) {
	view, err := s.autoscale(r.Context())
	if err != nil {
		s.unavailable(w, err)
		return
	}
	if c := r.URL.Query().Get("class"); c != "" {
		var cd ClassDemand
		if d := view[c]; d != nil {
			cd = *d
		}
		if r.URL.Path == "/autoscale" {
			cd.Models = nil
		}
		writeJSON(w, http.StatusOK, struct {
			Class string `json:"class"`
			ClassDemand
		}{c, cd})
		return
	}
	out := make(map[string]ClassDemand, len(view))
	for c, d := range view {
		cd := *d
		if r.URL.Path == "/autoscale" {
			cd.Models = nil
		}
		out[c] = cd
	}
	writeJSON(w, http.StatusOK, map[string]any{"classes": out, "jobs_per_worker": JobsPerWorker})
}

// autoscaleCollector exports the per-class signal at scrape time.
type autoscaleCollector struct{ s *Server }

var (
	autoscaleDesiredDesc = prometheus.NewDesc("genfleet_autoscale_desired_workers",
		"Warmth-aware autoscaling signal: worker processes a device class wants (docs/fleet.md, Autoscaling).", []string{"class"}, nil)
	autoscaleColdDesc = prometheus.NewDesc("genfleet_autoscale_cold_pending_jobs",
		"Pending jobs whose model no host of the class holds warm.", []string{"class"}, nil)
	autoscaleColdStartDesc = prometheus.NewDesc("genfleet_autoscale_cold_start_seconds_per_gib",
		"Median measured cold start (wait + fetch + verify + map) per GiB of model, by class.", []string{"class"}, nil)
)

func (c *autoscaleCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- autoscaleDesiredDesc
	ch <- autoscaleColdDesc
	ch <- autoscaleColdStartDesc
}

func (c *autoscaleCollector) Collect(ch chan<- prometheus.Metric) {
	view, err := c.s.autoscale(context.Background())
	if err != nil {
		return
	}
	for class, d := range view {
		ch <- prometheus.MustNewConstMetric(autoscaleDesiredDesc, prometheus.GaugeValue, float64(d.DesiredWorkers), class)
		ch <- prometheus.MustNewConstMetric(autoscaleColdDesc, prometheus.GaugeValue, float64(d.ColdPending), class)
		ch <- prometheus.MustNewConstMetric(autoscaleColdStartDesc, prometheus.GaugeValue, d.ColdStartSecondsPerGiB, class)
	}
}
