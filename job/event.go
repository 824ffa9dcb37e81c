package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// A job's events: what happened to it, in order, in a bounded Redis stream
// per job (genfleet:events:<id>, kept as long as the record). The worker
// writes started (in the script that dequeues the job), model, progress,
// requeued and, in the script that writes the final record, completed.
// GET /v1/jobs/{id}/events serves the stream as Server-Sent Events, with
// queued events made live from the queue while the job waits (docs/jobs.md,
// "Events").
const (
	// EventQueued: the job waits in its queue. Data: status, queue,
	// position (jobs ahead of it there). Not stored: the API makes it
	// from the queue when asked, so it costs a submit nothing.
	EventQueued = "queued"
	// EventStarted: a worker took the job. Data: status, host, pid,
	// backend. It is written with the job's running record (100 ms into
	// the run) or its first event, whichever comes first, or with the
	// final record of a shorter job, before completed: never on the
	// dequeue's round trip, which all of a worker's jobs wait on.
	EventStarted = "started"
	// EventModel: the worker has the job's model. Data: model, source
	// ("disk", "waited" or "fetched", as the result's model_source),
	// cache_hit, fetched_bytes, wait_ms, acquire_ms.
	EventModel = "model"
	// EventProgress: step of steps done. Data: step, steps.
	EventProgress = "progress"
	// EventRequeued: an attempt ended without ending the job (it will be
	// retried, or its worker shut down and handed it back). Data: status
	// ("queued"), error.
	EventRequeued = "requeued"
	// EventCompleted: the job ended. Data: status (succeeded, failed or
	// cancelled), error. The last event of a job.
	EventCompleted = "completed"
)

// Event is one entry of a job's event stream.
type Event struct {
	// ID is the stream entry's id, "<unix ms>-<seq>": increasing within
	// the job, and what Server-Sent Events' Last-Event-ID carries.
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// EventsMaxLen bounds a job's stream: older entries are trimmed (XADD
// MAXLEN ~, so Redis may keep up to about 100 more). Progress events are
// throttled by the worker, so a job seldom comes near it.
const EventsMaxLen = 256

// EventsTTL is how long a job's stream is kept after its last event: as
// long as its record.
const EventsTTL = RecordTTL

const eventsPrefix = "genfleet:events:"

// EventsKey is the Redis key of job id's event stream.
func EventsKey(id string) string { return eventsPrefix + id }

// publishFunc defines the Lua function publish(ek, type, data), which
// appends an event to the stream ek, keeps the stream bounded and alive,
// and returns the entry's id.
var publishFunc = `local function publish(ek, typ, data)
local eid = redis.call("XADD", ek, "MAXLEN", "~", "` + strconv.Itoa(EventsMaxLen) + `", "*", "type", typ, "data", data)
redis.call("PEXPIRE", ek, "` + strconv.FormatInt(EventsTTL.Milliseconds(), 10) + `")
return eid
end
`

// startedFunc defines the Lua function started(rk, ek, data), which
// publishes a started event with data to ek unless this attempt has (the
// record rk's "started" field, cleared by the claim), and notes that it
// did. Whichever of the attempt's writes comes first publishes it, so it
// comes before every other event of the attempt.
const startedFunc = `local function started(rk, ek, data)
if data == "" or redis.call("HEXISTS", rk, "started") == 1 then return end
publish(ek, "started", data)
redis.call("HSET", rk, "started", "1")
end
`

var publishScript = redis.NewScript(publishFunc + startedFunc + `
started(KEYS[2], KEYS[1], ARGV[3])
return publish(KEYS[1], ARGV[1], ARGV[2])`)

// Publish appends an event of type typ with data (a JSON object) to job
// run.ID's stream, after the started event of run's attempt (from
// run.Worker) if that is not out yet. A worker calls it for a job it
// holds the claim of.
func (s *Store) Publish(ctx context.Context, run *Record, typ string, data []byte) error {
	if err := publishScript.Run(ctx, s.rdb, []string{EventsKey(run.ID), recordKey(run.ID)}, typ, data, startedData(run)).Err(); err != nil {
		return fmt.Errorf("publish %s event of job %s: %w", typ, run.ID, err)
	}
	return nil
}

// startedData is the data of run's started event, or "" for a record no
// worker wrote.
func startedData(run *Record) []byte {
	if w := run.Worker; w != nil {
		return StartedEvent(w.Host, w.PID, w.Backend)
	}
	return nil
}

// ReadEvents returns up to count events of job id after the event with id
// after ("0" or "" for the first), waiting up to block for one when there
// is none yet (block < 0: not at all). It returns no events and no error
// when the wait ends empty.
func (s *Store) ReadEvents(ctx context.Context, id, after string, block time.Duration, count int) ([]Event, error) {
	if after == "" {
		after = "0"
	}
	args := &redis.XReadArgs{Streams: []string{EventsKey(id), after}, Count: int64(count), Block: -1}
	if block >= 0 {
		args.Block = block
	}
	res, err := s.rdb.XRead(ctx, args).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read events of job %s: %w", id, err)
	}
	var out []Event
	for _, st := range res {
		for _, m := range st.Messages {
			out = append(out, toEvent(m))
		}
	}
	return out, nil
}

// completeScript publishes a completed event (ARGV[1]) unless the
// stream's last event is one already; it returns the completed event's id.
var completeScript = redis.NewScript(publishFunc + `
local last = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)
if last[1] then
	local f = last[1][2]
	for i = 1, #f - 1, 2 do
		if f[i] == "type" and f[i + 1] == "completed" then return last[1][1] end
	end
end
return publish(KEYS[1], "completed", ARGV[1])`)

// EnsureCompleted gives the stream of rec, a job that ended, its completed
// event if it lacks one (its worker died and asynq gave up on it; or it
// ended before there were events), and returns that event's id.
func (s *Store) EnsureCompleted(ctx context.Context, rec *Record) (string, error) {
	id, err := completeScript.Run(ctx, s.rdb, []string{EventsKey(rec.ID)}, statusEvent(rec.Status, rec.Error)).Text()
	if err != nil {
		return "", fmt.Errorf("publish completed event of job %s: %w", rec.ID, err)
	}
	return id, nil
}

// LastEvent returns job id's latest event, or nil when it has none.
func (s *Store) LastEvent(ctx context.Context, id string) (*Event, error) {
	ms, err := s.rdb.XRevRangeN(ctx, EventsKey(id), "+", "-", 1).Result()
	if err != nil {
		return nil, fmt.Errorf("read events of job %s: %w", id, err)
	}
	if len(ms) == 0 {
		return nil, nil
	}
	ev := toEvent(ms[0])
	return &ev, nil
}

func toEvent(m redis.XMessage) Event {
	ev := Event{ID: m.ID}
	ev.Type, _ = m.Values["type"].(string)
	data, _ := m.Values["data"].(string)
	if json.Valid([]byte(data)) {
		ev.Data = json.RawMessage(data)
	} else {
		ev.Data = json.RawMessage(`{}`)
	}
	return ev
}

// ValidEventID reports whether s has the form of an event's id,
// "<ms>-<seq>", both decimal: what a Last-Event-ID may hold.
func ValidEventID(s string) bool {
	dash := -1
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '-' && dash < 0 && i > 0:
			dash = i
		case c < '0' || c > '9':
			return false
		}
	}
	return dash > 0 && dash < len(s)-1 && len(s) <= 41
}

// statusEvent is the data of a requeued or completed event: the status and
// the error, written by hand as the record is (a worker writes one per job).
func statusEvent(st Status, msg string) []byte {
	b := make([]byte, 0, 64+len(msg))
	b = append(b, `{"status":`...)
	b = appendString(b, string(st))
	if msg != "" {
		b = append(b, `,"error":`...)
		b = appendString(b, msg)
	}
	return append(b, '}')
}

// StartedEvent is the data of a started event: the worker that took the
// job.
func StartedEvent(host string, pid int, backend string) []byte {
	b := []byte(`{"status":"running","host":`)
	b = appendString(b, host)
	b = append(b, `,"pid":`...)
	b = strconv.AppendInt(b, int64(pid), 10)
	b = append(b, `,"backend":`...)
	b = appendString(b, backend)
	return append(b, '}')
}

// finishEvent is the event a record write publishes: completed for a
// terminal status, requeued for a job going back to its queue, none for
// anything else.
func finishEvent(r *Record) (typ string, data []byte) {
	switch {
	case r.Status.Terminal():
		return EventCompleted, statusEvent(r.Status, r.Error)
	case r.Status == StatusQueued:
		return EventRequeued, statusEvent(r.Status, r.Error)
	}
	return "", nil
}
