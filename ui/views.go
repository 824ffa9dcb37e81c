package ui

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/job"
)

// The view models: what the templates show, computed from the API's
// answers. Nothing here calls the API.

// hostCard is one host on the fleet page.
type hostCard struct {
	Host, Class string
	Gone        bool
	// Late says the newest heartbeat is older than three beats of the
	// default interval: the host may be going away.
	Late                          bool
	Devices, Backends, Engines    []string
	Processes, Concurrency        int
	InFlight, Backlog             int
	Age                           string // since the newest heartbeat
	CacheUsed, CacheBudget        string
	CachePercent                  int // of the budget; 0 without one
	Models                        []modelRow
	ProcessRows                   []processRow
	HasBudget, HasModels, HasGPUs bool
}

// processRow is one worker process of a host.
type processRow struct {
	PID                   int
	Backend, Device       string
	InFlight, Concurrency int
	Age                   string
}

// modelRow is one model file in a host's cache.
type modelRow struct {
	Name, Digest, Size string
	Resident           int // percent of the file in RAM
	InUse, OnDevice    bool
	LastUsed           string
}

// lateAfter is how old a heartbeat may be before its host shows as late
// (three beats at the default interval of 2s).
const lateAfter = 6 * time.Second

// shortDigest is "sha256:0123456789ab".
func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// ago says how long before now t was, for people: "0.4s", "12s", "3m
// 20s", "2h 5m", "4d".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return span(now.Sub(t))
}

func span(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// modelNames maps each file digest to the names of the models that have
// it, from the registry's list and from what the workers report loading.
func modelNames(models *modelsJSON, hbs []job.Heartbeat) map[string]string {
	names := map[string][]string{}
	add := func(d, n string) {
		if d != "" && n != "" && !slices.Contains(names[d], n) {
			names[d] = append(names[d], n)
		}
	}
	if models != nil {
		for _, m := range models.Models {
			for _, f := range m.Files {
				n := m.Name
				if len(m.Files) > 1 && f.Role != "" {
					n += " (" + f.Role + ")"
				}
				add(f.Digest, n)
			}
		}
	}
	for _, hb := range hbs {
		for _, m := range hb.Models {
			for _, d := range m.Digests {
				add(d, m.Ref)
			}
		}
	}
	out := make(map[string]string, len(names))
	for d, n := range names {
		out[d] = strings.Join(n, ", ")
	}
	return out
}

// hostCards makes the fleet page's hosts: live ones by name, then the
// gone ones, most recently seen first.
func hostCards(w *workersJSON, models *modelsJSON, now time.Time) []hostCard {
	names := modelNames(models, w.Workers)
	byHost := map[string][]job.Heartbeat{}
	for _, hb := range w.Workers {
		byHost[hb.Host] = append(byHost[hb.Host], hb)
	}
	var out []hostCard
	for _, h := range w.Hosts {
		out = append(out, hostCardOf(h, byHost[h.Host], names, false, now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	for _, h := range w.Gone {
		out = append(out, hostCardOf(h, nil, names, true, now))
	}
	return out
}

func hostCardOf(h hostJSON, hbs []job.Heartbeat, names map[string]string, gone bool, now time.Time) hostCard {
	c := hostCard{Host: h.Host, Class: h.DeviceClass, Gone: gone, Engines: h.Engines,
		Processes: h.Processes, Concurrency: h.Concurrency, InFlight: h.InFlight, Backlog: h.Backlog,
		CacheUsed: units.FormatSize(h.CacheUsed)}
	if h.CacheBudget > 0 {
		c.HasBudget = true
		c.CacheBudget = units.FormatSize(h.CacheBudget)
		c.CachePercent = int(math.Round(100 * float64(h.CacheUsed) / float64(h.CacheBudget)))
	}
	newest := h.LastSeen
	onDevice := map[string]bool{}
	sort.Slice(hbs, func(i, j int) bool { return hbs[i].PID < hbs[j].PID })
	for _, hb := range hbs {
		if hb.At.After(newest) {
			newest = hb.At
		}
		if hb.Device != "" && !slices.Contains(c.Devices, hb.Device) {
			c.Devices = append(c.Devices, hb.Device)
		}
		if !slices.Contains(c.Backends, hb.Backend) {
			c.Backends = append(c.Backends, hb.Backend)
		}
		for _, m := range hb.Models {
			if m.OnDevice {
				for _, d := range m.Digests {
					onDevice[d] = true
				}
			}
		}
		c.ProcessRows = append(c.ProcessRows, processRow{PID: hb.PID, Backend: hb.Backend, Device: hb.Device,
			InFlight: hb.InFlight, Concurrency: hb.Concurrency, Age: ago(now, hb.At)})
	}
	c.HasGPUs = len(c.Devices) > 0
	c.Age = ago(now, newest)
	c.Late = !gone && !newest.IsZero() && now.Sub(newest) > lateAfter
	blobs := slices.Clone(h.Blobs)
	sort.SliceStable(blobs, func(i, j int) bool { return blobs[i].LastUsed.After(blobs[j].LastUsed) })
	for _, b := range blobs {
		name := names[b.Digest]
		if name == "" {
			name = "(unregistered file)"
		}
		c.Models = append(c.Models, modelRow{Name: name, Digest: shortDigest(b.Digest), Size: units.FormatSize(b.Size),
			Resident: int(math.Round(100 * b.Resident)), InUse: b.InUse, OnDevice: onDevice[b.Digest], LastUsed: ago(now, b.LastUsed)})
	}
	c.HasModels = len(c.Models) > 0
	return c
}

// queueGroup is the queues of one device class and priority: its pool
// queue and the host queues of its hosts.
type queueGroup struct {
	Class, Priority                   string
	Pending, Active, Scheduled, Retry int
	Archived                          int
	Queues                            []queueJSON
	Spark                             spark
}

// spark is a sparkline of a group's jobs (pending + active + retry) over
// the history, drawn in a 120×32 box.
type spark struct {
	Points        string // SVG polyline points
	Label         string // the same in words
	Now, Max      int
	Span          string
	HasHistory    bool
	Width, Height int
}

// priorities are the words that, after a queue's class or host, name its
// priority ("pool:cpu:high").
var priorities = []string{"critical", "high", "default", "normal", "low"}

// splitQueue names a queue's kind ("pool", "host" or the name's own
// prefix), subject (device class or host id) and priority ("" for none).
// A pool queue's third part is always its priority; a host id may hold
// ':', so a host queue's last part is a priority only when it is one of
// the known words.
func splitQueue(name string) (kind, subject, priority string) {
	kind, rest, found := strings.Cut(name, ":")
	if !found {
		return "", name, ""
	}
	if kind == "pool" {
		subject, priority, _ = strings.Cut(rest, ":")
		return kind, subject, priority
	}
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && slices.Contains(priorities, rest[i+1:]) {
		return kind, rest[:i], rest[i+1:]
	}
	return kind, rest, ""
}

// queueGroups groups the queues by device class (a host queue by its
// host's class) and priority, with each group's sparkline.
func queueGroups(q *queuesJSON, w *workersJSON) []queueGroup {
	classOf := map[string]string{}
	if w != nil {
		for _, h := range append(slices.Clone(w.Hosts), w.Gone...) {
			classOf[h.Host] = h.DeviceClass
		}
	}
	groupOf := func(name string) (string, string) {
		kind, subject, prio := splitQueue(name)
		class := subject
		switch kind {
		case "host":
			if class = classOf[subject]; class == "" {
				class = "unknown class"
			}
		case "pool":
		default:
			class = name
		}
		if prio == "" {
			prio = "default"
		}
		return class, prio
	}
	idx := map[[2]string]int{}
	var out []queueGroup
	for _, qu := range q.Queues {
		class, prio := groupOf(qu.Name)
		k := [2]string{class, prio}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, queueGroup{Class: class, Priority: prio})
		}
		g := &out[i]
		g.Pending += qu.Pending
		g.Active += qu.Active
		g.Scheduled += qu.Scheduled
		g.Retry += qu.Retry
		g.Archived += qu.Archived
		g.Queues = append(g.Queues, qu)
	}
	// The history, summed per group.
	series := make([][]int, len(out))
	for _, s := range q.History {
		for i := range out {
			series[i] = append(series[i], 0)
		}
		for name, v := range s.Queues {
			class, prio := groupOf(name)
			if i, ok := idx[[2]string{class, prio}]; ok {
				series[i][len(series[i])-1] += v[0] + v[1] + v[2]
			}
		}
	}
	var window time.Duration
	if n := len(q.History); n > 1 {
		window = q.History[n-1].At.Sub(q.History[0].At)
	}
	for i := range out {
		out[i].Spark = sparkOf(series[i], window)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Class != out[j].Class {
			return out[i].Class < out[j].Class
		}
		return prioRank(out[i].Priority) < prioRank(out[j].Priority)
	})
	return out
}

func prioRank(p string) int {
	if i := slices.Index(priorities, p); i >= 0 {
		return i
	}
	return len(priorities)
}

func sparkOf(v []int, window time.Duration) spark {
	const w, h = 120, 32
	s := spark{Width: w, Height: h, Span: span(window)}
	if len(v) == 0 {
		s.Label = "no history yet"
		return s
	}
	s.HasHistory = len(v) > 1
	s.Now = v[len(v)-1]
	s.Max = slices.Max(v)
	top := max(s.Max, 1)
	var b strings.Builder
	for i, x := range v {
		px := 0.0
		if len(v) > 1 {
			px = float64(i) * w / float64(len(v)-1)
		}
		py := h - 2 - float64(x)*(h-4)/float64(top)
		fmt.Fprintf(&b, "%.1f,%.1f ", px, py)
	}
	s.Points = strings.TrimSpace(b.String())
	s.Label = fmt.Sprintf("jobs waiting or running over the last %s: now %d, at most %d", s.Span, s.Now, s.Max)
	return s
}

// jobCard is a job in a list.
type jobCard struct {
	ID, Short, Status, Model, Prompt string
	Size                             string
	When                             string // since it was last updated
	Duration                         string // total, once ended
	Thumb                            bool
	Step, Steps                      int
	Error                            string
}

func jobCardOf(r *jobJSON, now time.Time) jobCard {
	c := jobCard{ID: r.ID, Short: r.ID, Status: string(r.Status), Model: r.Model}
	if len(c.Short) > 8 {
		c.Short = c.Short[:8]
	}
	if r.Request != nil {
		c.Prompt = r.Request.Prompt
		c.Size = fmt.Sprintf("%d×%d, %d steps", r.Request.Width, r.Request.Height, r.Request.Steps)
	}
	for _, t := range []time.Time{r.FinishedAt, r.StartedAt, r.CreatedAt} {
		if !t.IsZero() {
			c.When = ago(now, t)
			break
		}
	}
	if ms, ok := r.Timings["total"]; ok && r.Status.Terminal() {
		c.Duration = msString(ms)
	}
	c.Thumb = r.Status == job.StatusSucceeded && r.Result != nil
	if r.Progress != nil {
		c.Step, c.Steps = r.Progress.Step, r.Progress.Steps
	}
	c.Error = r.Error
	return c
}

func msString(ms float64) string {
	switch {
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64) + " ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(ms/1000, 'f', 2, 64) + " s"
}

// bar is one phase of a job's waterfall, positions in percent of the
// whole.
type bar struct {
	Phase, Label, Note string
	Start, Len         float64
	MS                 string
}

// phaseOrder is the order of a job's phases; labels say what each is.
var phaseOrder = []struct{ key, label, note string }{
	{"queue_wait", "queue wait", "submit to start"},
	{"resolve", "resolve", "model name to manifest"},
	{"wait", "wait", "for another process fetching the model"},
	{"fetch", "fetch", "S3 to local cache"},
	{"verify", "verify", "digest check, durable install"},
	{"map", "map", "mmap of the cached file"},
	{"read", "read", "copy into private memory"},
	{"prefault", "prefault", "pages touched in advance"},
	{"generate", "generate", "the backend's steps (a GPU upload is part of it)"},
	{"encode", "encode", "PNG"},
	{"upload", "store", "upload of the image to the outputs bucket"},
}

// waterfall lays the job's timed phases end to end in pipeline order;
// the time the worker spent outside them (its total less their sum) ends
// the row as "other". Phases of 0 ms are left out. Timings the page does
// not know come before "other", in name order.
func waterfall(t map[string]float64) (bars []bar, total string) {
	type ph struct {
		key, label, note string
		ms               float64
	}
	var phases []ph
	// acquire sums the cache's phases; engine_load is part of generate.
	known := map[string]bool{"total": true, "acquire": true, "engine_load": true}
	var worker float64
	for _, p := range phaseOrder {
		known[p.key] = true
		if ms := t[p.key]; ms > 0 {
			note := p.note
			if p.key == "generate" && t["engine_load"] > 0 {
				note = "the backend's steps, of which " + msString(t["engine_load"]) + " the engine loading the weights"
			}
			phases = append(phases, ph{p.key, p.label, note, ms})
			if p.key != "queue_wait" {
				worker += ms
			}
		}
	}
	var extra []string
	for k := range t {
		if !known[k] && t[k] > 0 {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		phases = append(phases, ph{k, strings.ReplaceAll(k, "_", " "), "", t[k]})
		worker += t[k]
	}
	if other := t["total"] - worker; other > 0.05*t["total"] && other > 1 {
		phases = append(phases, ph{"other", "other", "the worker's time outside the phases above (record writes)", other})
	}
	var sum float64
	for _, p := range phases {
		sum += p.ms
	}
	if sum == 0 {
		return nil, ""
	}
	var at float64
	for _, p := range phases {
		bars = append(bars, bar{Phase: p.key, Label: p.label, Note: p.note, Start: 100 * at / sum, Len: max(100*p.ms/sum, 0.3), MS: msString(p.ms)})
		at += p.ms
	}
	return bars, msString(sum)
}
