package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/sse"
	"github.com/genfleet/genfleet/job"
)

// openEvents opens job id's event stream with a plain HTTP client,
// resuming after last when it is not empty.
func (fl *fleet) openEvents(id, last string) (*http.Response, *sse.Reader) {
	fl.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fl.api.URL+"/v1/jobs/"+id+"/events", nil)
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fl.t.Fatal(err)
	}
	return resp, sse.NewReader(resp.Body)
}

// A job's events read by a real HTTP client as Server-Sent Events: queued
// with its place in the queue (live, without an id), started, model,
// progress, and, after a
// reconnect with Last-Event-ID that repeats and loses nothing, completed
// with the job's result, after which the stream ends; a reconnect with the
// completed event's id gets 204. `genfleet submit --wait` follows the same
// stream and prints one JSON object per event when not on a terminal.
func TestJobEventsOverSSE(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "cpu")
	// Three jobs before any worker: the third has two ahead of it.
	body := `{"model":"demo","prompt":"events","seed":%d,"width":128,"height":128,"steps":30}`
	var ids []string
	for i := range 3 {
		ids = append(ids, fl.submit(strings.Replace(body, "%d", string(rune('1'+i)), 1)))
	}
	id := ids[2]
	resp, r := fl.openEvents(id, "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET events = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	next := func(r *sse.Reader) sse.Event {
		t.Helper()
		ev, err := r.Next()
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		return ev
	}
	ev := next(r)
	var q struct {
		Status, Queue string
		Position      *int
	}
	if err := json.Unmarshal(ev.Data, &q); err != nil || ev.Type != job.EventQueued || ev.ID != "" ||
		q.Queue != "pool:cpu" || q.Position == nil || *q.Position != 2 {
		t.Fatalf("first event %+v %s; want queued in pool:cpu with 2 ahead, without an id", ev, ev.Data)
	}
	// The first job is cancelled: the third now has one ahead of it.
	if code, b := fl.do("DELETE", "/v1/jobs/"+ids[0], ""); code != http.StatusOK {
		t.Fatalf("cancel: %d %s", code, b)
	}
	ev = next(r)
	if err := json.Unmarshal(ev.Data, &q); err != nil || ev.Type != job.EventQueued || q.Position == nil || *q.Position != 1 {
		t.Fatalf("after a job ahead left: %+v %s; want queued with 1 ahead", ev, ev.Data)
	}
	seen := []sse.Event{ev}

	fl.startWorker()
	// Read until the first progress event, then hang up.
	for ev.Type != job.EventProgress {
		ev = next(r)
		seen = append(seen, ev)
	}
	resp.Body.Close()
	resp, r = fl.openEvents(id, ev.ID)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reconnect = %d", resp.StatusCode)
	}
	for ev.Type != job.EventCompleted {
		ev = next(r)
		seen = append(seen, ev)
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the completed event: %v; want the stream to end", err)
	}
	resp.Body.Close()

	types := map[string]int{}
	// The stream's ids as the client saw them (an event carries the last
	// id, so a live queued event repeats the one before it).
	for i, e := range seen {
		types[e.Type]++
		if e.Type == job.EventQueued {
			continue
		}
		if !job.ValidEventID(e.ID) {
			t.Fatalf("event %d %+v has no id", i, e)
		}
		if i > 0 && seen[i-1].Type != job.EventQueued && !idLess(seen[i-1].ID, e.ID) {
			t.Fatalf("event %d id %s does not follow %s: repeated or out of order (%v)", i, e.ID, seen[i-1].ID, seen)
		}
	}
	t.Logf("events over two connections: %v", types)
	if types[job.EventStarted] != 1 || types[job.EventModel] != 1 || types[job.EventProgress] < 2 || types[job.EventCompleted] != 1 {
		t.Fatalf("events seen %v; want one started, one model, progress, one completed", types)
	}
	var final job.Record
	if err := json.Unmarshal(ev.Data, &final); err != nil || final.Status != job.StatusSucceeded || final.Result == nil || final.ID != id {
		t.Fatalf("completed event %s; want the succeeded job with its result", ev.Data)
	}
	// Back after the end: nothing more to say.
	resp, _ = fl.openEvents(id, ev.ID)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("reconnect after completed = %d, want 204", resp.StatusCode)
	}
	// A fresh client gets the whole history, ending with completed.
	resp, r = fl.openEvents(id, "")
	var all []string
	for {
		e, err := r.Next()
		if err != nil {
			break
		}
		all = append(all, e.Type)
	}
	resp.Body.Close()
	if len(all) < 4 || all[0] != job.EventStarted || all[len(all)-1] != job.EventCompleted {
		t.Fatalf("history %v", all)
	}

	// Bad requests.
	if code, b := fl.do("GET", "/v1/jobs/"+id+"/events", "", "Last-Event-ID", "yesterday"); code != http.StatusBadRequest || !strings.Contains(string(b), "Last-Event-ID") {
		t.Fatalf("bad Last-Event-ID: %d %s", code, b)
	}
	if code, _ := fl.do("GET", "/v1/jobs/no-such-job/events", ""); code != http.StatusNotFound {
		t.Fatalf("unknown job: %d", code)
	}

	// The CLI follows the stream.
	code, stdout, stderr := runCLI("submit", "--api", fl.api.URL, "--model", "demo", "--prompt", "cli events",
		"--width", "128", "--height", "128", "--steps", "30", "--wait")
	if code != 0 {
		t.Fatalf("submit --wait = %d: %s", code, stderr)
	}
	cliID := strings.TrimSpace(stdout)
	var kinds []string
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		var l struct{ Event, Job, ID string }
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Job != cliID {
			t.Fatalf("submit --wait printed %q; want one JSON object per event of job %s", sc.Text(), cliID)
		}
		kinds = append(kinds, l.Event)
	}
	t.Logf("submit --wait printed %v", kinds)
	if len(kinds) < 4 || kinds[len(kinds)-1] != job.EventCompleted || !contains(kinds, job.EventProgress) || !contains(kinds, job.EventStarted) {
		t.Fatalf("submit --wait events %v", kinds)
	}
	fl.stopWorkers()
}

// A job cancelled while queued: its stream ends with completed, cancelled.
func TestJobEventsOfACancelledJob(t *testing.T) {
	fl := newFleet(t, 1<<20, "cpu")
	id := fl.submit(`{"model":"demo","prompt":"never runs"}`)
	resp, r := fl.openEvents(id, "")
	defer resp.Body.Close()
	if ev, err := r.Next(); err != nil || ev.Type != job.EventQueued {
		t.Fatalf("first event %+v %v", ev, err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		fl.do("DELETE", "/v1/jobs/"+id, "")
	}()
	ev, err := r.Next()
	var rec job.Record
	if err != nil || ev.Type != job.EventCompleted || json.Unmarshal(ev.Data, &rec) != nil || rec.Status != job.StatusCancelled {
		t.Fatalf("after the cancel: %+v %s %v", ev, ev.Data, err)
	}
}

func idLess(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	if len(am) != len(bm) {
		return len(am) < len(bm)
	}
	if am != bm {
		return am < bm
	}
	if len(as) != len(bs) {
		return len(as) < len(bs)
	}
	return as < bs
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
