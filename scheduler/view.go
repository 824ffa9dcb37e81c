package scheduler

import (
	"context"
	"net/http"
	"time"

	"github.com/genfleet/genfleet/job"
)

// jobView is a job's record as the API shows it (GET /v1/jobs/{id}, the
// completed event, webhooks): the record, plus the image's URL for a job
// that succeeded and whose image the retention has not deleted yet, and
// the attempts to deliver its webhook. base
// is the API's base URL as the caller's client reached it ("" when there is
// no request: the configured public URL or a path is used).
func (s *Server) jobView(ctx context.Context, rec *job.Record, base string) *job.Record {
	v := *rec
	if s.cfg.Images != nil && rec.Status == job.StatusSucceeded && rec.Result != nil && !s.outputExpired(rec) {
		u, exp, err := s.cfg.Images.Image(ctx, rec.ID, rec.Result.Bucket, rec.Result.Key, base)
		if err != nil {
			s.log.Warn("image URL", "job", rec.ID, "err", err)
		}
		v.ImageURL, v.ImageURLExpiresAt = u, exp
	}
	if rec.Request != nil && rec.Request.Webhook != nil {
		attempts, err := s.store.WebhookAttempts(ctx, rec.ID)
		if err != nil {
			s.log.Warn("webhook attempts", "job", rec.ID, "err", err)
		}
		v.WebhookAttempts = attempts
	}
	return &v
}

// outputExpired reports whether rec's image is older than the output
// retention, and so deleted (or about to be).
func (s *Server) outputExpired(rec *job.Record) bool {
	return s.cfg.OutputRetention > 0 && !rec.FinishedAt.IsZero() && time.Since(rec.FinishedAt) > s.cfg.OutputRetention
}

// apiBase is the API's base URL as r's client reached it:
// scheme://host, https when the connection is TLS or a proxy in front says
// so (X-Forwarded-Proto).
func apiBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
