package outputs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
)

// SweepConfig configures a Sweeper.
type SweepConfig struct {
	// S3 and Outputs are the outputs bucket and key prefix the workers
	// write images under. Required.
	S3      *s3.Client
	Outputs s3x.URL
	// Uploads is where the API keeps uploaded input images (by default
	// uploads/ in the outputs bucket). The sweep never deletes anything
	// under it, even where it lies under Outputs: a queued job may still
	// need its init image.
	Uploads s3x.URL
	// Retention is how long an image is kept after it was written
	// (its LastModified). Required: a Sweeper with none is not made.
	Retention time.Duration
	// Interval is how often the sweep runs. Default 1h.
	Interval time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Metrics, when set, receives the sweeper's counters.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Sweeper deletes, every Interval, the job images under the outputs prefix
// that are older than Retention: the objects whose keys job.ImageKey makes
// (<prefix><id>.png, <prefix><id>/<k>.png), and no other object there,
// and nothing under the uploads prefix. It is for S3 servers without lifecycle
// rules; where the bucket has a lifecycle rule (docs/jobs.md), that is the
// primary mechanism and the sweep finds nothing to do. Several schedulers
// may sweep at once: a delete of a deleted object is no error.
//
// Start runs the loop in a goroutine of its own; Shutdown stops it and
// waits for a sweep in progress to end (it is cancelled).
type Sweeper struct {
	cfg     SweepConfig
	log     *slog.Logger
	deleted prometheus.Counter
	failed  prometheus.Counter
	// keep is the uploads prefix where it lies inside the outputs prefix
	// (--outputs at the bucket's root, uploads/ beside the images), else "".
	keep string

	stopOnce sync.Once
	cancel   context.CancelFunc
	ctx      context.Context
	done     chan struct{}
}

// NewSweeper checks cfg and returns a Sweeper, not yet started.
func NewSweeper(cfg SweepConfig) (*Sweeper, error) {
	if cfg.S3 == nil || cfg.Outputs.Bucket == "" {
		return nil, errors.New("outputs: the sweep needs the outputs bucket and an S3 client")
	}
	if cfg.Retention <= 0 {
		return nil, errors.New("outputs: the sweep needs a retention above 0")
	}
	defaults.Positive(&cfg.Interval, time.Hour)
	defaults.Zero(&cfg.Logger, slog.Default())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sweeper{cfg: cfg, log: cfg.Logger.With("component", "output-sweep"), done: make(chan struct{}),
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_outputs_deleted_total",
			Help: "Images the retention sweep deleted from the outputs bucket for being older than --output-retention.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "genfleet_outputs_sweep_errors_total",
			Help: "Retention sweeps (or deletes within one) that failed; the next sweep tries again.",
		}),
	}
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(s.deleted); err != nil {
			return nil, err
		}
		if err := cfg.Metrics.Register(s.failed); err != nil {
			return nil, err
		}
	}
	if u, o := cfg.Uploads, cfg.Outputs; u.Bucket == o.Bucket && len(u.Key) > len(o.Key) && strings.HasPrefix(u.Key, o.Key) {
		s.keep = u.Key
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Start sweeps at once and then every Interval, until Shutdown.
func (s *Sweeper) Start() {
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.cfg.Interval)
		defer t.Stop()
		for {
			if n, err := s.Sweep(s.ctx); err != nil && s.ctx.Err() == nil {
				s.failed.Inc()
				s.log.Warn("output retention sweep failed", "deleted", n, "err", err)
			} else if n > 0 {
				s.log.Info("output retention sweep", "deleted", n, "older_than", s.cfg.Retention)
			}
			select {
			case <-s.ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Shutdown stops the loop and waits for it.
func (s *Sweeper) Shutdown() {
	s.stopOnce.Do(func() {
		s.cancel()
		<-s.done
	})
}

// Sweep deletes every job image under the outputs prefix last modified
// before now − Retention (isImage), and returns how many it deleted.
func (s *Sweeper) Sweep(ctx context.Context) (int, error) {
	cutoff := s.cfg.Now().Add(-s.cfg.Retention)
	bucket, prefix := s.cfg.Outputs.Bucket, s.cfg.Outputs.Key
	pages := s3.NewListObjectsV2Paginator(s.cfg.S3, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	deleted := 0
	var errs []error
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return deleted, fmt.Errorf("list s3://%s/%s: %w", bucket, prefix, err)
		}
		var old []types.ObjectIdentifier
		for _, o := range page.Contents {
			if o.LastModified != nil && o.LastModified.Before(cutoff) && s.isImage(aws.ToString(o.Key)) {
				old = append(old, types.ObjectIdentifier{Key: o.Key})
			}
		}
		if len(old) == 0 {
			continue
		}
		// A page holds at most 1000 keys: what one DeleteObjects takes.
		out, err := s.cfg.S3.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: aws.String(bucket),
			Delete: &types.Delete{Objects: old, Quiet: aws.Bool(true)}})
		if err != nil {
			return deleted, fmt.Errorf("delete %d old images from s3://%s/%s: %w", len(old), bucket, prefix, err)
		}
		n := len(old) - len(out.Errors)
		deleted += n
		s.deleted.Add(float64(n))
		for _, e := range out.Errors {
			errs = append(errs, fmt.Errorf("delete s3://%s/%s: %s", bucket, aws.ToString(e.Key), aws.ToString(e.Message)))
		}
	}
	return deleted, errors.Join(errs...)
}

// isImage reports whether key, listed under the outputs prefix, is a job's
// image the sweep may delete: a key job.ImageKey makes, not under the
// uploads prefix.
func (s *Sweeper) isImage(key string) bool {
	if s.keep != "" && strings.HasPrefix(key, s.keep) {
		return false
	}
	_, _, ok := job.ParseImageKey(s.cfg.Outputs.Key, key)
	return ok
}
