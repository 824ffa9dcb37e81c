package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/genfleet/genfleet/job"
)

// The API's answers, as much of them as the page shows. They are decoded
// from the API's JSON, not imported from the scheduler: the page is a
// client of the API like any other.

// hostJSON is a host of GET /v1/workers.
type hostJSON struct {
	Host        string          `json:"host"`
	DeviceClass string          `json:"device_class"`
	Engines     []string        `json:"engines"`
	Processes   int             `json:"processes"`
	Concurrency int             `json:"concurrency"`
	InFlight    int             `json:"in_flight"`
	Backlog     int             `json:"backlog"`
	CacheUsed   int64           `json:"cache_used"`
	CacheBudget int64           `json:"cache_budget"`
	Blobs       []job.BlobState `json:"blobs"`
	// LastSeen is set for a host listed under "gone".
	LastSeen time.Time `json:"last_seen"`
}

// workersJSON is the body of GET /v1/workers.
type workersJSON struct {
	Hosts   []hostJSON      `json:"hosts"`
	Workers []job.Heartbeat `json:"workers"`
	Gone    []hostJSON      `json:"gone"`
}

// queueJSON is a queue of GET /v1/queues.
type queueJSON struct {
	Name      string `json:"name"`
	Pending   int    `json:"pending"`
	Active    int    `json:"active"`
	Scheduled int    `json:"scheduled"`
	Retry     int    `json:"retry"`
	Archived  int    `json:"archived"`
	Paused    bool   `json:"paused"`
}

// queuesJSON is the body of GET /v1/queues.
type queuesJSON struct {
	Queues    []queueJSON `json:"queues"`
	IntervalS float64     `json:"interval_s"`
	History   []struct {
		At     time.Time         `json:"at"`
		Queues map[string][3]int `json:"queues"`
	} `json:"history"`
}

// jobJSON is a job record. Outputs is the list of images of a job that
// made several (an API that has them lists them; Result is the first).
type jobJSON struct {
	job.Record
	Outputs []job.Output `json:"outputs,omitempty"`
}

// modelsJSON is the body of GET /v1/models.
type modelsJSON struct {
	Models []struct {
		Name  string `json:"name"`
		Files []struct {
			Name   string `json:"name"`
			Role   string `json:"role"`
			Digest string `json:"digest"`
		} `json:"files"`
	} `json:"models"`
}

// apiError is an API answer other than 200, with the API's message.
type apiError struct {
	Code    int
	Message string
	Field   string
}

func (e *apiError) Error() string { return fmt.Sprintf("the API answered %d: %s", e.Code, e.Message) }

// errorOf makes an apiError of an answer.
func errorOf(a apiAnswer) *apiError {
	var body struct{ Error, Field string }
	if err := json.Unmarshal(a.body, &body); err != nil || body.Error == "" {
		body.Error = http.StatusText(a.code)
	}
	return &apiError{Code: a.code, Message: body.Error, Field: body.Field}
}

// getJSON GETs path from the API as s and decodes the answer into v.
func (u *UI) getJSON(ctx context.Context, s *session, path string, v any) error {
	a := u.call(ctx, s.token, http.MethodGet, path, nil)
	if a.code != http.StatusOK {
		return errorOf(a)
	}
	if err := json.Unmarshal(a.body, v); err != nil {
		return fmt.Errorf("the API's answer to GET %s does not decode: %w", path, err)
	}
	return nil
}
