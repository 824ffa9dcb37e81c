package sdcpp

import "github.com/prometheus/client_golang/prometheus"

// metrics are one Backend's collectors; they count from creation and are
// exported once RegisterMetrics is called.
type metrics struct {
	runs         *prometheus.CounterVec
	serverStarts *prometheus.CounterVec
	serverStart  prometheus.Histogram
	weightsLoad  *prometheus.HistogramVec
	fallbacks    prometheus.Counter
	servers      prometheus.GaugeFunc
}

func newMetrics(b *Backend) *metrics {
	return &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_sdcpp_generations_total",
			Help: "Generations by the engine, by mode (process, server) and outcome (ok, engine_error, bad_output, killed).",
		}, []string{"mode", "outcome"}),
		serverStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_sdcpp_server_starts_total",
			Help: "Engine servers started, by outcome (ready, failed); each ready start loaded a model.",
		}, []string{"outcome"}),
		serverStart: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "genfleet_sdcpp_server_start_seconds",
			Help: "Time from starting an engine server to its first answer: reading the model files' metadata and setting up. " +
				"The engine loads the weights later, during the first generation (genfleet_sdcpp_weights_load_seconds).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
		}),
		weightsLoad: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "genfleet_sdcpp_weights_load_seconds",
			Help: "Time the engine reported preparing weights (mapping, reading, copying to its backend) during a generation, " +
				"by mode; observed for each generation that loaded weights: every process run, a server's first generation.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}, []string{"mode"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_sdcpp_server_fallbacks_total",
			Help: "Jobs run as a one-shot process because no engine server could take them.",
		}),
		servers: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "genfleet_sdcpp_servers",
			Help: "Engine servers running now (models kept loaded).",
		}, func() float64 {
			if b.servers == nil {
				return 0
			}
			return float64(len(b.servers.running()))
		}),
	}
}

// RegisterMetrics registers the backend's collectors with reg.
func (b *Backend) RegisterMetrics(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{b.met.runs, b.met.serverStarts, b.met.serverStart, b.met.weightsLoad, b.met.fallbacks, b.met.servers} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
