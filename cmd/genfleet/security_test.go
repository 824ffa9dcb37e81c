package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
)

// A scheduler process with an API token and a password-protected Redis,
// and a worker process with the same Redis password and the S3 keys: the
// API requires the token (except on the probe and metrics paths), `genfleet
// submit --api-token` gets through, and no secret shows up in any log line
// (debug level) or in anything the API answers, failures included.
func TestAuthAndNoSecretsInLogsOrStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	const (
		token     = "tok-7f3c9a1e5b2d4c6e8f0a1b3c5d7e9f11"
		redisPass = "rpw-Zq8xK2mV9nB4"
	)
	secrets := map[string]string{"API token": token, "Redis password": redisPass, "S3 secret key": testenv.SecretKey}

	fl := newFleet(t, 1<<20, "cpu") // its in-process API is not used below
	rdb := redis.NewClient(&redis.Options{Addr: fl.redis.Addr})
	if err := rdb.ConfigSet(context.Background(), "requirepass", redisPass).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.Close()
	redisURI := "redis://:" + redisPass + "@" + fl.redis.Addr + "/0"

	// The scheduler as its own process, configured from the environment.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	port := testenv.FreePort(t)
	api := fmt.Sprintf("http://127.0.0.1:%d", port)
	sched := exec.Command(self, "scheduler", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	sched.Env = append(os.Environ(), childEnv+"=1",
		"GENFLEET_REDIS="+redisURI, "GENFLEET_API_TOKEN="+token,
		"GENFLEET_S3_ENDPOINT="+fl.proxy.srv.URL,
		"GENFLEET_S3_ACCESS_KEY="+testenv.AccessKey, "GENFLEET_S3_SECRET_KEY="+testenv.SecretKey,
		"GENFLEET_REGISTRY=s3://"+modelsBucket+"/", "GENFLEET_OUTPUTS=s3://"+outputsBucket+"/outputs/",
		"GENFLEET_LOG_LEVEL=debug")
	var schedLog testenv.Buffer
	sched.Stdout, sched.Stderr = &schedLog, &schedLog
	if err := sched.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sched.Process.Kill(); _ = sched.Wait() })
	// One worker; its Redis password arrives in the --redis URI, as in a
	// deployment that uses GENFLEET_REDIS=redis://:…@host.
	fl.startWorker("--redis", redisURI)

	var answers bytes.Buffer
	call := func(method, path, body, tok string) (int, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(&answers, "%s %s %d %v\n%s\n", method, path, resp.StatusCode, resp.Header, b)
		return resp.StatusCode, resp.Header
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(api + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("scheduler not ready:\n%s", schedLog.String())
		}
	}

	// Authentication.
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := call("GET", p, "", ""); code != http.StatusOK {
			t.Fatalf("GET %s without a token: %d, want 200 (open)", p, code)
		}
	}
	for _, tc := range []struct{ name, method, path, tok string }{
		{"no token", "POST", "/v1/jobs", ""},
		{"wrong token", "POST", "/v1/jobs", token + "x"},
		{"prefix of the token", "GET", "/v1/workers", token[:len(token)-1]},
		{"no token, status", "GET", "/v1/jobs/whatever", ""},
		{"no token, job list", "GET", "/v1/jobs", ""},
		{"no token, queues", "GET", "/v1/queues", ""},
		{"no token, upload", "POST", "/v1/uploads", ""},
		{"no token, image k", "GET", "/v1/jobs/whatever/images/1", ""},
		{"no token, OpenAI generations", "POST", "/v1/images/generations", ""},
		{"no token, OpenAI edits", "POST", "/v1/images/edits", ""},
	} {
		code, hdr := call(tc.method, tc.path, jobBody(1), tc.tok)
		if code != http.StatusUnauthorized || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("%s: %d WWW-Authenticate %q; want 401 with a Bearer challenge", tc.name, code, hdr.Get("WWW-Authenticate"))
		}
	}

	// A job through `genfleet submit --api-token … --wait`.
	var out, errOut bytes.Buffer
	if rc := run([]string{"submit", "--api", api, "--api-token", token, "--model", "demo", "--prompt", "a fox",
		"--width", "64", "--height", "64", "--steps", "2", "--wait", "--timeout", "60s"}, &out, &errOut); rc != 0 {
		t.Fatalf("genfleet submit = %d: %s", rc, errOut.String())
	}
	id := strings.TrimSpace(out.String())
	if code, _ := call("GET", "/v1/jobs/"+id, "", token); code != http.StatusOK {
		t.Fatalf("GET job with the token: %d", code)
	}
	// Failures carry error messages: an upload the S3 server refuses, and a
	// model the registry lacks.
	fl.proxy.failPuts.Store(100)
	code, _ := call("POST", "/v1/jobs", `{"model":"demo","prompt":"x","width":64,"height":64,"steps":1}`, token)
	if code != http.StatusAccepted {
		t.Fatalf("POST with the token: %d", code)
	}
	call("POST", "/v1/jobs", `{"model":"ghost","prompt":"x","width":64,"height":64,"steps":1}`, token)
	call("POST", "/v1/jobs", `{"model":"s3://genfleet-models/nope/x.safetensors","prompt":"x","width":64,"height":64,"steps":1}`, token)
	time.Sleep(3 * time.Second) // the failing upload is retried and logged
	for _, p := range []string{"/v1/workers", "/v1/models", "/v1/jobs/" + id, "/v1/jobs/" + id + "/image",
		"/v1/jobs", "/v1/queues", "/ui/", "/ui/jobs", "/ui/jobs/" + id, "/ui/submit"} {
		call("GET", p, "", token)
	}
	// Every job's record as the API reports it.
	ids := listJobIDs(t, fl.redis.Addr, redisPass)
	for _, j := range ids {
		call("GET", "/v1/jobs/"+j, "", token)
	}
	if len(ids) < 2 {
		t.Fatalf("found %d job records, want at least 2", len(ids))
	}
	fl.stopWorkers()
	_ = sched.Process.Signal(os.Interrupt)
	_ = sched.Wait()

	texts := map[string]string{"scheduler log": schedLog.String(), "worker log": fl.workers[0].Stdout.(*testenv.Buffer).String(), "API answers": answers.String()}
	if !strings.Contains(texts["worker log"], "level=DEBUG") || !strings.Contains(texts["scheduler log"], "job enqueued") {
		t.Fatalf("logs look empty: worker %d bytes, scheduler %d bytes", len(texts["worker log"]), len(texts["scheduler log"]))
	}
	for where, text := range texts {
		for what, secret := range secrets {
			if i := strings.Index(text, secret); i >= 0 {
				t.Errorf("%s contains the %s: …%s…", where, what, text[max(0, i-200):min(len(text), i+len(secret)+50)])
			}
		}
	}
}

// listJobIDs returns the ids of the job records in Redis.
func listJobIDs(t *testing.T, addr, pass string) []string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, Password: pass})
	defer rdb.Close()
	keys, err := rdb.Keys(context.Background(), "genfleet:job:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range keys {
		ids = append(ids, strings.TrimPrefix(k, "genfleet:job:"))
	}
	return ids
}
