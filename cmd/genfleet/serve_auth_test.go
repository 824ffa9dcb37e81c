package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/testenv"
)

func TestLoopbackOnly(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{":8080", false},
		{"0.0.0.0:8080", false},
		{"[::]:8080", false},
		{"10.1.2.3:8080", false},
		{"[2001:db8::1]:8080", false},
		{"scheduler.example.com:8080", false},
		{"8080", false},
		{"127.0.0.1:8080", true},
		{"127.0.0.2:0", true},
		{"[::1]:8080", true},
		{"localhost:8080", true},
		{"LOCALHOST:0", true},
	}
	for _, tt := range tests {
		if got := loopbackOnly(tt.addr); got != tt.want {
			t.Errorf("loopbackOnly(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// clearAuthEnv keeps the machine's own API settings out of a test.
func clearAuthEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"GENFLEET_API_TOKEN", "GENFLEET_ALLOW_UNAUTHENTICATED", "GENFLEET_LISTEN"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// `genfleet scheduler` (and `genfleet dev`) refuse to serve the API
// without a token on an address other hosts can reach, and say what to do;
// a token, a loopback address or --allow-unauthenticated lets them start.
func TestSchedulerRefusesOpenAPI(t *testing.T) {
	clearAuthEnv(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"scheduler", "--listen", ":0"},
		{"scheduler", "--listen", "0.0.0.0:0"},
		{"scheduler"}, // the default, :8080
		{"dev", "--listen", "0.0.0.0:0"},
	} {
		// A child process, so that one that does start serving is killed.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, self, args...)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		var stderrBuf testenv.Buffer
		cmd.Stderr = &stderrBuf
		err := cmd.Run()
		cancel()
		stderr := stderrBuf.String()
		if code := cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("%q: exit %d (%v), want 1 at once\n%s", args, code, err, stderr)
		}
		for _, want := range []string{"refusing to serve the API", "without authentication", "GENFLEET_API_TOKEN", "--api-token", "--listen 127.0.0.1:", "--allow-unauthenticated"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("%q: stderr lacks %q:\n%s", args, want, stderr)
			}
		}
	}

	rd := testenv.Redis(t)
	s := testenv.S3Server(t, "genfleet-models")
	conn := []string{"--redis", rd.Addr, "--s3-endpoint", s.Endpoint, "--s3-access-key", testenv.AccessKey,
		"--s3-secret-key", testenv.SecretKey, "--registry", "s3://genfleet-models/"}
	for _, tc := range []struct {
		name  string
		args  []string
		token string
	}{
		{"loopback", []string{"--listen", "127.0.0.1:0"}, ""},
		{"token", []string{"--listen", ":0"}, "tok-123"},
		{"allowed", []string{"--listen", ":0", "--allow-unauthenticated"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.token != "" {
				t.Setenv("GENFLEET_API_TOKEN", tc.token)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var logs testenv.Buffer
			exited := make(chan error, 1)
			go func() { exited <- cmdScheduler(ctx, append(slices.Clone(conn), tc.args...), &logs) }()
			addr := waitListening(t, &logs, exited)
			resp, err := http.Get("http://" + addr + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /healthz: %s", resp.Status)
			}
			cancel()
			if err := <-exited; err != nil {
				t.Fatalf("scheduler: %v\n%s", err, logs.String())
			}
		})
	}
}

// waitListening waits for the scheduler's "scheduler listening" log line
// and returns a loopback address that reaches it.
func waitListening(t *testing.T, logs *testenv.Buffer, exited <-chan error) string {
	t.Helper()
	re := regexp.MustCompile(`scheduler listening" addr=\S*:(\d+)`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := re.FindStringSubmatch(logs.String()); m != nil {
			return "127.0.0.1:" + m[1]
		}
		select {
		case err := <-exited:
			t.Fatalf("scheduler exited: %v\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("scheduler not listening after 30 s:\n%s", logs.String())
		}
	}
}
