package main

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

// genfleet bench prints the result with the run's name, wall time and
// machine: with --json as one JSON object on the last line of stdout,
// without it as sorted "key: value" lines.
func TestBenchPrintsTheResult(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := runCLI("bench", "load", "--size", "1MiB", "--runs", "1", "--dir", dir, "--json")
	if code != 0 {
		t.Fatalf("bench load --json: exit %d\n%s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var res map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line is not one JSON object: %v\n%s", err, stdout)
	}
	want := []string{"bench", "cpus", "goarch", "goos", "mmap_ms", "mmap_populate_ms", "ratio", "read_gb_per_s", "read_ms", "runs", "size_bytes", "wall_s"}
	if len(res) != len(want) {
		t.Errorf("keys %v, want %v", res, want)
	}
	for _, k := range want {
		if _, ok := res[k]; !ok {
			t.Errorf("no %q in %v", k, res)
		}
	}
	if res["bench"] != "load" || res["size_bytes"] != float64(1<<20) || res["cpus"] != float64(runtime.NumCPU()) || !strings.Contains(stderr, "mmap_ms:") {
		t.Errorf("bench %v, size_bytes %v, cpus %v; progress on stderr:\n%s", res["bench"], res["size_bytes"], res["cpus"], stderr)
	}

	code, stdout, stderr = runCLI("bench", "load", "--size", "1MiB", "--runs", "1", "--dir", dir)
	if code != 0 {
		t.Fatalf("bench load: exit %d\n%s", code, stderr)
	}
	text := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(text) != len(want) {
		t.Fatalf("text output:\n%s\nwant one line per key of %v", stdout, want)
	}
	for i, k := range want {
		if !strings.HasPrefix(text[i], k+": ") {
			t.Errorf("line %d: %q, want %q first (keys sorted)", i+1, text[i], k)
		}
	}
	if text[len(want)-2] != "size_bytes: 1048576" {
		t.Errorf("%q: want the integer as Go prints it", text[len(want)-2])
	}
}

func TestBenchRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "queue", "--client", "curl"}, "--client"},
		{[]string{"bench", "fetch", "--size", "0"}, `--size: bad size "0"`},
		{[]string{"bench", "upload", "--sweep-threads", "1,x"}, "--sweep-threads"},
		{[]string{"bench", "nope"}, `unknown benchmark "nope"`},
		{[]string{"bench", "spread", "--hosts", "1"}, "--hosts must be at least 2"},
		{[]string{"bench", "spread", "--s3-bandwidth", "fast"}, `--s3-bandwidth "fast"`},
		{[]string{"bench", "sim", "--peer-bandwidth", "0"}, `--peer-bandwidth "0"`},
		{[]string{"bench", "share", "--backend", "sdcpp", "--size", "1GiB"}, "--size applies to --backend builtin only"},
		{[]string{"bench", "share", "--model-file", "x.gguf"}, "--model-file applies to --backend sdcpp only"},
		{[]string{"bench", "share", "--backend", "sdcpp", "--dtype", "f8"}, "--dtype"},
		{[]string{"bench", "share", "--backend", "sdcpp", "--sdcpp-server", "/nonexistent/sd-server"}, "GENFLEET_SDCPP_SERVER"},
		{[]string{"bench", "share", "--backend", "refgen"}, `--backend "refgen": want builtin or sdcpp`},
	} {
		if code, _, stderr := runCLI(tc.args...); code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want a failure naming %s", tc.args, code, stderr, tc.want)
		}
	}
}
