package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/genfleet/genfleet/internal/sse"
	"github.com/genfleet/genfleet/job"
)

// ErrNoEvents means the scheduler serves no job events (one older than
// them): poll the job instead (Poll; Wait does so by itself).
var ErrNoEvents = errors.New("the scheduler serves no job events")

// Event is one event of a job's stream (docs/jobs.md, "Events").
type Event struct {
	// ID is the stream's last event id when the event came: its own for a
	// stored event, the one before it for a live queued event.
	ID string
	// Type is the event's type: job.EventQueued, job.EventStarted,
	// job.EventModel, job.EventProgress, job.EventRequeued,
	// job.EventCompleted.
	Type string
	// Data is the event's data, a JSON object as the API sends it.
	Data []byte
}

// followTries is how many failed connections in all Follow makes before it
// gives up; it waits 1 s after the first, 2 s after the second, and so on.
const followTries = 5

// Follow follows job id's events (GET /v1/jobs/{id}/events) until the job
// ends, calling fn (when not nil) with each event as it comes, and returns
// the job as the completed event carries it. A stream that breaks is
// reopened with Last-Event-ID, so fn sees no stored event twice and misses
// none; Follow gives up after 5 failed connections. A client that comes
// back after the end (the API answers 204) gets the job as GET
// /v1/jobs/{id} reads it. On a scheduler without events it returns
// ErrNoEvents at once.
func (c *Client) Follow(ctx context.Context, id string, fn func(Event)) (*job.Record, error) {
	last := ""
	failures := 0
	for {
		rec, err := c.followOnce(ctx, id, &last, fn)
		switch {
		case err == nil:
			return rec, nil
		case errors.Is(err, ErrNoEvents):
			return nil, err
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		if failures++; failures >= followTries {
			return nil, fmt.Errorf("job %s's event stream: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(failures) * time.Second):
		}
	}
}

// followOnce reads one connection's worth of events, resuming after *last
// and keeping *last up to date. A nil error means the job ended: rec is
// then the job.
func (c *Client) followOnce(ctx context.Context, id string, last *string, fn func(Event)) (*job.Record, error) {
	req, err := c.newRequest(ctx, http.MethodGet, jobPath(id)+"/events", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if *last != "" {
		req.Header.Set("Last-Event-ID", *last)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNoContent:
		// The stream says we have seen its end: read the job itself.
		return c.Job(ctx, id)
	case resp.StatusCode == http.StatusNotFound && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"):
		return nil, ErrNoEvents
	case resp.StatusCode != http.StatusOK:
		e := apiError(req, resp)
		if e.StatusCode == http.StatusNotFound && strings.Contains(e.Message, "no such endpoint") {
			return nil, ErrNoEvents
		}
		return nil, e
	}
	r := sse.NewReader(resp.Body)
	for {
		ev, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("the stream ended before the job did: %w", io.ErrUnexpectedEOF)
		}
		if err != nil {
			return nil, err
		}
		if r.LastID() != "" {
			*last = r.LastID()
		}
		if fn != nil {
			fn(Event{ID: ev.ID, Type: ev.Type, Data: ev.Data})
		}
		if ev.Type == job.EventCompleted {
			var rec job.Record
			if err := json.Unmarshal(ev.Data, &rec); err != nil {
				return nil, fmt.Errorf("job %s's completed event: %w", id, err)
			}
			return &rec, nil
		}
	}
}
