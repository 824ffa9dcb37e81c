package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/job"
)

// eventStreams is what GET /v1/jobs/{id}/events needs besides the
// server's own: a Redis client of its own, whose connections a waiting
// stream holds (XREAD BLOCK), so that streams never starve the API of
// connections, and the slots that bound how many streams run at once.
type eventStreams struct {
	store *job.Store
	rdb   redis.UniversalClient
	slots chan struct{}
}

// newEventStreams makes the client for up to n streams at once.
func newEventStreams(opt asynq.RedisConnOpt, n int) (*eventStreams, error) {
	// One connection per stream, and a few to spare.
	switch o := opt.(type) {
	case asynq.RedisClientOpt:
		o.PoolSize = n + 4
		opt = o
	case asynq.RedisFailoverClientOpt:
		o.PoolSize = n + 4
		opt = o
	case asynq.RedisClusterClientOpt:
		// The cluster client sizes its pools per node.
	}
	rdb, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("scheduler: unsupported Redis connection option")
	}
	return &eventStreams{store: job.NewStore(rdb), rdb: rdb, slots: make(chan struct{}, n)}, nil
}

// jobEvents is GET /v1/jobs/{id}/events: the job's events as Server-Sent
// Events (text/event-stream), from the first (or from the one after
// Last-Event-ID, a header or the "after" query parameter) to the completed
// event, which carries the job as GET /v1/jobs/{id} shows it; then the
// stream ends. While the job waits in its queue, a queued event without an
// id (queued events are not stored: they are read off the queue) says
// where it is, at once and whenever that changes; while nothing happens, a
// comment line every Config.EventKeepAlive keeps proxies from closing the
// connection. A job that ended without a completed event in its stream (its
// worker died and asynq gave up on it; or it ran before there were events)
// gets one made from its record. A client that comes back after it saw the
// completed event gets 204, which tells an EventSource to stop.
func (s *Server) jobEvents(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !checkJobID(w, id) {
		return
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("after")
	}
	if last != "" && !job.ValidEventID(last) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("Last-Event-ID %q is not an event id (<ms>-<seq>, as the stream's id: lines give)", last), Field: "Last-Event-ID"})
		return
	}
	rec := s.lookupFor(w, r, id)
	if rec == nil {
		return
	}
	ctx := r.Context()
	ended := rec.Status.Terminal()
	if ended && last != "" {
		if ev, err := s.streams.store.LastEvent(ctx, id); err == nil && ev != nil && ev.Type == job.EventCompleted && !eventIDLess(last, ev.ID) {
			w.WriteHeader(http.StatusNoContent) // seen it all
			return
		}
	}
	select {
	case s.streams.slots <- struct{}{}:
		defer func() { <-s.streams.slots }()
	default:
		w.Header().Set("Retry-After", retryAfter)
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("too many event streams open (%d, --max-event-streams); poll GET /v1/jobs/%s or retry", cap(s.streams.slots), id))
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: pass events through at once
	w.WriteHeader(http.StatusOK)
	var buf bytes.Buffer
	buf.WriteString("retry: 1000\n\n") // reconnect after 1 s
	status, queuedSent := rec.Status, ""
	for first := true; ; first = false {
		block := s.cfg.EventKeepAlive
		switch {
		case ended || first:
			block = -1 // read what is there: then end, or say where the job waits
		case status == job.StatusQueued:
			block = time.Second // look up the position now and then
		}
		if err := s.flush(w, rc, &buf); err != nil {
			return // the client went away
		}
		evs, err := s.streams.store.ReadEvents(ctx, id, last, block, 100)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("event stream", "job", id, "err", err)
				writeSSE(&buf, "", "error", []byte(`{"error":"events unavailable; reconnect with Last-Event-ID"}`))
				_ = s.flush(w, rc, &buf)
			}
			return
		}
		for _, ev := range evs {
			if ev.Type == job.EventCompleted {
				writeSSE(&buf, ev.ID, ev.Type, s.completedData(ctx, id, apiBase(r), ev.Data))
				_ = s.flush(w, rc, &buf)
				return
			}
			writeSSE(&buf, ev.ID, ev.Type, ev.Data)
			last = ev.ID
			switch ev.Type {
			case job.EventStarted, job.EventModel, job.EventProgress:
				status = job.StatusRunning
			case job.EventQueued, job.EventRequeued:
				status = job.StatusQueued
			}
		}
		if len(evs) > 0 {
			continue
		}
		// Nothing new: has the job ended without a completed event, and
		// where does it wait?
		rec, err := s.lookup(ctx, id)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				buf.WriteString(": keep-alive\n\n")
			}
		case rec.Status.Terminal():
			if !ended {
				ended = true // read the stream once more: the event may have just landed
				continue
			}
			// Give the stream the completed event it lacks, so that the
			// client's reconnect with its id is answered 204.
			eid, err := s.streams.store.EnsureCompleted(ctx, rec)
			if err != nil {
				s.log.Warn("event stream", "job", id, "err", err)
			}
			writeSSE(&buf, eid, job.EventCompleted, s.completedData(ctx, id, apiBase(r), nil))
			_ = s.flush(w, rc, &buf)
			return
		case rec.Status == job.StatusQueued && rec.Queue != "":
			status = job.StatusQueued
			if data := s.queuedData(ctx, rec.Queue, id); data != queuedSent {
				writeSSE(&buf, "", job.EventQueued, []byte(data))
				queuedSent = data
			} else {
				buf.WriteString(": keep-alive\n\n")
			}
		default:
			status = rec.Status
			buf.WriteString(": keep-alive\n\n")
		}
	}
}

// flush writes what buf holds to the client and flushes it.
func (s *Server) flush(w http.ResponseWriter, rc *http.ResponseController, buf *bytes.Buffer) error {
	if buf.Len() > 0 {
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
		buf.Reset()
	}
	return rc.Flush()
}

// writeSSE appends one event to buf: its id (when not empty), its type and
// its data, one data: line per line of data.
func writeSSE(buf *bytes.Buffer, id, typ string, data []byte) {
	if id != "" {
		buf.WriteString("id: " + id + "\n")
	}
	buf.WriteString("event: " + typ + "\n")
	for _, line := range bytes.Split(data, []byte("\n")) {
		buf.WriteString("data: ")
		buf.Write(line)
		buf.WriteByte('\n')
	}
	buf.WriteByte('\n')
}

// completedData is the data of the completed event that ends a stream:
// the job as GET /v1/jobs/{id} shows it (status, error, result, image
// URL), or, should that read fail, what the event itself said.
func (s *Server) completedData(ctx context.Context, id, base string, fallback json.RawMessage) []byte {
	rec, err := s.lookup(ctx, id)
	if err == nil {
		if b, err := json.Marshal(s.jobView(ctx, rec, base)); err == nil {
			return b
		}
	}
	if fallback == nil {
		return []byte(`{"status":"` + string(job.StatusFailed) + `","error":"the job's record could not be read"}`)
	}
	return fallback
}

// queuedData is the data of a queued event for job id waiting in queue:
// its position there (jobs ahead of it in asynq's pending list), when it
// is among the first 100,000.
func (s *Server) queuedData(ctx context.Context, queue, id string) string {
	pending := "asynq:{" + queue + "}:pending"
	pipe := s.rdb.Pipeline()
	n := pipe.LLen(ctx, pending)
	idx := pipe.LPos(ctx, pending, id, redis.LPosArgs{Rank: -1, MaxLen: 100000})
	_, _ = pipe.Exec(ctx)
	q, _ := json.Marshal(queue)
	if i, err := idx.Result(); err == nil && n.Err() == nil {
		return fmt.Sprintf(`{"status":"queued","queue":%s,"position":%d}`, q, n.Val()-1-i)
	}
	return fmt.Sprintf(`{"status":"queued","queue":%s}`, q)
}

// eventIDLess reports whether event id a comes before b ("<ms>-<seq>",
// compared as numbers).
func eventIDLess(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	ami, _ := strconv.ParseUint(am, 10, 64)
	bmi, _ := strconv.ParseUint(bm, 10, 64)
	if ami != bmi {
		return ami < bmi
	}
	asi, _ := strconv.ParseUint(as, 10, 64)
	bsi, _ := strconv.ParseUint(bs, 10, 64)
	return asi < bsi
}
