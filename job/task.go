package job

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
)

// Payload is the JSON body of a TaskType task.
type Payload struct {
	// Version is PayloadVersion of the producer; 0 is read as 1.
	Version int `json:"v"`
	// Request is the generation request.
	Request Request `json:"request"`
	// SubmittedAt is when the producer enqueued the job (optional); the
	// worker reports queue wait from it.
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	// Route is where the scheduler sent the job and why (optional; set by
	// the scheduler and by its reaper when it moves a job).
	Route *Route `json:"route,omitempty"`
}

// Queue names. Jobs routed to a host that holds the model warm go to
// HostQueue(id); anything else to PoolQueue(deviceClass). Workers listen to
// their host queue first and their pool queue second.
func HostQueue(hostID string) string { return "host:" + hostID }

// PoolQueue is the queue every worker of a device class listens to.
func PoolQueue(class string) string { return "pool:" + class }

// DefaultPool is the device class used when a producer names none.
const DefaultPool = "cpu"

// Task defaults. asynq forgets a task once it completes (no retention):
// the worker's job record, kept 7 days, is what the API reports.
const (
	DefaultMaxRetry = 5
	DefaultTimeout  = 30 * time.Minute
)

// EncodePayload validates req as it is and returns the payload bytes. It
// applies no defaults: a request decoded from JSON already has them (and
// keeps an explicit "guidance": 0); one built in Go should go through
// ApplyDefaults first, or through NewTask, which does that.
func EncodePayload(req Request, submitted time.Time) ([]byte, error) {
	return encodePayload(Payload{Request: req, SubmittedAt: submitted})
}

func encodePayload(p Payload) ([]byte, error) {
	if err := p.Request.Validate(); err != nil {
		return nil, err
	}
	p.Version = PayloadVersion
	p.SubmittedAt = p.SubmittedAt.UTC()
	return encodePayloadJSON(&p)
}

// DecodePayload parses and validates a payload. Errors wrap ErrInvalid:
// a payload that fails here never succeeds on retry.
func DecodePayload(b []byte) (*Payload, error) {
	p, ok := decodeCanonicalPayload(b)
	if !ok {
		if err := checkRawJSON("payload", b); err != nil {
			return nil, err
		}
		var err error
		if p, err = decodePayloadJSON(b); err != nil {
			return nil, err
		}
	}
	if p.Version == 0 {
		p.Version = 1
	}
	if p.Version > PayloadVersion {
		return nil, fmt.Errorf("%w: payload version %d is newer than this worker understands (max %d)", ErrInvalid, p.Version, PayloadVersion)
	}
	if err := p.Request.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// decodePayloadJSON is DecodePayload's strict decode for any payload: one
// pass, the request decoded as its plain type with the defaults
// Request.UnmarshalJSON would give it set first, rather than scanned again
// by a second decoder inside UnmarshalJSON.
func decodePayloadJSON(b []byte) (Payload, error) {
	var w struct {
		Version     int          `json:"v"`
		Request     plainRequest `json:"request"`
		SubmittedAt time.Time    `json:"submitted_at,omitzero"`
		Route       *Route       `json:"route,omitempty"`
	}
	w.Request = plainRequest(requestDefaults)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return Payload{}, fmt.Errorf("%w: payload is not valid JSON for %s: %w", ErrInvalid, TaskType, err)
	}
	p := Payload{Version: w.Version, Request: Request(w.Request), SubmittedAt: w.SubmittedAt, Route: w.Route}
	p.Request.normalize()
	return p, nil
}

// NewTask returns the asynq task for req with job id id (the asynq task id;
// ValidID says which ids are allowed). A second enqueue with the same id
// fails with asynq.ErrTaskIDConflict only while asynq still holds the first
// task in that queue (docs/jobs.md says what happens after). The returned
// options put it on the pool queue of class with genfleet's retry and
// timeout defaults; options passed in opts come later and win.
//
// A Go producer enqueues directly with:
//
//	task, opts, err := job.NewTask(id, req, job.DefaultPool)
//	info, err := client.Enqueue(task, opts...)
//
// NewTask is for requests built in Go: zero-valued optional fields take
// their defaults (ApplyDefaults), so a Go producer cannot ask for guidance 0
// this way; NewRoutedTask takes the request as it is.
func NewTask(id string, req Request, class string, opts ...asynq.Option) (*asynq.Task, []asynq.Option, error) {
	req.ApplyDefaults()
	return NewRoutedTask(id, req, class, nil, opts...)
}

// NewRoutedTask is NewTask for a request that already has its defaults
// (decoded from JSON, say) and, optionally, a route: the route is carried in
// the payload (the worker records it) and its queue is used.
func NewRoutedTask(id string, req Request, class string, route *Route, opts ...asynq.Option) (*asynq.Task, []asynq.Option, error) {
	if err := ValidID(id); err != nil {
		return nil, nil, err
	}
	b, err := encodePayload(Payload{Request: req, SubmittedAt: time.Now(), Route: route})
	if err != nil {
		return nil, nil, err
	}
	if route != nil && route.Queue != "" {
		opts = append([]asynq.Option{asynq.Queue(route.Queue)}, opts...)
	}
	if class == "" {
		class = DefaultPool
	}
	all := append([]asynq.Option{
		asynq.TaskID(id),
		asynq.Queue(PoolQueue(class)),
		asynq.MaxRetry(DefaultMaxRetry),
		asynq.Timeout(DefaultTimeout),
	}, opts...)
	return asynq.NewTask(TaskType, b), all, nil
}
