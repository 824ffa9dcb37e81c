package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/outputs"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/webhook"
)

const testWebhookSecret = "test-webhook-secret-0123456789abcdef"

// A job submitted with a webhook, run by a worker process: a real HTTP
// receiver gets the started and completed events, each signed so that its
// check passes, the completed one with the job's outputs (two images),
// each with its image URL, which fetches the PNG; the job's status lists
// the attempts. At submit, a webhook to an internal address is refused
// unless allowed, and a scheduler without a
// secret refuses webhooks.
func TestWebhookEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl, sink := newWebhookFleet(t, 1<<20)
	recv := sink.srv
	fl.startWorker()

	id := fl.submit(`{"model":"demo","prompt":"hooked","seed":3,"width":128,"height":128,"steps":4,"n":2,
		"webhook":{"url":"` + recv.URL + `/genfleet?token=t1","events":["completed","started"]}}`)
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded {
		t.Fatalf("job %s: %s", rec.Status, rec.Error)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		rec = fl.get(id)
		if len(rec.WebhookAttempts) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("attempts %+v", rec.WebhookAttempts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := sink.payloads(t)
	events := map[string]webhook.Payload{}
	for _, p := range got {
		events[p.Event] = p
	}
	if len(got) != 2 || events["started"].Job == nil || events["completed"].Job == nil {
		t.Fatalf("receiver got %+v; want started and completed", got)
	}
	c := events["completed"]
	if c.Job.ID != id || c.Job.Status != job.StatusSucceeded || c.Job.ImageURL == "" || c.Job.Result == nil ||
		len(c.Job.Outputs) != 2 || c.Job.Outputs[1].ImageURL == "" || c.Job.Outputs[1].ImageURL == c.Job.ImageURL {
		t.Fatalf("completed payload job %+v; want both outputs, each with its image_url", c.Job)
	}
	resp, err := http.Get(c.Job.ImageURL)
	if err != nil {
		t.Fatal(err)
	}
	png, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Fatalf("the webhook's image_url: %d, %d bytes", resp.StatusCode, len(png))
	}
	for _, a := range rec.WebhookAttempts {
		if !a.OK || a.StatusCode != http.StatusOK || a.URL != recv.URL+"/genfleet?token=t1" {
			t.Fatalf("attempt %+v", a)
		}
	}

	// Refused at submit: an internal address the policy does not allow.
	strict := newFleetWith(t, 1<<20, func(c *scheduler.Config) { c.Webhooks = true })
	code, b := strict.do("POST", "/v1/jobs", `{"model":"demo","prompt":"x","webhook":{"url":"http://169.254.169.254/latest/meta-data/"}}`)
	if code != http.StatusBadRequest || !strings.Contains(string(b), `"webhook.url"`) || !strings.Contains(string(b), "internal address") {
		t.Fatalf("metadata address: %d %s", code, b)
	}
	code, b = strict.do("POST", "/v1/jobs", `{"model":"demo","prompt":"x","webhook":{"url":"`+recv.URL+`"}}`)
	if code != http.StatusBadRequest || !strings.Contains(string(b), `"webhook.url"`) {
		t.Fatalf("loopback receiver without the allow-list: %d %s", code, b)
	}
	// Refused at submit: no secret, no webhooks.
	code, b = newFleet(t, 1<<20, "cpu").do("POST", "/v1/jobs", `{"model":"demo","prompt":"x","webhook":{"url":"https://hooks.example.com/x"}}`)
	if code != http.StatusBadRequest || !strings.Contains(string(b), "--webhook-secret") {
		t.Fatalf("webhook without a secret: %d %s", code, b)
	}
	code, b = strict.do("POST", "/v1/jobs", `{"model":"demo","prompt":"x","webhook":{"url":"gopher://hooks.example.com/x"}}`)
	if code != http.StatusBadRequest || !strings.Contains(string(b), `"webhook.url"`) {
		t.Fatalf("gopher webhook: %d %s", code, b)
	}
	fl.stopWorkers()
}

// webhookSink is a real HTTP receiver of webhook POSTs, each checked
// against testWebhookSecret.
type webhookSink struct {
	srv      *httptest.Server
	mu       sync.Mutex
	got      []webhook.Payload
	verdicts []error
}

// payloads returns what the receiver got so far, failing t on a POST
// whose signature check failed.
func (s *webhookSink) payloads(t *testing.T) []webhook.Payload {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.got {
		if s.verdicts[i] != nil {
			t.Fatalf("POST %d (%s): signature check failed: %v", i, p.Event, s.verdicts[i])
		}
	}
	return append([]webhook.Payload(nil), s.got...)
}

// newWebhookFleet returns a fleet whose scheduler takes webhooks to
// loopback receivers (its model of modelSize bytes), with a webhook
// deliverer running against its Redis, and a receiver.
func newWebhookFleet(t *testing.T, modelSize int64) (*fleet, *webhookSink) {
	sink := &webhookSink{}
	sink.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var p webhook.Payload
		_ = json.Unmarshal(b, &p)
		sink.mu.Lock()
		sink.got = append(sink.got, p)
		sink.verdicts = append(sink.verdicts, webhook.Verify(testWebhookSecret, r.Header.Get(webhook.SignatureHeader), b, webhook.DefaultTolerance, time.Now()))
		sink.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(sink.srv.Close)
	loopback := webhook.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	fl := newFleetWith(t, modelSize, func(c *scheduler.Config) {
		c.Webhooks, c.WebhookPolicy = true, loopback
		c.Images, _ = outputs.NewURLs(outputs.Config{Mode: outputs.ModePresigned, S3: c.S3})
	})
	rdb := redis.NewClient(&redis.Options{Addr: fl.redis.Addr})
	t.Cleanup(func() { rdb.Close() })
	d, err := webhook.New(webhook.Config{Redis: rdb, Secrets: []string{testWebhookSecret}, Job: fl.sched.JobForWebhook,
		Policy: loopback, Poll: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(d.Shutdown)
	return fl, sink
}
