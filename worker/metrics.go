package worker

import "github.com/prometheus/client_golang/prometheus"

// metrics are the worker's Prometheus collectors; docs/metrics.md lists them.
type metrics struct {
	jobs     *prometheus.CounterVec
	phase    *prometheus.HistogramVec
	cache    *prometheus.CounterVec
	inFlight prometheus.Gauge
	// duplicates counts tasks skipped because their job had already ended.
	duplicates *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_worker_jobs_total",
			Help: "Jobs handled by this worker process, by outcome (succeeded, failed, cancelled, retry).",
		}, []string{"outcome"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "genfleet_worker_job_phase_seconds",
			Help:    "Duration of each job phase: queue_wait is not included; resolve, wait, fetch, verify, map, generate, encode, upload.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"phase"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_worker_model_acquires_total",
			Help: "Model acquisitions by result: hit (blob already on disk), waited (another process on the host fetched it while this job waited) or miss (this process fetched it from S3).",
		}, []string{"result"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "genfleet_worker_jobs_in_flight",
			Help: "Jobs this worker process is running now.",
		}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_worker_duplicate_tasks_total",
			Help: "Tasks skipped without running because their job had already ended, by whether their request matched the ended job's (same, different, unknown).",
		}, []string{"request"}),
	}
	if reg != nil {
		reg.MustRegister(m.jobs, m.phase, m.cache, m.inFlight, m.duplicates)
	}
	return m
}
