package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/job"
)

// fleetCache holds the last fleet view for Config.FleetTTL, so that a burst
// of submits reads Redis once.
type fleetCache struct {
	mu    sync.Mutex
	at    time.Time
	hosts []HostView
	hbs   []job.Heartbeat
}

// fleetView returns the hosts as the router sees them: merged heartbeats
// plus each host queue's backlog.
func (s *Server) fleetView(ctx context.Context) ([]HostView, []job.Heartbeat, error) {
	s.view.mu.Lock()
	defer s.view.mu.Unlock()
	if time.Since(s.view.at) < s.cfg.FleetTTL {
		return s.view.hosts, s.view.hbs, nil
	}
	hbs, err := s.fleet.Heartbeats(ctx)
	if err != nil {
		return nil, nil, err
	}
	hosts := MergeHeartbeats(hbs)
	queues, err := s.inspector.Queues()
	if err != nil {
		return nil, nil, err
	}
	exists := make(map[string]bool, len(queues))
	for _, q := range queues {
		exists[q] = true
	}
	for i := range hosts {
		q := job.HostQueue(hosts[i].Host)
		if !exists[q] {
			continue // asynq creates a queue on its first enqueue
		}
		// GetQueueInfo does not map a missing queue to ErrQueueNotFound,
		// hence the check above.
		info, err := s.inspector.GetQueueInfo(q)
		if err != nil {
			return nil, nil, err
		}
		hosts[i].Backlog = info.Pending + info.Scheduled + info.Retry
	}
	s.view.at, s.view.hosts, s.view.hbs = time.Now(), hosts, hbs
	s.seen.observe(hosts, hbs, s.view.at)
	return hosts, hbs, nil
}

// invalidateView makes the next fleetView read Redis again (after an
// enqueue changed a backlog).
func (s *Server) invalidateView() {
	s.view.mu.Lock()
	s.view.at = time.Time{}
	s.view.mu.Unlock()
}

// routeJob applies the routing policy; a fleet view that cannot be read
// sends the job to the pool (never lose or delay a job over routing).
func (s *Server) routeJob(ctx context.Context, class string, digests, loras []string) job.Route {
	var hosts []HostView
	if s.cfg.Routing.Enabled && len(digests) > 0 {
		var err error
		if hosts, _, err = s.fleetView(ctx); err != nil {
			s.log.Warn("fleet view unavailable; routing to the pool", "err", err)
		}
	}
	r := RouteWithLoRAs(s.cfg.Routing, class, digests, loras, hosts)
	decision, reason := "pool", "no_warm_host"
	switch {
	case r.Host != "":
		decision, reason = "host", "warm"
		s.invalidateView()
	case strings.HasPrefix(r.Reason, "routing off"):
		reason = "off"
	case strings.Contains(r.Reason, "backlog cap"):
		reason = "warm_hosts_full"
	case strings.Contains(r.Reason, "digest unknown"):
		reason = "digest_unknown"
	}
	s.routed.WithLabelValues(decision, reason).Inc()
	return r
}

func (s *Server) listWorkers(w http.ResponseWriter, r *http.Request) {
	s.invalidateView()
	hosts, hbs, err := s.fleetView(r.Context())
	if err != nil {
		s.unavailable(w, err)
		return
	}
	if hosts == nil {
		hosts = []HostView{}
	}
	if hbs == nil {
		hbs = []job.Heartbeat{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"hosts": hosts, "workers": hbs, "gone": s.seen.gone(hosts, time.Now())})
}

// ModelHost says how warm a model is on one host.
type ModelHost struct {
	Host     string  `json:"host"`
	Resident float64 `json:"resident"` // smallest resident fraction over the model's files
}

// RunReaper moves the pending jobs of hosts that stopped heartbeating back
// to their pool, every ReapInterval until ctx ends. Run it in one
// scheduler (running it in several is safe, only wasteful).
func (s *Server) RunReaper(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.Reap(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("reaper", "err", err)
		}
	}
}

// Reap does one pass of the reaper. For each silent host it moves every
// pending, scheduled and retry task of host:<id> to the job's pool:
//
//  1. the task is enqueued into the pool with the same task id and its
//     payload's route saying why (a conflict means an earlier pass already
//     did it);
//  2. the host-queue copy is deleted. If that fails because the host came
//     back and started it, two copies exist; the worker's run claim and its
//     check of the job record make sure only one runs to the end.
//
// Tasks that were active on the dead host come back to its queue's retry
// set when their asynq lease expires, and a later pass moves them.
func (s *Server) Reap(ctx context.Context) error {
	cutoff := time.Now().Add(-s.cfg.HostTimeout)
	hosts, err := s.fleet.SilentHosts(ctx, cutoff)
	if err != nil {
		return err
	}
	var errs []error
	for _, host := range hosts {
		q := job.HostQueue(host)
		moved, left, err := s.moveQueue(ctx, host, q)
		if err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", host, err))
			continue
		}
		if moved > 0 {
			s.log.Warn("host stopped heartbeating; moved its jobs to the pool", "host", host, "moved", moved)
		}
		if left == 0 {
			_ = s.fleet.ForgetHost(ctx, host, cutoff)
		}
	}
	return errors.Join(errs...)
}

// moveQueue moves the movable tasks of q; left counts tasks still there
// (active ones, or ones that could not be moved).
func (s *Server) moveQueue(ctx context.Context, host, q string) (moved, left int, err error) {
	var tasks []*asynq.TaskInfo
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		s.inspector.ListPendingTasks, s.inspector.ListScheduledTasks, s.inspector.ListRetryTasks,
	} {
		page, err := list(q, asynq.PageSize(1000))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return 0, 0, nil
		}
		if err != nil {
			return moved, left, err
		}
		tasks = append(tasks, page...)
	}
	for _, ti := range tasks {
		if err := s.moveTask(ctx, host, q, ti); err != nil {
			s.log.Warn("could not move job", "job", ti.ID, "from", q, "err", err)
			left++
			continue
		}
		moved++
		s.moved.Inc()
	}
	if info, err := s.inspector.GetQueueInfo(q); err == nil {
		left = info.Size
	}
	return moved, left, nil
}

func (s *Server) moveTask(ctx context.Context, host, q string, ti *asynq.TaskInfo) error {
	pool := job.PoolQueue(s.cfg.Pool)
	payload := ti.Payload
	if p, err := job.DecodePayload(ti.Payload); err == nil {
		// Say in the job's route where it went and why; the worker that
		// runs it records this route.
		r := job.Route{}
		if p.Route != nil {
			r = *p.Route
		}
		if r.Pool != "" {
			pool = r.Pool
		}
		r.Reason += fmt.Sprintf("; host %s stopped heartbeating, moved to %s", host, pool)
		r.Queue, r.Pool, r.Host = pool, pool, ""
		p.Route = &r
		if b, err := json.Marshal(p); err == nil {
			payload = b
		}
	} // an invalid payload moves as it is; the worker that gets it fails it
	opts := []asynq.Option{asynq.TaskID(ti.ID), asynq.Queue(pool), asynq.MaxRetry(ti.MaxRetry)}
	if ti.Timeout > 0 {
		opts = append(opts, asynq.Timeout(ti.Timeout))
	}
	if _, err := s.client.EnqueueContext(ctx, asynq.NewTask(ti.Type, payload), opts...); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	if err := s.inspector.DeleteTask(q, ti.ID); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
		return fmt.Errorf("delete host copy (the pool copy stays; the worker's claim prevents a double run): %w", err)
	}
	return nil
}

// queueCollector exports queue depths and the autoscaling signal at
// scrape time, straight from asynq's state in Redis.
type queueCollector struct{ s *Server }

var (
	queueDepthDesc = prometheus.NewDesc("genfleet_queue_jobs",
		"Jobs in each asynq queue by state (pending, active, scheduled, retry, archived).", []string{"queue", "state"}, nil)
	desiredDesc = prometheus.NewDesc("genfleet_pool_desired_workers",
		"Autoscaling signal: worker processes a pool wants, ceil((pending + active) / jobs per worker), summed over the pool queue and its hosts' queues.", []string{"pool"}, nil)
)

// JobsPerWorker is the target jobs (queued + running) per worker process
// in the desired-workers gauge.
const JobsPerWorker = 2

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueDepthDesc
	ch <- desiredDesc
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	queues, err := c.s.inspector.Queues()
	if err != nil {
		return
	}
	demand := map[string]int{}
	hostPool := map[string]string{}
	if hosts, _, err := c.s.fleetView(context.Background()); err == nil {
		for _, h := range hosts {
			hostPool[job.HostQueue(h.Host)] = job.PoolQueue(h.DeviceClass)
		}
	}
	for _, q := range queues {
		info, err := c.s.inspector.GetQueueInfo(q)
		if err != nil {
			continue
		}
		for state, n := range map[string]int{"pending": info.Pending, "active": info.Active, "scheduled": info.Scheduled, "retry": info.Retry, "archived": info.Archived} {
			ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(n), q, state)
		}
		pool := q
		if strings.HasPrefix(q, "host:") {
			pool = hostPool[q]
			if pool == "" {
				pool = job.PoolQueue(c.s.cfg.Pool)
			}
		}
		demand[pool] += info.Pending + info.Active
	}
	for pool, n := range demand {
		ch <- prometheus.MustNewConstMetric(desiredDesc, prometheus.GaugeValue, float64((n+JobsPerWorker-1)/JobsPerWorker), strings.TrimPrefix(pool, "pool:"))
	}
}
