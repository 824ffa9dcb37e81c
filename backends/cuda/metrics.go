package cuda

import "github.com/prometheus/client_golang/prometheus"

// metrics are one Backend's collectors; they count from creation and are
// exported once RegisterMetrics is called.
type metrics struct {
	uploadBytes   *prometheus.CounterVec
	uploadSeconds *prometheus.HistogramVec
	uploadGBps    *prometheus.GaugeVec
	deviceBytes   prometheus.Gauge
	budgetBytes   prometheus.Gauge
	residentCount prometheus.Gauge
	evictions     *prometheus.CounterVec
	hits, misses  prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		uploadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_cuda_upload_bytes_total", Help: "Bytes of weights copied from host mappings to the device.",
		}, []string{"strategy"}),
		uploadSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "genfleet_cuda_upload_seconds", Help: "Time of one model upload, registration included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"strategy"}),
		uploadGBps: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "genfleet_cuda_upload_gbps", Help: "Rate of the last upload of 64 MiB or more, in 10^9 bytes/s.",
		}, []string{"strategy"}),
		deviceBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "genfleet_cuda_device_bytes", Help: "Device memory held by resident weights (uploading included).",
		}),
		budgetBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "genfleet_cuda_device_budget_bytes", Help: "Device memory budget for resident weights.",
		}),
		residentCount: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "genfleet_cuda_resident_models", Help: "Models whose weights are on the device.",
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_cuda_evictions_total", Help: "Models removed from the device, by reason (budget, keepalive, oom).",
		}, []string{"reason"}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cuda_resident_hits_total", Help: "Jobs whose model was already on the device.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_cuda_resident_misses_total", Help: "Jobs that had to upload their model.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.uploadBytes, m.uploadSeconds, m.uploadGBps, m.deviceBytes,
		m.budgetBytes, m.residentCount, m.evictions, m.hits, m.misses}
}

// record counts one upload.
func (m *metrics) record(st uploadStats) {
	s := string(st.Strategy)
	m.uploadBytes.WithLabelValues(s).Add(float64(st.Bytes))
	m.uploadSeconds.WithLabelValues(s).Observe(st.Seconds())
	if st.Bytes >= 64<<20 {
		m.uploadGBps.WithLabelValues(s).Set(st.GBps())
	}
}
