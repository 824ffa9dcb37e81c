package scheduler

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
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
	cpu0 := processCPU()
	b.ResetTimer()
	for range b.N {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/jobs:batch", bytes.NewReader(body)))
		if rec.Code != http.StatusOK {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "jobs/s")
	// On shared cores the rate follows the machine's load; the API's CPU
	// per job does not.
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N*1000), "cpu-µs/job")
	if info, err := e.rdb.Info(b.Context(), "commandstats").Result(); err == nil && testing.Verbose() {
		b.Log(info)
	}
}

// processCPU is the user + system CPU this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
