// Package webhook delivers a job's events to the URL its request names
// (job.Webhook): each a signed POST (Sign, SignatureHeader), retried with
// backoff for a bounded time, at least once, every attempt recorded on the
// job; never to an internal address unless allowed (Policy), checked on the
// address each connection goes to.
//
// The scheduler role runs the Deliverer, so that a slow or failing
// receiver never holds a worker: workers only queue deliveries, in the
// scripts that publish the events (job.WebhookDueKey).
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/job"
)

// ErrJobGone is what Config.Job returns for a job that no longer exists:
// its deliveries are dropped.
var ErrJobGone = errors.New("job not found")

// Config configures a Deliverer. Fields without a stated default are
// required.
type Config struct {
	Redis redis.UniversalClient
	// Secrets sign every POST, each giving one v1 signature (Sign): the
	// new secret first during a rotation, the old one after it.
	Secrets []string
	// Job returns the job as the API shows it (with its image URL), or
	// an error wrapping ErrJobGone.
	Job func(ctx context.Context, id string) (*job.Record, error)
	// Policy says which addresses POSTs may go to.
	Policy Policy
	// Timeout bounds one POST, from connecting to the end of the
	// response's head. Default 10s.
	Timeout time.Duration
	// MaxAge is how long a delivery is retried after it was first due;
	// then it is given up (recorded as such). Default 24h.
	MaxAge time.Duration
	// RetryBase and RetryMax shape the backoff before attempt n+1:
	// min(RetryBase·2^(n-1), RetryMax), ±25% jitter. Defaults 5s and 30m.
	RetryBase, RetryMax time.Duration
	// Poll is how often the due deliveries are looked for when there were
	// none. Default 200ms.
	Poll time.Duration
	// Concurrency bounds the POSTs in flight. Default 16.
	Concurrency int
	// Metrics, when set, receives the deliverer's collectors.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Deliverer POSTs due deliveries. Several may run (one per scheduler): a
// delivery is leased to one at a time, and a lease that outlives its
// deliverer (a crash) runs out and the delivery is due again, so each is
// made at least once.
//
// Shutdown order: stop claiming deliveries, then wait for the POSTs in
// flight (each bounded by Timeout) and their records.
type Deliverer struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	lease  time.Duration

	attempts   *prometheus.CounterVec
	deliveries *prometheus.CounterVec
	seconds    prometheus.Histogram

	ctx      context.Context
	cancel   context.CancelFunc
	slots    chan struct{}
	inflight sync.WaitGroup
	done     chan struct{}
	stopOnce sync.Once
}

// New checks cfg and returns a Deliverer, not yet started.
func New(cfg Config) (*Deliverer, error) {
	switch {
	case cfg.Redis == nil || cfg.Job == nil:
		return nil, errors.New("webhook: Redis and Job are required")
	case len(cfg.Secrets) == 0:
		return nil, errors.New("webhook: a secret is required: unsigned webhooks cannot be told from forged ones")
	}
	for _, s := range cfg.Secrets {
		if len(s) < 16 {
			return nil, errors.New("webhook: a secret must be at least 16 bytes (e.g. openssl rand -hex 32)")
		}
	}
	defaults.Positive(&cfg.Timeout, 10*time.Second)
	defaults.Positive(&cfg.MaxAge, 24*time.Hour)
	defaults.Positive(&cfg.RetryBase, 5*time.Second)
	defaults.Positive(&cfg.RetryMax, 30*time.Minute)
	defaults.Positive(&cfg.Poll, 200*time.Millisecond)
	defaults.Positive(&cfg.Concurrency, 16)
	defaults.Zero(&cfg.Logger, slog.Default())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second, Control: cfg.Policy.Control}
	d := &Deliverer{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "webhook"),
		lease: cfg.Timeout + 30*time.Second,
		client: &http.Client{
			// No proxy: a proxy would connect on our behalf, past Control.
			Transport: &http.Transport{Proxy: nil, DialContext: dialer.DialContext, ForceAttemptHTTP2: true,
				TLSHandshakeTimeout: cfg.Timeout, ResponseHeaderTimeout: cfg.Timeout,
				MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second},
			Timeout: cfg.Timeout,
			// A redirect is not followed: its target was never checked
			// against the request, and receivers answer webhooks directly.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_webhook_attempts_total",
			Help: "Webhook POSTs by result: ok (2xx), http_error (another status), error (no answer: connection, timeout), refused (an internal address).",
		}, []string{"result"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genfleet_webhook_deliveries_total",
			Help: "Webhook deliveries ended: delivered, gave_up (failed for --webhook-max-age, or refused), dropped (the job is gone).",
		}, []string{"outcome"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "genfleet_webhook_attempt_seconds",
			Help:    "Time of one webhook POST, until the receiver's answer or the error.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		slots: make(chan struct{}, cfg.Concurrency),
		done:  make(chan struct{}),
	}
	if cfg.Metrics != nil {
		due := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "genfleet_webhook_due",
			Help: "Webhook deliveries waiting: due now, leased to a deliverer, or waiting for their next attempt.",
		}, func() float64 {
			n, _ := cfg.Redis.ZCard(context.Background(), job.WebhookDueKey).Result()
			return float64(n)
		})
		for _, c := range []prometheus.Collector{d.attempts, d.deliveries, d.seconds, due} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, err
			}
		}
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Start runs the delivery loop until Shutdown.
func (d *Deliverer) Start() {
	go func() {
		defer close(d.done)
		for d.ctx.Err() == nil {
			n, err := d.round(d.ctx)
			if err != nil && d.ctx.Err() == nil {
				d.log.Warn("webhook deliveries", "err", err)
			}
			if n > 0 && err == nil {
				continue // there may be more due
			}
			select {
			case <-d.ctx.Done():
			case <-time.After(d.cfg.Poll):
			}
		}
	}()
}

// Shutdown stops claiming deliveries and waits for those in flight.
func (d *Deliverer) Shutdown() {
	d.stopOnce.Do(func() {
		d.cancel()
		<-d.done
		d.inflight.Wait()
	})
}

// claimScript leases up to ARGV[3] deliveries due by ARGV[1] until
// ARGV[2] and returns them.
var claimScript = redis.NewScript(`
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, ARGV[3])
for _, m in ipairs(due) do redis.call("ZADD", KEYS[1], "XX", ARGV[2], m) end
return due`)

// round leases as many due deliveries as there are free slots and starts
// them; it returns how many.
func (d *Deliverer) round(ctx context.Context) (int, error) {
	free := cap(d.slots) - len(d.slots)
	if free == 0 {
		return 0, nil
	}
	now := d.cfg.Now()
	due, err := claimScript.Run(ctx, d.cfg.Redis, []string{job.WebhookDueKey},
		now.UnixMilli(), now.Add(d.lease).UnixMilli(), free).StringSlice()
	if err != nil {
		return 0, fmt.Errorf("claim due deliveries: %w", err)
	}
	for _, m := range due {
		d.slots <- struct{}{}
		d.inflight.Add(1)
		go func() {
			defer func() { <-d.slots; d.inflight.Done() }()
			// A POST under way finishes after Shutdown began: the
			// receiver may have acted on it, and its record is owed.
			d.deliver(context.WithoutCancel(ctx), m)
		}()
	}
	return len(due), nil
}

// settleScript ends attempt ARGV[2] of the delivery ARGV[1]: records it on
// the job (KEYS[2], the last ARGV[5], kept ARGV[6] ms) and, when ARGV[3] is
// not empty, queues the next attempt as that member, due at ARGV[4]. If
// another deliverer took the delivery over meanwhile (our lease ran out),
// only the record is written: the delivery is its now.
var settleScript = redis.NewScript(`
local mine = redis.call("ZREM", KEYS[1], ARGV[1])
if mine == 1 and ARGV[3] ~= "" then redis.call("ZADD", KEYS[1], ARGV[4], ARGV[3]) end
redis.call("RPUSH", KEYS[2], ARGV[2])
redis.call("LTRIM", KEYS[2], -tonumber(ARGV[5]), -1)
redis.call("PEXPIRE", KEYS[2], ARGV[6])
return mine`)

// deliver makes one attempt of the delivery member and records it.
func (d *Deliverer) deliver(ctx context.Context, member string) {
	dl, err := job.ParseDelivery(member)
	if err != nil {
		d.log.Warn("dropping a malformed webhook delivery", "err", err)
		_ = d.cfg.Redis.ZRem(ctx, job.WebhookDueKey, member).Err()
		return
	}
	log := d.log.With("job", dl.Job, "event", dl.Event, "attempt", dl.Attempts+1)
	rec, err := d.cfg.Job(ctx, dl.Job)
	switch {
	case errors.Is(err, ErrJobGone) || (err == nil && (rec.Request == nil || rec.Request.Webhook == nil)):
		log.Warn("dropping a webhook delivery: the job, or its webhook, is gone")
		d.deliveries.WithLabelValues("dropped").Inc()
		_ = d.cfg.Redis.ZRem(ctx, job.WebhookDueKey, member).Err()
		return
	case err != nil:
		// Redis or S3 trouble reading the job: no POST, try again soon.
		log.Warn("webhook delivery: cannot read the job", "err", err)
		_ = d.cfg.Redis.ZAdd(ctx, job.WebhookDueKey, redis.Z{Score: float64(d.cfg.Now().Add(d.cfg.RetryBase).UnixMilli()), Member: member}).Err()
		return
	}
	url := rec.Request.Webhook.URL
	body, err := d.body(ctx, dl, rec)
	a := job.WebhookAttempt{Event: dl.Event, EventID: dl.EventID, Attempt: dl.Attempts + 1, At: d.cfg.Now().UTC(), URL: url}
	refused := false
	if err == nil {
		a.StatusCode, err = d.post(ctx, url, dl, body)
		refused = errors.Is(err, ErrRefused)
	}
	a.DurationMS = float64(d.cfg.Now().Sub(a.At).Microseconds()) / 1000
	d.seconds.Observe(a.DurationMS / 1000)
	var next job.Delivery
	switch {
	case err == nil:
		a.OK = true
		d.attempts.WithLabelValues("ok").Inc()
		d.deliveries.WithLabelValues("delivered").Inc()
		log.Debug("webhook delivered", "status", a.StatusCode)
	default:
		a.Error = err.Error()
		result := "error"
		switch {
		case refused:
			result = "refused"
		case a.StatusCode != 0:
			result = "http_error"
		}
		d.attempts.WithLabelValues(result).Inc()
		at := d.cfg.Now().Add(backoff(dl.Attempts+1, d.cfg.RetryBase, d.cfg.RetryMax))
		if refused || at.Sub(time.UnixMilli(dl.First)) > d.cfg.MaxAge {
			a.GaveUp = true
			d.deliveries.WithLabelValues("gave_up").Inc()
			log.Warn("webhook delivery given up", "url", url, "attempts", a.Attempt, "err", err)
		} else {
			next = dl
			next.Attempts++
			a.NextAt = at.UTC()
			log.Info("webhook attempt failed; will retry", "url", url, "status", a.StatusCode, "err", err, "next", a.NextAt)
		}
	}
	rb, _ := json.Marshal(a)
	nextMember, nextAt := "", int64(0)
	if next.Job != "" {
		nextMember, nextAt = next.String(), a.NextAt.UnixMilli()
	}
	if err := settleScript.Run(ctx, d.cfg.Redis, []string{job.WebhookDueKey, job.WebhookAttemptsKey(dl.Job)},
		member, rb, nextMember, nextAt, job.MaxWebhookAttemptsKept, job.RecordTTL.Milliseconds()).Err(); err != nil {
		// The lease runs out and the delivery is made again: at least once.
		log.Warn("record webhook attempt", "err", err)
	}
}

// Payload is the JSON body of a webhook POST.
type Payload struct {
	// ID names the delivery: the same in every attempt of it, so a
	// receiver can drop a repeat.
	ID    string `json:"id"`
	Event string `json:"event"`
	// EventID is the event's id in the job's stream (as GET
	// /v1/jobs/{id}/events gives it); empty for started.
	EventID   string    `json:"event_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Data is the event's own data (as the event stream gives it).
	Data json.RawMessage `json:"data,omitempty"`
	// Job is the job as GET /v1/jobs/{id} shows it when the POST is made.
	Job *job.Record `json:"job"`
}

// body is the POST body of delivery dl of job rec.
func (d *Deliverer) body(ctx context.Context, dl job.Delivery, rec *job.Record) ([]byte, error) {
	p := Payload{ID: dl.Job + ":" + dl.Event + ":" + dl.EventID, Event: dl.Event, EventID: dl.EventID,
		CreatedAt: time.UnixMilli(dl.First).UTC(), Job: rec}
	if dl.EventID != "" {
		p.ID = dl.Job + ":" + dl.EventID
		ms, _ := strconv.ParseInt(dl.EventID[:strings.IndexByte(dl.EventID, '-')], 10, 64)
		p.CreatedAt = time.UnixMilli(ms).UTC()
		if evs, err := d.cfg.Redis.XRange(ctx, job.EventsKey(dl.Job), dl.EventID, dl.EventID).Result(); err == nil && len(evs) == 1 {
			if s, _ := evs[0].Values["data"].(string); json.Valid([]byte(s)) {
				p.Data = json.RawMessage(s)
			}
		}
	} else {
		p.ID = dl.Job + ":" + dl.Event + ":" + strconv.FormatInt(dl.First, 10)
	}
	return json.Marshal(p)
}

// post sends body to url, signed, and returns the receiver's status: nil
// error for a 2xx.
func (d *Deliverer) post(ctx context.Context, url string, dl job.Delivery, body []byte) (int, error) {
	if err := d.cfg.Policy.CheckURL(url); err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "genfleet-webhook/1")
	req.Header.Set("Genfleet-Event", dl.Event)
	req.Header.Set("Genfleet-Job", dl.Job)
	req.Header.Set(SignatureHeader, Sign(d.cfg.Secrets, d.cfg.Now(), body))
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(snippet))
		if resp.StatusCode/100 == 3 {
			msg = "a redirect, not followed (to " + resp.Header.Get("Location") + ")"
		}
		return resp.StatusCode, fmt.Errorf("receiver answered %s: %.200s", resp.Status, msg)
	}
	return resp.StatusCode, nil
}

// backoff is min(base·2^(n-1), max) with ±25% jitter.
func backoff(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d*3/4 + time.Duration(rand.Int64N(int64(d/2)+1))
}
