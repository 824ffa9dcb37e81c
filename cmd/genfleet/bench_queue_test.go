package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/internal/testenv"
)

// TestBenchQueueSmall runs a tiny bench queue on the test's Redis and S3
// and checks that every figure it reports is there and consistent.
func TestBenchQueueSmall(t *testing.T) {
	rs := testenv.Redis(t)
	s3 := testenv.S3Server(t)
	bench := func(extra ...string) map[string]any {
		t.Helper()
		args := append([]string{"bench", "queue", "--redis", rs.Addr,
			"--s3-endpoint", s3.Endpoint, "--s3-access-key", s3.Config.AccessKey, "--s3-secret-key", s3.Config.SecretKey,
			"--idle-jobs", "3", "--json"}, extra...)
		code, stdout, stderr := runCLI(args...)
		if code != 0 {
			t.Fatalf("bench queue %v: exit %d\n%s", extra, code, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		var res map[string]any
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
			t.Fatalf("last line is not one JSON object: %v\n%s", err, stdout)
		}
		return res
	}
	if res := bench("--jobs", "20", "--rounds", "1", "--client", "net/http"); res["client"] != "net/http" || !(res["genfleet_jobs_per_s"].(float64) > 0) {
		t.Errorf("--client net/http: client %v, %v jobs/s", res["client"], res["genfleet_jobs_per_s"])
	}
	if _, _, stderr := runCLI("bench", "queue", "--client", "curl"); !strings.Contains(stderr, "--client") {
		t.Errorf("--client curl: %q, want an error naming --client", stderr)
	}
	res := bench("--jobs", "60", "--rounds", "2")
	if res["client"] != "lean" {
		t.Errorf("client %v, want lean by default", res["client"])
	}
	for _, k := range []string{"genfleet_jobs_per_s", "asynq_jobs_per_s", "ratio", "idle_start_p50_ms", "idle_start_p99_ms",
		"genfleet_cpu_us_per_job", "asynq_cpu_us_per_job", "genfleet_redis_cpu_us_per_job", "asynq_redis_cpu_us_per_job"} {
		if v, ok := res[k].(float64); !ok || v <= 0 {
			t.Errorf("%s = %v, want a figure above 0", k, res[k])
		}
	}
	rr, _ := res["round_ratios"].([]any)
	if res["jobs"] != 60.0 || res["rounds"] != 2.0 || len(rr) != 2 {
		t.Fatalf("jobs %v rounds %v round_ratios %v, want 60, 2 and two ratios", res["jobs"], res["rounds"], rr)
	}
	// Two rounds: the median is their mean (each rounded to 3 places).
	want := (rr[0].(float64) + rr[1].(float64)) / 2
	if r := res["ratio"].(float64); r < want-0.002 || r > want+0.002 {
		t.Errorf("ratio %v, want the median of the rounds' %v", r, rr)
	}
}
