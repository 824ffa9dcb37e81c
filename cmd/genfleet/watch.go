package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/job"
)

// eventView shows a job's events.
type eventView struct {
	w      io.Writer
	id     string
	tty    bool
	inLine bool // a progress line is on screen, unfinished
}

// show shows one event: a JSON object per line off a terminal,
//
//	{"event":"progress","job":"5b0c…","id":"1764000000000-3","data":{"step":3,"steps":20}}
//
// and on a terminal a line per state and a progress bar rewritten in place.
func (v *eventView) show(ev client.Event) {
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
			v.line(fmt.Sprintf("model %s: fetched %s from S3, ready in %.0f ms", d.Model, units.FormatSize(d.FetchedBytes), d.AcquireMS))
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
