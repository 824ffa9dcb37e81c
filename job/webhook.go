package job

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Webhook asks for a job's events to be POSTed to URL as they happen
// (docs/jobs.md, "Webhooks"): the scheduler's webhook deliverer signs each
// POST and retries it with backoff; every attempt is recorded on the job.
type Webhook struct {
	// URL is where the POSTs go: http or https.
	URL string `json:"url"`
	// Events are the event types to send: any of WebhookEvents. Empty
	// means only "completed".
	Events []string `json:"events,omitempty"`
}

// WebhookEvents are the event types a webhook may ask for, in the order
// they happen: started (a worker took the job), progress (each throttled
// step) and completed (the job ended: succeeded, failed or cancelled).
var WebhookEvents = []string{EventStarted, EventProgress, EventCompleted}

// MaxWebhookURLBytes bounds a webhook's URL.
const MaxWebhookURLBytes = 2048

// Wants reports whether w asks for events of type typ. A nil Webhook
// wants none.
func (w *Webhook) Wants(typ string) bool {
	if w == nil {
		return false
	}
	if len(w.Events) == 0 {
		return typ == EventCompleted
	}
	return slices.Contains(w.Events, typ)
}

// validate checks w's URL (an absolute http or https URL with a host and
// no user:password) and events. Whether the URL's host may be reached at
// all (not a private address) is the scheduler's and the deliverer's to
// decide: it depends on their configuration and on DNS at the time.
func (w *Webhook) validate() error {
	switch {
	case w.URL == "":
		return fieldErr("webhook.url", "is required")
	case len(w.URL) > MaxWebhookURLBytes:
		return fieldErr("webhook.url", "is %d bytes, at most %d allowed", len(w.URL), MaxWebhookURLBytes)
	}
	u, err := url.Parse(w.URL)
	switch {
	case err != nil:
		return fieldErr("webhook.url", "is not a URL: %v", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fieldErr("webhook.url", "%q: the scheme must be http or https", shortString(w.URL))
	case u.Host == "" || u.Hostname() == "":
		return fieldErr("webhook.url", "%q names no host", shortString(w.URL))
	case u.User != nil:
		return fieldErr("webhook.url", "must not carry a user name or password (they would be stored with the job); put a token in the path or query, and check the signature")
	}
	if len(w.Events) > len(WebhookEvents) {
		return fieldErr("webhook.events", "has %d entries; the events are %s", len(w.Events), strings.Join(WebhookEvents, ", "))
	}
	for i, e := range w.Events {
		if !slices.Contains(WebhookEvents, e) {
			return fieldErr("webhook.events", "%q is not an event a webhook can ask for (%s)", shortString(e), strings.Join(WebhookEvents, ", "))
		}
		if slices.Contains(w.Events[:i], e) {
			return fieldErr("webhook.events", "lists %q twice", e)
		}
	}
	return nil
}

// normalize puts w's events in one form: in the order they happen, and
// none for the default (just completed).
func (w *Webhook) normalize() {
	if w == nil {
		return
	}
	slices.SortStableFunc(w.Events, func(a, b string) int {
		return slices.Index(WebhookEvents, a) - slices.Index(WebhookEvents, b)
	})
	if len(w.Events) == 1 && w.Events[0] == EventCompleted || len(w.Events) == 0 {
		w.Events = nil
	}
}

func shortString(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// WebhookAttempt is one POST of a webhook delivery, as the job's record
// shows it (Record.WebhookAttempts).
type WebhookAttempt struct {
	// Event is the event type, EventID its stream id (empty for a started
	// event, which the worker publishes in the dequeue script).
	Event   string `json:"event"`
	EventID string `json:"event_id,omitempty"`
	// Attempt counts this delivery's POSTs, from 1.
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	URL     string    `json:"url"`
	// StatusCode is the receiver's answer (0: none, see Error).
	StatusCode int     `json:"status_code,omitempty"`
	Error      string  `json:"error,omitempty"`
	DurationMS float64 `json:"duration_ms"`
	OK         bool    `json:"ok"`
	// NextAt is when the next attempt is due; zero when there is none
	// (delivered, or given up: GaveUp).
	NextAt time.Time `json:"next_at,omitzero"`
	GaveUp bool      `json:"gave_up,omitempty"`
}

// Redis keys of webhook delivery: due deliveries in one sorted set (score
// the unix ms they are due at), each job's attempts in a list.
const (
	WebhookDueKey          = "genfleet:webhooks:due"
	webhookAttemptsPrefix  = "genfleet:webhook:attempts:"
	MaxWebhookAttemptsKept = 100
)

// WebhookAttemptsKey is the Redis key of job id's delivery attempts.
func WebhookAttemptsKey(id string) string { return webhookAttemptsPrefix + id }

// Delivery is one event on its way to a webhook: a member of WebhookDueKey,
// "<first due ms>:<attempts made>:<event>:<event id>:<job id>".
type Delivery struct {
	First    int64 // unix ms it was first due
	Attempts int
	Event    string
	EventID  string // empty for started
	Job      string
}

// String is the delivery as a member of WebhookDueKey.
func (d Delivery) String() string {
	return strconv.FormatInt(d.First, 10) + ":" + strconv.Itoa(d.Attempts) + ":" + d.Event + ":" + d.EventID + ":" + d.Job
}

// ParseDelivery parses a member of WebhookDueKey.
func ParseDelivery(s string) (Delivery, error) {
	f := strings.SplitN(s, ":", 5)
	if len(f) != 5 {
		return Delivery{}, fmt.Errorf("webhook delivery %q: want 5 fields", s)
	}
	first, err1 := strconv.ParseInt(f[0], 10, 64)
	n, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || f[2] == "" || ValidID(f[4]) != nil || (f[3] != "" && !ValidEventID(f[3])) {
		return Delivery{}, fmt.Errorf("webhook delivery %q is malformed", s)
	}
	return Delivery{First: first, Attempts: n, Event: f[2], EventID: f[3], Job: f[4]}, nil
}

// notifyFunc defines the Lua function notify(id, typ, eid, now): a
// delivery of job id's event typ (stream id eid, or "") due now.
const notifyFunc = `local function notify(id, typ, eid, now)
redis.call("ZADD", "` + WebhookDueKey + `", now, now .. ":0:" .. typ .. ":" .. eid .. ":" .. id)
end
`

// Notify queues a delivery of job id's event typ (with no stored event:
// the deliverer sends the job as it is then). The worker calls it for
// started, which it publishes where the job's request is not known.
func (s *Store) Notify(ctx context.Context, id, typ string) error {
	d := Delivery{First: time.Now().UnixMilli(), Event: typ, Job: id}
	if err := s.rdb.ZAdd(ctx, WebhookDueKey, redis.Z{Score: float64(d.First), Member: d.String()}).Err(); err != nil {
		return fmt.Errorf("queue webhook delivery of job %s: %w", id, err)
	}
	return nil
}

// WebhookAttempts returns job id's delivery attempts, oldest first (the
// last MaxWebhookAttemptsKept).
func (s *Store) WebhookAttempts(ctx context.Context, id string) ([]WebhookAttempt, error) {
	raw, err := s.rdb.LRange(ctx, WebhookAttemptsKey(id), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read webhook attempts of job %s: %w", id, err)
	}
	out := make([]WebhookAttempt, 0, len(raw))
	for _, r := range raw {
		var a WebhookAttempt
		if json.Unmarshal([]byte(r), &a) == nil {
			out = append(out, a)
		}
	}
	return out, nil
}
