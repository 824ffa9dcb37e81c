package modelcache

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// metrics are the cache's Prometheus collectors. Counters and histograms
// are fed from each Acquire's Report (so the fetch code stays free of
// metrics); the state of the cache (bytes in use and idle, resident bytes
// per blob, budget) and the process's page faults are read when scraped.
// A nil *metrics records nothing.
type metrics struct {
	lookups      *prometheus.CounterVec
	fetchedBytes prometheus.Counter
	fetchSeconds prometheus.Counter
	waits        prometheus.Counter
	waitSeconds  prometheus.Counter
	evictions    prometheus.Counter
	evictedBytes prometheus.Counter
	quarantined  prometheus.Counter
	phase        *prometheus.HistogramVec
	verifiedB    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, c *Cache) (*metrics, error) {
	m := &metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_cache_acquires_total",
			Help: "Model acquisitions by result: hit (every file already on disk), waited (another fetcher on the host installed a missing file while this one waited) or miss (this process fetched something).",
		}, []string{"result"}),
		fetchedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cache_fetched_bytes_total",
			Help: "Bytes downloaded from S3 into the cache by this process.",
		}),
		fetchSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cache_fetch_seconds_total",
			Help: "Time spent fetching from S3 (Head, GET, writing to tmp/).",
		}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cache_fetcher_waits_total",
			Help: "Acquisitions that blocked while another fetcher (any process on the host) downloaded the same file.",
		}),
		waitSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cache_fetcher_wait_seconds_total",
			Help: "Time blocked on another fetcher's lock.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cache_evictions_total",
			Help: "Blobs evicted (unlinked) by this process.",
		}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cache_evicted_bytes_total",
			Help: "Bytes of blobs evicted by this process.",
		}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cache_quarantined_total",
			Help: "Blobs found corrupt on re-verification and moved to quarantine/.",
		}),
		verifiedB: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_cache_verified_bytes_total",
			Help: "Bytes of cached blobs re-hashed by this process, by what asked: acquire (--verify per-boot or on-open), scrub (the background scrubber) or verify (Cache.Verify, genfleet cache verify).",
		}, []string{"by"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "genfleet_cache_load_phase_seconds",
			Help:    "Time per phase of an acquisition: wait, fetch, verify, map, read, prefault.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 11),
		}, []string{"phase"}),
	}
	cs := []prometheus.Collector{m.lookups, m.fetchedBytes, m.fetchSeconds, m.waits, m.waitSeconds,
		m.evictions, m.evictedBytes, m.quarantined, m.phase, m.verifiedB}
	for i, col := range cs {
		if err := reg.Register(col); err != nil {
			are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
			if !ok {
				return nil, err
			}
			// A second Cache in this process, on the same registry: share
			// the first one's collectors.
			cs[i] = are.ExistingCollector
		}
	}
	m.lookups = cs[0].(*prometheus.CounterVec)
	m.fetchedBytes, m.fetchSeconds = cs[1].(prometheus.Counter), cs[2].(prometheus.Counter)
	m.waits, m.waitSeconds = cs[3].(prometheus.Counter), cs[4].(prometheus.Counter)
	m.evictions, m.evictedBytes = cs[5].(prometheus.Counter), cs[6].(prometheus.Counter)
	m.quarantined, m.phase = cs[7].(prometheus.Counter), cs[8].(*prometheus.HistogramVec)
	m.verifiedB = cs[9].(*prometheus.CounterVec)

	// The state collector describes the cache root it was made for; a
	// second Cache on the same registry leaves the first one's in place.
	if err := reg.Register(&stateCollector{c: c}); err != nil {
		if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
			return nil, err
		}
	}
	return m, nil
}

// observe records one successful Acquire.
func (m *metrics) observe(r *Report, mode LoadMode) {
	if m == nil {
		return
	}
	switch {
	case r.Hit:
		m.lookups.WithLabelValues("hit").Inc()
	case r.Origin == OriginWaited:
		m.lookups.WithLabelValues("waited").Inc()
	default:
		m.lookups.WithLabelValues("miss").Inc()
	}
	m.fetchedBytes.Add(float64(r.FetchedBytes))
	m.fetchSeconds.Add(r.Fetch.Seconds())
	if r.Wait > 0 {
		m.waits.Inc()
		m.waitSeconds.Add(r.Wait.Seconds())
	}
	obs := func(phase string, d time.Duration, always bool) {
		if always || d > 0 {
			m.phase.WithLabelValues(phase).Observe(d.Seconds())
		}
	}
	obs("wait", r.Wait, false)
	obs("fetch", r.Fetch, false)
	obs("verify", r.Verify, false)
	obs("map", r.Map, true)
	obs("read", r.Read, mode == LoadRead)
	obs("prefault", r.Prefault, false)
}

func (m *metrics) evicted(bytes int64) {
	if m == nil {
		return
	}
	m.evictions.Inc()
	m.evictedBytes.Add(float64(bytes))
}

// verified counts bytes re-hashed; by is acquire, scrub or verify.
func (m *metrics) verified(by string, bytes int64) {
	if m == nil {
		return
	}
	m.verifiedB.WithLabelValues(by).Add(float64(bytes))
}

func (m *metrics) quarantine() {
	if m == nil {
		return
	}
	m.quarantined.Inc()
}

var (
	descBytes = prometheus.NewDesc("genfleet_cache_bytes",
		"Bytes of blobs in the cache by state: in_use (leased by some process on the host), idle, or quarantined (failed re-verification; counted against the budget until GC deletes them).",
		[]string{"state"}, nil)
	descBlobs = prometheus.NewDesc("genfleet_cache_blobs",
		"Blobs in the cache by state: in_use, idle or quarantined.", []string{"state"}, nil)
	descBudget = prometheus.NewDesc("genfleet_cache_budget_bytes",
		"The cache's byte budget; 0 means no cap.", nil, nil)
	descResident = prometheus.NewDesc("genfleet_cache_resident_bytes",
		"Bytes of a blob in the page cache (mincore), i.e. how warm the model is on this host.",
		[]string{"digest"}, nil)
	descFaults = prometheus.NewDesc("genfleet_process_page_faults_total",
		"Page faults of this process (getrusage): major (needed I/O) and minor.",
		[]string{"kind"}, nil)
	descScrapeErrors = prometheus.NewDesc("genfleet_cache_scrape_errors",
		"1 when listing the cache failed during this scrape.", nil, nil)
)

// stateCollector reads the cache's state at scrape time: one List (a
// directory read, a lock probe and a brief mapping per blob) and one
// getrusage.
type stateCollector struct{ c *Cache }

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBytes, descBlobs, descBudget, descResident, descFaults, descScrapeErrors} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err == nil {
		ch <- prometheus.MustNewConstMetric(descFaults, prometheus.CounterValue, float64(ru.Majflt), "major")
		ch <- prometheus.MustNewConstMetric(descFaults, prometheus.CounterValue, float64(ru.Minflt), "minor")
	}
	failed := 0.0
	infos, err := s.c.List()
	if err != nil {
		failed = 1
	}
	var inUse, idle, nInUse, nIdle float64
	for _, bi := range infos {
		if bi.InUse {
			inUse += float64(bi.Size)
			nInUse++
		} else {
			idle += float64(bi.Size)
			nIdle++
		}
		ch <- prometheus.MustNewConstMetric(descResident, prometheus.GaugeValue, float64(bi.ResidentBytes), bi.Digest)
	}
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, inUse, "in_use")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, idle, "idle")
	ch <- prometheus.MustNewConstMetric(descBlobs, prometheus.GaugeValue, nInUse, "in_use")
	ch <- prometheus.MustNewConstMetric(descBlobs, prometheus.GaugeValue, nIdle, "idle")
	quarantined, err := s.c.Quarantined()
	if err != nil {
		failed = 1
	}
	var qBytes float64
	for _, qf := range quarantined {
		qBytes += float64(qf.Size)
	}
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, qBytes, "quarantined")
	ch <- prometheus.MustNewConstMetric(descBlobs, prometheus.GaugeValue, float64(len(quarantined)), "quarantined")
	budget, err := s.c.Budget()
	if err != nil {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, float64(budget))
	ch <- prometheus.MustNewConstMetric(descScrapeErrors, prometheus.GaugeValue, failed)
}
