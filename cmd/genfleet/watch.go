package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/genfleet/genfleet/internal/sse"
	"github.com/genfleet/genfleet/job"
)

// errNoEvents: the scheduler has no event stream (an older one).
var errNoEvents = errors.New("the scheduler serves no job events")

// watchJob follows job id's events (GET /v1/jobs/{id}/events) until the
// job ends, showing them on w: on a terminal, a line per state and a
// progress bar rewritten in place; otherwise one JSON object per event,
//
//	{"event":"progress","job":"5b0c…","id":"1764000000000-3","data":{"step":3,"steps":20}}
//
// It returns the job as the completed event carries it. A stream that
// breaks is reopened with Last-Event-ID, so no event is shown twice or
// missed; it gives up after 5 failed tries in a row.
func watchJob(ctx context.Context, base, token, id string, w io.Writer) (job.Record, error) {
	v := &eventView{w: w, id: id, tty: isTerminal(w)}
	defer v.end()
	last := ""
	failures := 0
	for {
		rec, done, err := v.follow(ctx, base, token, id, &last)
		switch {
		case done:
			return rec, nil
		case errors.Is(err, errNoEvents):
			return job.Record{}, err
		case ctx.Err() != nil:
			return job.Record{}, ctx.Err()
		}
		if failures++; failures >= 5 {
			return job.Record{}, fmt.Errorf("job %s's event stream: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return job.Record{}, ctx.Err()
		case <-time.After(time.Duration(failures) * time.Second):
		}
	}
}

// follow reads one connection's worth of events. done says the job ended;
// rec is then the job.
func (v *eventView) follow(ctx context.Context, base, token, id string, last *string) (rec job.Record, done bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/jobs/"+id+"/events", nil)
	if err != nil {
		return rec, false, err
	}
	setToken(req, token)
	req.Header.Set("Accept", "text/event-stream")
	if *last != "" {
		req.Header.Set("Last-Event-ID", *last)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rec, false, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNoContent:
		// The stream says we have seen its end: read the job itself.
		greq, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/jobs/"+id, nil)
		setToken(greq, token)
		err := doJSON(greq, http.StatusOK, &rec)
		return rec, err == nil, err
	case resp.StatusCode == http.StatusNotFound && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"),
		resp.StatusCode == http.StatusNotFound && apiSays(resp, "no such endpoint"):
		return rec, false, errNoEvents
	case resp.StatusCode != http.StatusOK:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return rec, false, fmt.Errorf("GET /v1/jobs/%s/events: %s: %s", id, resp.Status, strings.TrimSpace(string(b)))
	}
	r := sse.NewReader(resp.Body)
	for {
		ev, err := r.Next()
		if err != nil {
			return rec, false, err
		}
		if r.LastID() != "" {
			*last = r.LastID()
		}
		v.show(ev)
		if ev.Type == job.EventCompleted {
			err := json.Unmarshal(ev.Data, &rec)
			return rec, err == nil, err
		}
	}
}

// apiSays reports whether resp's JSON error contains s (it reads the body).
func apiSays(resp *http.Response, s string) bool {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return strings.Contains(string(b), s)
}

// eventView shows a job's events.
type eventView struct {
	w      io.Writer
	id     string
	tty    bool
	inLine bool // a progress line is on screen, unfinished
}

func (v *eventView) show(ev sse.Event) {
	if !v.tty {
		data := json.RawMessage(ev.Data)
		if !json.Valid(data) {
			data, _ = json.Marshal(string(ev.Data))
		}
		b, _ := json.Marshal(struct {
			Event string          `json:"event"`
			Job   string          `json:"job"`
			ID    string          `json:"id,omitempty"`
			Data  json.RawMessage `json:"data"`
		}{ev.Type, v.id, ev.ID, data})
		fmt.Fprintln(v.w, string(b))
		return
	}
	var d struct {
		Status, Queue, Host, Backend, Model, Source, Error string
		Position                                           *int64
		PID                                                int
		CacheHit                                           bool    `json:"cache_hit"`
		FetchedBytes                                       int64   `json:"fetched_bytes"`
		WaitMS                                             float64 `json:"wait_ms"`
		AcquireMS                                          float64 `json:"acquire_ms"`
		Step, Steps                                        int
	}
	_ = json.Unmarshal(ev.Data, &d)
	switch ev.Type {
	case job.EventProgress:
		const width = 30
		filled := 0
		if d.Steps > 0 {
			filled = width * d.Step / d.Steps
		}
		fmt.Fprintf(v.w, "\rjob %s: [%s%s] step %d/%d\x1b[K", v.id, strings.Repeat("#", filled), strings.Repeat("-", width-filled), d.Step, d.Steps)
		v.inLine = true
		return
	case job.EventQueued:
		line := "queued in " + d.Queue
		if d.Position != nil {
			line += fmt.Sprintf(", %d ahead", *d.Position)
		}
		v.line(line)
	case job.EventStarted:
		v.line(fmt.Sprintf("running on %s (pid %d, %s)", d.Host, d.PID, d.Backend))
	case job.EventModel:
		switch d.Source {
		case "disk":
			v.line(fmt.Sprintf("model %s: on this host's disk (cache hit), ready in %.0f ms", d.Model, d.AcquireMS))
		case "waited":
			v.line(fmt.Sprintf("model %s: waited %.0f ms for another process's download", d.Model, d.WaitMS))
		default:
			v.line(fmt.Sprintf("model %s: fetched %s from S3, ready in %.0f ms", d.Model, humanBytes(d.FetchedBytes), d.AcquireMS))
		}
	case job.EventRequeued:
		v.line("back in the queue: " + d.Error)
	case job.EventCompleted:
		line := d.Status
		if d.Error != "" {
			line += ": " + d.Error
		}
		v.line(line)
	default:
		v.line(ev.Type + " " + string(ev.Data))
	}
}

// line ends an in-place progress line, if any, and shows msg on its own.
func (v *eventView) line(msg string) {
	v.end()
	fmt.Fprintf(v.w, "job %s %s\n", v.id, msg)
}

func (v *eventView) end() {
	if v.inLine {
		fmt.Fprintln(v.w)
		v.inLine = false
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
