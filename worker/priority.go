package worker

import (
	"fmt"
	"slices"
	"sync"

	"github.com/genfleet/genfleet/job"
)

// DefaultPriorityWeights are the weights a worker gives the priorities
// when Config.PriorityWeights is unset: with all three backlogged, of every
// 10 jobs it takes 6 high, 3 normal and 1 low.
var DefaultPriorityWeights = map[job.Priority]int{job.PriorityHigh: 6, job.PriorityNormal: 3, job.PriorityLow: 1}

// checkWeights refuses weights that name an unknown priority or leave one
// out or at zero: a priority with no weight would never run while another
// has work, which is what weighting is there to prevent.
func checkWeights(w map[job.Priority]int) error {
	for p := range w {
		if !slices.Contains(job.Priorities, p) {
			return fmt.Errorf("worker: priority weight for %q: not a priority (want high, normal, low)", p)
		}
	}
	for _, p := range job.Priorities {
		if w[p] < 1 {
			return fmt.Errorf("worker: priority %s has weight %d; every priority needs a weight of at least 1 (a 0 would starve it)", p, w[p])
		}
	}
	return nil
}

// queueOrder is the order in which a worker tries its queues at each
// dequeue (asynq's Config.QueueOrder, a patch of genfleet's asynq copy):
// its host's queues strictly before its pool's, so a job routed to the
// host for its warm model is taken here before anything any worker of the
// pool could take; and within each, the priorities weighted, not strict.
//
// Each dequeue, a smooth weighted round robin (nginx's) picks the priority
// to try first; the others follow, heaviest first. With weights 6:3:1 and
// every queue backlogged, of 10 dequeues 6 start with high, 3 with normal
// and 1 with low, spread out (h n h l h n h h n h, not h h h h h h …), so a
// low job waits at most about 10 dequeues behind any backlog of others.
// When the picked priority's queues are empty the dequeue takes the next,
// so an idle priority costs the others nothing.
type queueOrder struct {
	mu      sync.Mutex
	weights []int // by index into job.Priorities
	total   int
	current []int
	// orders[i] is the list to try when priority i is picked.
	orders [][]string
}

func newQueueOrder(hostQueue, poolQueue string, weights map[job.Priority]int) *queueOrder {
	n := len(job.Priorities)
	o := &queueOrder{weights: make([]int, n), current: make([]int, n), orders: make([][]string, n)}
	for i, p := range job.Priorities {
		o.weights[i] = weights[p]
		o.total += weights[p]
	}
	// The fall-through order after a pick: heaviest first, ties by
	// priority (job.Priorities is highest first).
	byWeight := make([]int, n)
	for i := range byWeight {
		byWeight[i] = i
	}
	slices.SortStableFunc(byWeight, func(a, b int) int { return o.weights[b] - o.weights[a] })
	for pick := range n {
		seq := []int{pick}
		for _, i := range byWeight {
			if i != pick {
				seq = append(seq, i)
			}
		}
		var list []string
		for _, base := range []string{hostQueue, poolQueue} {
			for _, i := range seq {
				list = append(list, job.PriorityQueue(base, job.Priorities[i]))
			}
		}
		o.orders[pick] = list
	}
	return o
}

// next returns the queues to try at the next dequeue. The slice is shared:
// callers must not change it.
func (o *queueOrder) next() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	best := 0
	for i, w := range o.weights {
		o.current[i] += w
		if o.current[i] > o.current[best] {
			best = i
		}
	}
	o.current[best] -= o.total
	return o.orders[best]
}

// queues returns every queue of the order with a weight, for asynq's
// Config.Queues (which lists what the server serves; QueueOrder decides the
// order): host queues weighted above pool queues.
func (o *queueOrder) queues() map[string]int {
	m := map[string]int{}
	list := o.orders[0]
	for i, q := range list {
		m[q] = len(list) - i
	}
	return m
}
