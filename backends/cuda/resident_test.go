package cuda

import (
	"errors"
	"reflect"
	"sort"
	"testing"
	"time"
)

func keys(ss []*slot) []string {
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.key)
	}
	return out
}

func TestResidentsMakeRoom(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type model struct {
		key   string
		bytes int64
		used  time.Duration // last use, after t0
		busy  bool
	}
	tests := []struct {
		name    string
		budget  int64
		have    []model
		need    int64
		victims []string
		wantErr bool
	}{
		{name: "fits", budget: 100, have: []model{{"a", 40, 1, false}}, need: 60},
		{name: "evicts least recently used", budget: 100,
			have: []model{{"a", 40, 2, false}, {"b", 40, 1, false}}, need: 30, victims: []string{"b"}},
		{name: "evicts as many as needed", budget: 100,
			have: []model{{"a", 30, 3, false}, {"b", 30, 1, false}, {"c", 30, 2, false}}, need: 70, victims: []string{"b", "c"}},
		{name: "skips models in use", budget: 100,
			have: []model{{"a", 40, 1, true}, {"b", 40, 2, false}}, need: 50, victims: []string{"b"}},
		{name: "models in use leave too little", budget: 100,
			have: []model{{"a", 60, 1, true}, {"b", 30, 2, false}}, need: 50, wantErr: true},
		{name: "larger than the budget", budget: 100, need: 101, wantErr: true},
		{name: "exactly the budget", budget: 100, have: []model{{"a", 10, 1, false}}, need: 100, victims: []string{"a"}},
		{name: "ties broken by key", budget: 100,
			have: []model{{"b", 50, 1, false}, {"a", 50, 1, false}}, need: 50, victims: []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newResidents(tt.budget, time.Minute)
			for _, m := range tt.have {
				r.add(&slot{key: m.key, bytes: m.bytes}, t0)
				if !m.busy {
					r.release(m.key, t0.Add(m.used))
				}
			}
			before := r.used
			victims, err := r.makeRoom(tt.need)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, errOverBudget) {
					t.Errorf("error %v does not wrap errOverBudget", err)
				}
				if r.used != before || len(victims) != 0 {
					t.Errorf("a failed makeRoom evicted %v", keys(victims))
				}
				return
			}
			if got := keys(victims); !reflect.DeepEqual(got, tt.victims) && (len(got) > 0 || len(tt.victims) > 0) {
				t.Errorf("victims %v, want %v", got, tt.victims)
			}
			if r.used+tt.need > tt.budget {
				t.Errorf("after makeRoom %d used + %d needed > budget %d", r.used, tt.need, tt.budget)
			}
			for _, v := range victims {
				if r.slots[v.key] != nil {
					t.Errorf("victim %s still resident", v.key)
				}
			}
		})
	}
}

func TestResidentsAcquireRelease(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newResidents(100, time.Minute)
	if r.acquire("a") != nil {
		t.Fatal("acquire of an absent model returned a slot")
	}
	r.add(&slot{key: "a", bytes: 10}, t0)
	s := r.acquire("a")
	if s == nil || s.refs != 2 {
		t.Fatalf("acquire: %+v, want refs 2", s)
	}
	r.release("a", t0.Add(time.Second))
	r.release("a", t0.Add(2*time.Second))
	r.release("a", t0.Add(3*time.Second)) // extra release is ignored
	if s.refs != 0 || !s.lastUse.Equal(t0.Add(2*time.Second)) {
		t.Errorf("after releases refs %d lastUse %v", s.refs, s.lastUse)
	}
	if got := r.remove("a"); got != s || r.used != 0 || r.remove("a") != nil {
		t.Errorf("remove: used %d", r.used)
	}
}

func TestResidentsExpired(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name      string
		keepAlive time.Duration
		at        time.Duration
		want      []string
	}{
		{name: "none old enough", keepAlive: time.Minute, at: 30 * time.Second},
		{name: "oldest first", keepAlive: time.Minute, at: 2*time.Minute + 5*time.Second, want: []string{"old", "mid"}},
		{name: "exactly at keep-alive", keepAlive: time.Minute, at: time.Minute + time.Second, want: []string{"old"}},
		{name: "keep forever", keepAlive: -1, at: time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newResidents(100, tt.keepAlive)
			r.add(&slot{key: "old", bytes: 10}, t0)
			r.release("old", t0.Add(time.Second))
			r.add(&slot{key: "mid", bytes: 10}, t0)
			r.release("mid", t0.Add(time.Minute))
			r.add(&slot{key: "busy", bytes: 10}, t0) // never released
			got := keys(r.expired(t0.Add(tt.at)))
			if len(got) != len(tt.want) || (len(got) > 0 && !reflect.DeepEqual(got, tt.want)) {
				t.Errorf("expired %v, want %v", got, tt.want)
			}
			if r.slots["busy"] == nil {
				t.Error("a model in use expired")
			}
			if r.used != int64(10*len(r.slots)) {
				t.Errorf("used %d with %d slots", r.used, len(r.slots))
			}
		})
	}
}

func TestResidentsIdle(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newResidents(100, 0)
	for _, k := range []string{"a", "b", "c"} {
		r.add(&slot{key: k, bytes: 10}, t0)
	}
	r.release("a", t0)
	r.release("c", t0)
	got := keys(r.idle())
	sort.Strings(got)
	if !reflect.DeepEqual(got, []string{"a", "c"}) || r.used != 10 {
		t.Errorf("idle %v, used %d", got, r.used)
	}
}

// OnDevice tells a resident model's digest from others, without a GPU.
func TestOnDevice(t *testing.T) {
	b := &Backend{res: newResidents(1<<20, 0)}
	b.res.add(&slot{key: "sha256:aa", bytes: 10}, time.Now())
	if !b.OnDevice("sha256:aa") || b.OnDevice("sha256:bb") {
		t.Fatalf("OnDevice(aa)=%v OnDevice(bb)=%v, want true, false", b.OnDevice("sha256:aa"), b.OnDevice("sha256:bb"))
	}
}
