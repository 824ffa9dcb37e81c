package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/internal/redisx"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/outputs"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/webhook"
)

// LifecycleFlags configure what the scheduler does for a job besides
// queueing it: its event streams (and, with the features that follow,
// webhooks and image URLs).
type LifecycleFlags struct {
	maxEventStreams *int
	eventKeepAlive  *time.Duration
	imageURL        *string
	imageURLExpiry  *time.Duration
	s3Public        *string
	publicURL       *string
	retention       *time.Duration
	sweepInterval   *time.Duration
	webhookSecret   *string
	webhookAllow    *string
	webhookMaxAge   *time.Duration
	webhookTimeout  *time.Duration
	webhookConc     *int
}

// AddLifecycleFlags adds the job lifecycle flags to f.
func AddLifecycleFlags(f Flags) *LifecycleFlags {
	return &LifecycleFlags{
		maxEventStreams: f.EnvInt("max-event-streams", "GENFLEET_MAX_EVENT_STREAMS", 256, "most GET /v1/jobs/{id}/events streams open at once (each holds a Redis connection while it waits); one more gets 503"),
		eventKeepAlive:  f.EnvDuration("event-keepalive", "GENFLEET_EVENT_KEEPALIVE", 15*time.Second, "how long an event stream stays silent before it sends a keep-alive comment"),
		imageURL:        f.EnvString("image-url", "GENFLEET_IMAGE_URL", outputs.ModePresigned, "image_url of each image of a succeeded job: presigned (an S3 GET signed for --image-url-expiry; clients fetch from S3), api (the API's own /v1/jobs/{id}/image and /images/{k}, for an S3 clients cannot reach) or none"),
		imageURLExpiry:  f.EnvDuration("image-url-expiry", "GENFLEET_IMAGE_URL_EXPIRY", outputs.DefaultExpiry, "how long a presigned image_url works (at most 168h)"),
		s3Public:        f.EnvString("s3-public-endpoint", "GENFLEET_S3_PUBLIC_ENDPOINT", "", "S3 endpoint URL as clients reach it, which presigned image URLs are signed for; empty: --s3-endpoint"),
		publicURL:       f.EnvString("public-url", "GENFLEET_PUBLIC_URL", "", "the API's base URL as clients reach it (https://host[:port]), for --image-url api in webhooks and behind proxies; empty: each request's own host"),
		retention:       f.EnvDuration("output-retention", "GENFLEET_OUTPUT_RETENTION", 0, "delete images older than this from the outputs bucket (a sweep every --output-sweep-interval; an S3 lifecycle rule does it better where the server has them); 0 keeps them"),
		sweepInterval:   f.EnvDuration("output-sweep-interval", "GENFLEET_OUTPUT_SWEEP_INTERVAL", time.Hour, "how often the retention sweep lists the outputs prefix"),
		webhookSecret:   f.EnvString("webhook-secret", "GENFLEET_WEBHOOK_SECRET", "", "secret that signs webhook POSTs (HMAC-SHA256), at least 16 bytes; during a rotation NEW,OLD (each signs); empty: jobs with a webhook are refused. Prefer the environment: flags show in ps"),
		webhookAllow:    f.EnvString("webhook-allow-net", "GENFLEET_WEBHOOK_ALLOW_NET", "", "internal addresses webhooks may reach all the same, CIDR[,…] (e.g. 10.0.0.0/8 for receivers on a private network, 127.0.0.0/8 for tests); by default loopback, private, link-local and reserved addresses are refused"),
		webhookMaxAge:   f.EnvDuration("webhook-max-age", "GENFLEET_WEBHOOK_MAX_AGE", 24*time.Hour, "how long a failing webhook delivery is retried (with backoff) before it is given up"),
		webhookTimeout:  f.EnvDuration("webhook-timeout", "GENFLEET_WEBHOOK_TIMEOUT", 10*time.Second, "how long one webhook POST may take"),
		webhookConc:     f.EnvInt("webhook-concurrency", "GENFLEET_WEBHOOK_CONCURRENCY", 16, "webhook POSTs in flight at once"),
	}
}

// webhookSecrets splits --webhook-secret.
func (l *LifecycleFlags) webhookSecrets() []string {
	var out []string
	for _, s := range strings.Split(*l.webhookSecret, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// webhookPolicy parses --webhook-allow-net.
func (l *LifecycleFlags) webhookPolicy() (webhook.Policy, error) {
	allow, err := webhook.ParseAllow(*l.webhookAllow)
	if err != nil {
		return webhook.Policy{}, fmt.Errorf("--webhook-allow-net: %w", err)
	}
	return webhook.Policy{Allow: allow}, nil
}

// Deliverer returns the webhook deliverer for srv, or nil without a secret.
func (l *LifecycleFlags) Deliverer(opt asynq.RedisConnOpt, srv *scheduler.Server, log *slog.Logger) (*webhook.Deliverer, func(), error) {
	secrets := l.webhookSecrets()
	if len(secrets) == 0 {
		return nil, func() {}, nil
	}
	policy, err := l.webhookPolicy()
	if err != nil {
		return nil, nil, err
	}
	rdb, err := redisx.Client(opt)
	if err != nil {
		return nil, nil, fmt.Errorf("webhooks: %w", err)
	}
	d, err := webhook.New(webhook.Config{Redis: rdb, Secrets: secrets, Job: srv.JobForWebhook, Policy: policy,
		Timeout: *l.webhookTimeout, MaxAge: *l.webhookMaxAge, Concurrency: *l.webhookConc, Metrics: srv.Metrics(), Logger: log})
	if err != nil {
		rdb.Close()
		return nil, nil, fmt.Errorf("--webhook-secret: %w", err)
	}
	return d, func() { rdb.Close() }, nil
}

// Apply sets the scheduler's lifecycle settings from the flags; cl is the
// scheduler's S3 client.
func (l *LifecycleFlags) Apply(ctx context.Context, c *Common, cl *s3.Client, cfg *scheduler.Config) error {
	cfg.MaxEventStreams, cfg.EventKeepAlive = *l.maxEventStreams, *l.eventKeepAlive
	cfg.OutputRetention = *l.retention
	signer := cl
	if *l.imageURL == outputs.ModePresigned && *l.s3Public != "" && *l.s3Public != *c.S3Endpoint {
		sc := c.S3Config()
		sc.Endpoint = *l.s3Public
		var err error
		if signer, err = s3x.Connect(ctx, sc); err != nil {
			return fmt.Errorf("--s3-public-endpoint: %w", err)
		}
	}
	urls, err := outputs.NewURLs(outputs.Config{Mode: *l.imageURL, S3: signer, Expiry: *l.imageURLExpiry, PublicURL: *l.publicURL})
	if err != nil {
		return fmt.Errorf("--image-url: %w", err)
	}
	cfg.Images = urls
	if cfg.WebhookPolicy, err = l.webhookPolicy(); err != nil {
		return err
	}
	cfg.Webhooks = len(l.webhookSecrets()) > 0
	return nil
}

// Sweeper returns the output retention sweep, or nil without a retention.
// It never deletes uploads, which by default live in the outputs bucket.
func (l *LifecycleFlags) Sweeper(c *Common, cl *s3.Client, reg prometheus.Registerer, log *slog.Logger) (*outputs.Sweeper, error) {
	if *l.retention <= 0 {
		return nil, nil
	}
	u, err := c.OutputsURL()
	if err != nil {
		return nil, err
	}
	up, _, err := c.UploadsURL()
	if err != nil {
		return nil, err
	}
	return outputs.NewSweeper(outputs.SweepConfig{S3: cl, Outputs: u, Uploads: up, Retention: *l.retention, Interval: *l.sweepInterval, Metrics: reg, Logger: log})
}

// ParsePriorityWeights parses --priority-weights "high=6,normal=3,low=1".
// Every priority must be named, each with a weight of at least 1 (the
// worker checks that too).
func ParsePriorityWeights(s string) (map[job.Priority]int, error) {
	out := map[job.Priority]int{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		p := job.Priority(strings.TrimSpace(k))
		if !ok || p == "" || !p.Valid() {
			return nil, fmt.Errorf("--priority-weights: %q is not PRIORITY=WEIGHT with PRIORITY high, normal or low", kv)
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--priority-weights: %q: the weight must be a whole number ≥ 1 (a 0 would starve that priority)", kv)
		}
		if _, dup := out[p]; dup {
			return nil, fmt.Errorf("--priority-weights: %s is given twice", p)
		}
		out[p] = n
	}
	for _, p := range job.Priorities {
		if _, ok := out[p]; !ok {
			return nil, fmt.Errorf("--priority-weights %q: no weight for %s; give all three, e.g. high=6,normal=3,low=1", s, p)
		}
	}
	return out, nil
}
