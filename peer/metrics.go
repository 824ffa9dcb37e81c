package peer

import "github.com/prometheus/client_golang/prometheus"

// serverMetrics are the blob server's collectors; docs/metrics.md lists
// them.
type serverMetrics struct {
	requests *prometheus.CounterVec
	served   prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_peer_server_requests_total",
			Help: "Requests to this host's blob server by status code (401: bad fleet token, 404: blob not here, 503: range not verified yet or too many transfers).",
		}, []string{"code"}),
		served: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_peer_served_bytes_total",
			Help: "Bytes of blobs this host sent to its peers.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.served} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *serverMetrics) request(code string) { m.requests.WithLabelValues(code).Inc() }

// sourceMetrics are the peer source's collectors.
type sourceMetrics struct {
	bytes     *prometheus.CounterVec
	parts     *prometheus.CounterVec
	avoided   *prometheus.CounterVec
	elections *prometheus.CounterVec
}

func newSourceMetrics(reg prometheus.Registerer) (*sourceMetrics, error) {
	m := &sourceMetrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_peer_fetched_bytes_total",
			Help: "Bytes of model parts received, by where from: peer or s3.",
		}, []string{"from"}),
		parts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_peer_parts_total",
			Help: "Model parts completed, by where their bytes came from (peer, s3, mixed) and the verdict on their digest (ok, corrupt).",
		}, []string{"from", "result"}),
		avoided: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_peer_avoided_total",
			Help: "Times a peer was put aside for a while, by reason: error (refused or broke a transfer), slow (stalled), corrupt (served bytes that did not match a part digest).",
		}, []string{"reason"}),
		elections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_peer_elections_total",
			Help: "Elections to pull a blob from S3 for the fleet, by result: won (this host pulled parts from S3 under the lease) or lost (another host held it; this one streamed from peers).",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.bytes, m.parts, m.avoided, m.elections} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
