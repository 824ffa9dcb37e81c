package scheduler

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/genfleet/genfleet/job"
)

// jobView is a job's record as the API shows it (GET /v1/jobs/{id}, the
// completed event, webhooks): the record, plus, for a job that succeeded
// and whose images the retention has not deleted yet, each image's URL (on
// each of Outputs; the record's image_url is the first image's), and the
// attempts to deliver its webhook. base is the API's base URL as the
// caller's client reached it ("" when there is no request: the configured
// public URL or a path is used).
func (s *Server) jobView(ctx context.Context, rec *job.Record, base string) *job.Record {
	v := s.withImageURLs(ctx, rec, base)
	if rec.Request != nil && rec.Request.Webhook != nil {
		attempts, err := s.store.WebhookAttempts(ctx, rec.ID)
		if err != nil {
			s.log.Warn("webhook attempts", "job", rec.ID, "err", err)
		}
		v.WebhookAttempts = attempts
	}
	return v
}

// withImageURLs returns rec, or, for a job that succeeded and whose images
// the retention has not deleted yet, a copy of it with each image's URL
// (see imageURLs). GET /v1/jobs gives its entries these.
func (s *Server) withImageURLs(ctx context.Context, rec *job.Record, base string) *job.Record {
	v := *rec
	if s.cfg.Images != nil && rec.Status == job.StatusSucceeded && rec.Result != nil && !s.outputExpired(rec) {
		s.imageURLs(ctx, &v, base)
	}
	return &v
}

// imageURLs sets the image URLs of v, a copy of a succeeded job's record:
// each output's, and the record's (the first image's). A record without
// outputs (written before jobs had several images) has its result's only.
// v's Outputs are copied first: the record's are not changed.
func (s *Server) imageURLs(ctx context.Context, v *job.Record, base string) {
	if len(v.Outputs) == 0 {
		u, exp, err := s.cfg.Images.Image(ctx, v.ID, 0, v.Result.Bucket, v.Result.Key, base)
		if err != nil {
			s.log.Warn("image URL", "job", v.ID, "err", err)
		}
		v.ImageURL, v.ImageURLExpiresAt = u, exp
		return
	}
	v.Outputs = slices.Clone(v.Outputs)
	for k := range v.Outputs {
		o := &v.Outputs[k]
		u, exp, err := s.cfg.Images.Image(ctx, v.ID, k, o.Bucket, o.Key, base)
		if err != nil {
			s.log.Warn("image URL", "job", v.ID, "image", k, "err", err)
		}
		o.ImageURL, o.ImageURLExpiresAt = u, exp
	}
	v.ImageURL, v.ImageURLExpiresAt = v.Outputs[0].ImageURL, v.Outputs[0].ImageURLExpiresAt
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
