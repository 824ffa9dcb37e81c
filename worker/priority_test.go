package worker

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// The order a worker tries its queues in: host queues strictly before pool
// queues in every dequeue; the first priority tried follows the weights,
// spread out, with every priority picked.
func TestQueueOrderWeightsPrioritiesHostFirst(t *testing.T) {
	o := newQueueOrder("host:h1", "pool:cpu", DefaultPriorityWeights)
	first := map[string]int{}
	var seq []string
	for range 100 {
		list := o.next()
		if len(list) != 6 {
			t.Fatalf("order %v: want 6 queues", list)
		}
		for i, q := range list {
			if strings.HasPrefix(q, "host:") != (i < 3) {
				t.Fatalf("order %v: want the 3 host queues before the 3 pool queues", list)
			}
		}
		if _, p := job.SplitQueue(list[0]); p != func() job.Priority { _, p := job.SplitQueue(list[3]); return p }() {
			t.Fatalf("order %v: host and pool parts start with different priorities", list)
		}
		_, p := job.SplitQueue(list[0])
		first[string(p)]++
		if len(seq) < 10 {
			seq = append(seq, string(p)[:1])
		}
	}
	if first["high"] != 60 || first["normal"] != 30 || first["low"] != 10 {
		t.Fatalf("first picks over 100 dequeues: %v; want 60/30/10", first)
	}
	// Smooth: low is not left to the end of a cycle of ten, nor high bunched.
	if s := strings.Join(seq, ""); strings.Contains(s, "hhhh") || !strings.Contains(s, "l") {
		t.Fatalf("first picks of one cycle %q: want high spread out and low in it", s)
	}
	// After the pick, the rest by weight.
	o = newQueueOrder("host:h1", "pool:cpu", map[job.Priority]int{job.PriorityHigh: 1, job.PriorityNormal: 5, job.PriorityLow: 2})
	if got := o.orders[0]; !slices.Equal(got, []string{"host:h1:high", "host:h1", "host:h1:low", "pool:cpu:high", "pool:cpu", "pool:cpu:low"}) {
		t.Fatalf("order after picking high: %v", got)
	}
	if err := checkWeights(map[job.Priority]int{job.PriorityHigh: 6, job.PriorityNormal: 3}); err == nil || !strings.Contains(err.Error(), "low") {
		t.Fatalf("weights without low: %v; want an error naming low", err)
	}
	if err := checkWeights(map[job.Priority]int{"urgent": 1, job.PriorityHigh: 6, job.PriorityNormal: 3, job.PriorityLow: 1}); err == nil {
		t.Fatal("weights naming an unknown priority were accepted")
	}
}

// A worker with a backlog of low jobs takes high jobs submitted after them
// first, but not strictly: low jobs still run while high ones wait, and all
// of them finish. A job in the host's low queue goes before every pool job,
// whatever its priority.
func TestHighJobsOvertakeALowBacklog(t *testing.T) {
	addr := testenv.Redis(t).Addr
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	cl := asynq.NewClient(asynq.RedisClientOpt{Addr: addr})
	defer cl.Close()
	enqueue := func(id string, p job.Priority, route *job.Route) {
		t.Helper()
		req := job.Request{Model: "demo", Prompt: "p", Priority: p}
		req.ApplyDefaults()
		task, opts, err := job.NewRoutedTask(id, req, "cpu", route)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cl.Enqueue(task, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if want := job.PriorityQueue(job.PoolQueue("cpu"), p); route == nil && info.Queue != want {
			t.Fatalf("job %s of priority %q queued on %s, want %s", id, p, info.Queue, want)
		}
	}
	const lows, highs = 60, 20
	for i := range lows {
		enqueue(fmt.Sprintf("low-%02d", i), job.PriorityLow, nil)
	}
	for i := range highs {
		enqueue(fmt.Sprintf("high-%02d", i), job.PriorityHigh, nil)
	}
	enqueue("host-low", job.PriorityLow, &job.Route{Queue: "host:w1:low", Host: "w1", Pool: "pool:cpu:low"})

	w := noopWorker(t, addr, "w1", 1)
	runWorker(t, w)
	store := job.NewStore(rdb)
	deadline := time.Now().Add(60 * time.Second)
	type start struct {
		id string
		at time.Time
	}
	var starts []start
	for _, id := range append([]string{"host-low"}, ids("high", highs)...) {
		starts = append(starts, start{id, waitSucceeded(t, store, id, deadline).StartedAt})
	}
	for _, id := range ids("low", lows) {
		starts = append(starts, start{id, waitSucceeded(t, store, id, deadline).StartedAt})
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i].at.Before(starts[j].at) })
	if starts[0].id != "host-low" {
		t.Fatalf("first job run: %s; want the host queue's low job before any pool job", starts[0].id)
	}
	lastHigh, lowsBefore := 0, 0
	for i, s := range starts {
		if strings.HasPrefix(s.id, "high-") {
			lastHigh = i
		}
	}
	for _, s := range starts[1:lastHigh] {
		if strings.HasPrefix(s.id, "low-") {
			lowsBefore++
		}
	}
	// 6:3:1 with normal empty: 9 of 10 dequeues take a high job while there
	// is one, so the 20 high jobs are done within about 22 pool jobs.
	if lastHigh > highs+5 {
		t.Errorf("the last high job was the %dth to start; want the %d high jobs to overtake the %d low ones (order %v)", lastHigh, highs, lows, starts)
	}
	if lowsBefore == 0 {
		t.Errorf("no low job ran while high ones waited: priorities were strict, low jobs can starve")
	}
	t.Logf("last high job started %dth; %d low jobs ran before it", lastHigh, lowsBefore)
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%02d", prefix, i)
	}
	return out
}

// A host id that would make the host's queue read as another host's
// priority queue is refused.
func TestHostIDThatLooksLikeAPriorityQueueRefused(t *testing.T) {
	base := noopWorker(t, "127.0.0.1:1", "x", 1).cfg
	for _, id := range []string{"gpu-7:high", "gpu-7:low"} {
		cfg := base
		cfg.HostID = id
		w, err := New(cfg)
		if err == nil {
			w.Close()
			t.Fatalf("host id %q accepted", id)
		}
		if !strings.Contains(err.Error(), id) {
			t.Fatalf("host id %q: error %q does not name it", id, err)
		}
	}
}
