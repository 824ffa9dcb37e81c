package cuda

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// errOverBudget means a model cannot be made resident: it is larger than
// the budget, or the models in use leave too little room for it.
var errOverBudget = errors.New("cuda: device memory budget exceeded")

// slot is one model's weights on the device.
type slot struct {
	key     string // model digest
	bytes   int64
	ptr     cuDevicePtr
	refs    int       // Generate calls using it now
	lastUse time.Time // when refs last went to 0, or when it was added
}

// residents is the set of models whose weights are on the device, under
// a byte budget with least-recently-used eviction and a keep-alive. It
// makes no driver calls: callers free the slots it hands back. Not safe
// for concurrent use; the Backend guards it with its mutex.
type residents struct {
	budget int64
	// keepAlive is how long an unused model stays; 0 or less keeps it
	// until the budget needs the room.
	keepAlive time.Duration
	used      int64
	slots     map[string]*slot
}

func newResidents(budget int64, keepAlive time.Duration) *residents {
	return &residents{budget: budget, keepAlive: keepAlive, slots: map[string]*slot{}}
}

// acquire returns the resident slot for key with its reference count
// raised, or nil if key is not resident.
func (r *residents) acquire(key string) *slot {
	s := r.slots[key]
	if s != nil {
		s.refs++
	}
	return s
}

// release drops one reference to key taken by acquire or add, stamping
// the time of last use.
func (r *residents) release(key string, now time.Time) {
	if s := r.slots[key]; s != nil && s.refs > 0 {
		s.refs--
		s.lastUse = now
	}
}

// makeRoom returns the slots to evict, least recently used first, so
// that n more bytes fit in the budget. Slots in use are never chosen. It
// evicts nothing and returns an error wrapping errOverBudget when n
// cannot fit even after evicting every unused slot. The victims are
// removed from the set; the caller frees their device memory.
func (r *residents) makeRoom(n int64) ([]*slot, error) {
	if n > r.budget {
		return nil, fmt.Errorf("%w: model needs %d bytes, budget is %d", errOverBudget, n, r.budget)
	}
	if r.used+n <= r.budget {
		return nil, nil
	}
	idle := make([]*slot, 0, len(r.slots))
	var busy int64
	for _, s := range r.slots {
		if s.refs > 0 {
			busy += s.bytes
		} else {
			idle = append(idle, s)
		}
	}
	if busy+n > r.budget {
		return nil, fmt.Errorf("%w: model needs %d bytes, models in use hold %d of %d", errOverBudget, n, busy, r.budget)
	}
	sort.Slice(idle, func(i, j int) bool {
		if !idle[i].lastUse.Equal(idle[j].lastUse) {
			return idle[i].lastUse.Before(idle[j].lastUse)
		}
		return idle[i].key < idle[j].key
	})
	var victims []*slot
	for _, s := range idle {
		if r.used+n <= r.budget {
			break
		}
		victims = append(victims, s)
		r.remove(s.key)
	}
	return victims, nil
}

// add records a newly uploaded model with one reference held. The caller
// made room with makeRoom first.
func (r *residents) add(s *slot, now time.Time) {
	s.refs = 1
	s.lastUse = now
	r.slots[s.key] = s
	r.used += s.bytes
}

// remove forgets key and returns its slot (nil if absent).
func (r *residents) remove(key string) *slot {
	s := r.slots[key]
	if s != nil {
		delete(r.slots, key)
		r.used -= s.bytes
	}
	return s
}

// expired removes and returns the unused slots idle for keepAlive or
// longer at now, oldest first.
func (r *residents) expired(now time.Time) []*slot {
	if r.keepAlive <= 0 {
		return nil
	}
	var out []*slot
	for _, s := range r.slots {
		if s.refs == 0 && now.Sub(s.lastUse) >= r.keepAlive {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].lastUse.Before(out[j].lastUse) })
	for _, s := range out {
		r.remove(s.key)
	}
	return out
}

// idle removes and returns every unused slot: what is freed when a
// device allocation fails for want of memory the budget thought it had.
func (r *residents) idle() []*slot {
	var out []*slot
	for _, s := range r.slots {
		if s.refs == 0 {
			out = append(out, s)
		}
	}
	for _, s := range out {
		r.remove(s.key)
	}
	return out
}
