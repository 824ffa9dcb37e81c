package scheduler

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/webhook"
)

// checkWebhook refuses at submit a webhook this scheduler would never
// deliver: any webhook when no secret is configured (unsigned webhooks
// cannot be told from forged ones), and a URL the delivery policy refuses
// whatever DNS says (an internal address, localhost).
func (s *Server) checkWebhook(sub *submission) {
	w := sub.req.Webhook
	if sub.fail != nil || w == nil {
		return
	}
	if !s.cfg.Webhooks {
		sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", field: "webhook",
			err: errors.New("webhook: this scheduler sends no webhooks: it has no webhook secret (--webhook-secret, GENFLEET_WEBHOOK_SECRET)")}
		return
	}
	if err := s.cfg.WebhookPolicy.CheckURL(w.URL); err != nil {
		sub.fail = &submitError{code: http.StatusBadRequest, outcome: "invalid", field: "webhook.url", err: fmt.Errorf("webhook.url: %w", err)}
	}
}

// JobForWebhook is the job as a webhook POST carries it: as GET
// /v1/jobs/{id} shows it (its image URL under the configured public URL),
// without its delivery attempts. A job that is gone gives an error
// wrapping webhook.ErrJobGone.
func (s *Server) JobForWebhook(ctx context.Context, id string) (*job.Record, error) {
	rec, err := s.lookup(ctx, id)
	if errors.Is(err, errJobNotFound) {
		return nil, fmt.Errorf("job %s: %w", id, webhook.ErrJobGone)
	}
	if err != nil {
		return nil, err
	}
	v := s.jobView(ctx, rec, "")
	v.WebhookAttempts = nil
	return v, nil
}
