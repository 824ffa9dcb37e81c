package scheduler

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/hibiken/asynq"
)

// queueHistoryLen is how many samples of the queue sizes the scheduler
// keeps: 30 minutes at the default Config.QueueSampleInterval of 10s.
const queueHistoryLen = 180

// QueueStats is one asynq queue's size by state.
type QueueStats struct {
	Name      string `json:"name"`
	Pending   int    `json:"pending"`
	Active    int    `json:"active"`
	Scheduled int    `json:"scheduled"`
	Retry     int    `json:"retry"`
	Archived  int    `json:"archived"`
	Paused    bool   `json:"paused,omitempty"`
}

// QueueSample is the size of each queue at one moment: queue name →
// [pending, active, retry].
type QueueSample struct {
	At     time.Time         `json:"at"`
	Queues map[string][3]int `json:"queues"`
}

// queueHistory is a ring of the latest queueHistoryLen samples. It is
// process state, not a store: each scheduler keeps its own, and a restart
// starts it empty.
type queueHistory struct {
	mu      sync.Mutex
	samples []QueueSample // oldest first
}

func (h *queueHistory) add(s QueueSample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.samples) == queueHistoryLen {
		copy(h.samples, h.samples[1:])
		h.samples = h.samples[:queueHistoryLen-1]
	}
	h.samples = append(h.samples, s)
}

func (h *queueHistory) last() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.samples) == 0 {
		return time.Time{}
	}
	return h.samples[len(h.samples)-1].At
}

func (h *queueHistory) all() []QueueSample {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]QueueSample(nil), h.samples...)
}

// queueStats reads every queue asynq knows.
func (s *Server) queueStats() ([]QueueStats, error) {
	names, err := s.inspector.Queues()
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := make([]QueueStats, 0, len(names))
	for _, q := range names {
		info, err := s.inspector.GetQueueInfo(q)
		if err != nil {
			continue // removed since it was listed
		}
		out = append(out, statsOf(info))
	}
	return out, nil
}

func statsOf(info *asynq.QueueInfo) QueueStats {
	return QueueStats{Name: info.Queue, Pending: info.Pending, Active: info.Active, Scheduled: info.Scheduled,
		Retry: info.Retry, Archived: info.Archived, Paused: info.Paused}
}

// sample records the queue sizes now in the history.
func (s *Server) sample(stats []QueueStats, now time.Time) {
	m := make(map[string][3]int, len(stats))
	for _, q := range stats {
		m[q.Name] = [3]int{q.Pending, q.Active, q.Retry}
	}
	s.history.add(QueueSample{At: now.UTC(), Queues: m})
}

// sampleInterval is Config.QueueSampleInterval, or its default of 10s.
func (s *Server) sampleInterval() time.Duration {
	if s.cfg.QueueSampleInterval > 0 {
		return s.cfg.QueueSampleInterval
	}
	return 10 * time.Second
}

// RunSampler samples the queue sizes into the history that GET /v1/queues
// returns, and refreshes the fleet view (which keeps the memory of hosts
// that went away), every Config.QueueSampleInterval until ctx ends. Run it
// in every scheduler process: each keeps its own history.
func (s *Server) RunSampler(ctx context.Context) {
	t := time.NewTicker(s.sampleInterval())
	defer t.Stop()
	for {
		if stats, err := s.queueStats(); err == nil {
			s.sample(stats, time.Now())
		} else if ctx.Err() == nil {
			s.log.Warn("queue sampler", "err", err)
		}
		s.invalidateView()
		_, _, _ = s.fleetView(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// queueList is the body of GET /v1/queues.
type queueList struct {
	Queues []QueueStats `json:"queues"`
	// IntervalS is the seconds between samples of History.
	IntervalS float64       `json:"interval_s"`
	History   []QueueSample `json:"history"`
}

// listQueues answers GET /v1/queues: every asynq queue's size by state
// now, and the samples of the last 30 minutes. A request that finds the
// latest sample older than the interval adds one, so the history grows
// also where RunSampler does not run.
func (s *Server) listQueues(w http.ResponseWriter, r *http.Request) {
	stats, err := s.queueStats()
	if err != nil {
		s.unavailable(w, err)
		return
	}
	now := time.Now()
	if now.Sub(s.history.last()) >= s.sampleInterval() {
		s.sample(stats, now)
	}
	writeJSON(w, http.StatusOK, queueList{Queues: stats, IntervalS: s.sampleInterval().Seconds(), History: s.history.all()})
}
