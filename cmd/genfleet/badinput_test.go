package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// `models ls` lists the usable models and names each unusable manifest
// with its error on stderr, rather than failing whole; it fails only when
// nothing can be listed.
func TestModelsLsReportsUnusableManifests(t *testing.T) {
	e := newPushEnv(t)
	put := func(name, body string) {
		t.Helper()
		u := e.reg.ManifestURL(name)
		if err := e.reg.Src.Put(t.Context(), u.Bucket, u.Key, strings.NewReader(body), int64(len(body))); err != nil {
			t.Fatal(err)
		}
	}
	put("passwd", `{"schema":1,"name":"passwd","files":[{"name":"p","url":"file:///etc/passwd","size":1}]}`)
	put("garbled", `{"schema":1,"na`)
	p := writeTestFile(t, t.TempDir(), "good.safetensors", tinySafetensors(t, 4))
	if _, err := e.reg.Push(t.Context(), p, s3x.URL{Bucket: "pushmodels", Key: "blobs/"}, "good", nil); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := e.run("models", "ls")
	if code != 0 || !hasRow(out, "good", "refgen") || strings.Contains(out, "passwd") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and the good model listed", code, out, stderr)
	}
	for _, want := range []string{`model "garbled"`, `model "passwd"`, "file:///etc/passwd"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not say %q", stderr, want)
		}
	}
	code, out, stderr = e.run("models", "ls", "--json")
	var listed []modelcache.Manifest
	if err := json.Unmarshal([]byte(out), &listed); code != 0 || err != nil || len(listed) != 1 || listed[0].Name != "good" {
		t.Fatalf("--json: exit %d, stdout %q (%v); want the good model alone", code, out, err)
	}
	if !strings.Contains(stderr, `"passwd"`) {
		t.Errorf("--json: stderr %q does not name the bad manifest", stderr)
	}

	// Only unusable manifests left: nothing to list.
	u := e.reg.ManifestURL("good")
	if _, err := e.s.Client.DeleteObject(t.Context(), &s3.DeleteObjectInput{Bucket: aws.String(u.Bucket), Key: aws.String(u.Key)}); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = e.run("models", "ls")
	if code != 1 || !strings.Contains(stderr, `"passwd"`) || !strings.Contains(stderr, "no usable model manifest") {
		t.Fatalf("only bad manifests: exit %d, stdout %q, stderr %q; want 1 naming them", code, out, stderr)
	}
}

// `models inspect` on a safetensors file cut short says it is truncated
// and by how much, wherever the cut is.
func TestModelsInspectTruncated(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "m.safetensors")
	if code, _, stderr := runCLI("models", "make", "--size", "1MiB", "--out", full); code != 0 {
		t.Fatal(stderr)
	}
	data, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		keep int
		want string
	}{
		{"in the data", 600000, "bytes missing)"},
		{"in the header", 100, "runs past the end of the 100-byte file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(p, data[:tc.keep], 0o644); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runCLI("models", "inspect", p)
			if code != 1 || !strings.Contains(stderr, p) || !strings.Contains(stderr, "file is truncated") || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 1 saying %s is truncated (%q)", code, stderr, p, tc.want)
			}
		})
	}
}

// `submit -o` into a directory that does not exist fails before the job
// is submitted, not after it ran.
func TestSubmitChecksOutputPathFirst(t *testing.T) {
	opt := asynq.RedisClientOpt{Addr: testenv.Redis(t).Addr}
	// The API never reads S3 here: it checks no models.
	s3c, err := s3x.NewClient(t.Context(), s3x.Config{Endpoint: "http://127.0.0.1:1", AccessKey: "x", SecretKey: "y", PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	sched, err := scheduler.New(scheduler.Config{Redis: opt, S3: s3c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: &modelcache.Registry{Src: modelcache.NewS3Source(s3c), Root: s3x.URL{Bucket: "models"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer sched.Close()
	var posts atomic.Int32
	api := httptest.NewServer(countPosts(sched, &posts))
	defer api.Close()

	dir := t.TempDir()
	for _, tc := range []struct{ name, out, want string }{
		{"missing directory", filepath.Join(dir, "missing", "x.png"), "does not exist; nothing was submitted"},
		{"a directory", dir, "is a directory"},
		{"under a file", filepath.Join(writeTestFile(t, dir, "f", []byte("x")), "x.png"), "is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI("submit", "--api", api.URL, "--model", "demo", "--prompt", "x", "--timeout", "2s", "-o", tc.out)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 1 saying %q", code, stderr, tc.want)
			}
		})
	}
	if n := posts.Load(); n != 0 {
		t.Fatalf("%d jobs were submitted", n)
	}
}

// countPosts passes requests to the API's handler, counting the POSTs.
func countPosts(s *scheduler.Server, n *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			n.Add(1)
		}
		s.Handler().ServeHTTP(w, r)
	})
}
