package scheduler

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkBatchSubmit is one POST /v1/jobs:batch of 1,000 jobs through the
// handler, on a real Redis and registry (the API's own cost per batch,
// without a network between client and API).
func BenchmarkBatchSubmit(b *testing.B) {
	e := newRoutedEnv(b, nil)
	var sb strings.Builder
	sb.WriteString(`{"jobs":[`)
	for i := range 1000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"request":{"model":"demo","prompt":"noop","seed":%d,"width":64,"height":64,"steps":1}}`, i)
	}
	sb.WriteString(`]}`)
	body := []byte(sb.String())
	h := e.s.Handler()
	b.ResetTimer()
	for range b.N {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/jobs:batch", bytes.NewReader(body)))
		if rec.Code != http.StatusOK {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "jobs/s")
	if info, err := e.rdb.Info(b.Context(), "commandstats").Result(); err == nil && testing.Verbose() {
		b.Log(info)
	}
}
