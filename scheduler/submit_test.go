package scheduler

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

func (e *routedEnv) post(t *testing.T, path, body string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Post(e.url+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// Submits go on working on a Redis that lost its scripts (a restart, or
// SCRIPT FLUSH): the pipelined enqueue sends the script's text where
// Redis answered NOSCRIPT.
func TestSubmitAfterScriptFlush(t *testing.T) {
	e := newRoutedEnv(t, nil)
	for round := range 2 {
		if err := e.rdb.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		if code, _, b := e.post(t, "/v1/jobs", `{"model":"demo","prompt":"x"}`); code != http.StatusAccepted {
			t.Fatalf("round %d: POST /v1/jobs after SCRIPT FLUSH = %d %s", round, code, b)
		}
		if err := e.rdb.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		code, _, b := e.post(t, "/v1/jobs:batch", `{"jobs":[{"request":{"model":"demo","prompt":"a"},"idempotency_key":"k`+string(rune('0'+round))+`"},{"request":{"model":"demo","prompt":"b"}}]}`)
		var r struct{ Queued int }
		if code != http.StatusOK || json.Unmarshal(b, &r) != nil || r.Queued != 2 {
			t.Fatalf("round %d: batch after SCRIPT FLUSH = %d %s", round, code, b)
		}
	}
	qi, err := e.insp.GetQueueInfo("pool:cpu")
	if err != nil || qi.Pending != 6 {
		t.Fatalf("pool:cpu %+v (%v); want the 6 jobs pending", qi, err)
	}
}

// With Redis gone, a batch queues nothing and says so: 503 with
// Retry-After, each item's error saying the queue is unavailable.
func TestBatchWithoutRedis(t *testing.T) {
	e := newRoutedEnv(t, nil)
	e.redis.Stop()
	code, hdr, b := e.post(t, "/v1/jobs:batch", `{"jobs":[{"request":{"model":"demo","prompt":"a"},"idempotency_key":"k"},{"request":{"model":"demo","prompt":"b"}}]}`)
	var r struct {
		Jobs []struct {
			Error string
			Code  int
		}
		Failed int
	}
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || json.Unmarshal(b, &r) != nil || r.Failed != 2 {
		t.Fatalf("batch without Redis = %d (Retry-After %q) %s", code, hdr.Get("Retry-After"), b)
	}
	for _, j := range r.Jobs {
		if j.Code != http.StatusServiceUnavailable || !strings.Contains(j.Error, "queue unavailable") {
			t.Fatalf("item %+v", j)
		}
	}
}
