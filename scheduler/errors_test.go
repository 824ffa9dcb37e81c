package scheduler

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/modelcache"
)

// apiEnv is the API on a real Redis; with S3, on a real S3 server whose
// registry holds the model "demo" (1 KiB of bytes) and checks models.
type apiEnv struct {
	t    *testing.T
	url  string
	reg  *modelcache.Registry
	insp *asynq.Inspector
}

func newAPIEnv(t *testing.T, withS3 bool) *apiEnv {
	t.Helper()
	opt := asynq.RedisClientOpt{Addr: testenv.Redis(t).Addr}
	cfg := Config{Redis: opt, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if withS3 {
		srv := testenv.S3Server(t, "models")
		cfg.S3, cfg.CheckModels = srv.Client, true
	} else {
		cfg.S3 = s3.New(s3.Options{Region: "us-east-1"}) // never called: no model checks
	}
	cfg.Registry = &modelcache.Registry{Src: modelcache.NewS3Source(cfg.S3), Root: s3x.URL{Bucket: "models"}}
	if withS3 {
		p := filepath.Join(t.TempDir(), "demo.safetensors")
		if err := os.WriteFile(p, make([]byte, 1024), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := cfg.Registry.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "blobs/"}, "demo", nil); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(s.Handler())
	insp := asynq.NewInspector(opt)
	t.Cleanup(func() { insp.Close(); api.Close(); s.Close() })
	return &apiEnv{t: t, url: api.URL, reg: cfg.Registry, insp: insp}
}

// do sends a request for t and returns the status, headers and JSON body.
func (e *apiEnv) do(t *testing.T, method, path, body string, hdr ...string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s %s = %d with a body that is not a JSON object (%s): %q", method, path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return resp.StatusCode, resp.Header, v
}

// pending is the number of jobs queued on pool:cpu.
func (e *apiEnv) pending() int {
	e.t.Helper()
	qi, err := e.insp.GetQueueInfo("pool:cpu")
	if err != nil {
		return 0 // no such queue yet: nothing was ever enqueued
	}
	return qi.Pending
}

// putManifest writes a manifest object as it is, bypassing Push's checks.
func (e *apiEnv) putManifest(name, body string) {
	e.t.Helper()
	u := e.reg.ManifestURL(name)
	if err := e.reg.Src.Put(e.t.Context(), u.Bucket, u.Key, strings.NewReader(body), int64(len(body))); err != nil {
		e.t.Fatal(err)
	}
}

// A job for a model whose manifest no worker could use is refused at
// submit, 422 naming the model and the manifest's fault, and not queued;
// GET /v1/models lists the good models and names the bad one in a
// structured list.
func TestBadManifestRefusedAtSubmitAndNamedInList(t *testing.T) {
	e := newAPIEnv(t, true)
	e.putManifest("passwd", `{"schema":1,"name":"passwd","files":[{"name":"passwd","url":"file:///etc/passwd","size":100}]}`)
	e.putManifest("garbled", `{"schema":1,"name":`)

	for _, model := range []string{"passwd", "garbled"} {
		code, _, body := e.do(t, "POST", "/v1/jobs", fmt.Sprintf(`{"model":%q,"prompt":"x"}`, model))
		if code != http.StatusUnprocessableEntity || body["field"] != "model" || !strings.Contains(fmt.Sprint(body["error"]), model) {
			t.Errorf("POST for model %q = %d %v; want 422 on field model naming it", model, code, body)
		}
	}
	if code, _, body := e.do(t, "POST", "/v1/jobs", `{"model":"passwd","prompt":"x"}`); !strings.Contains(fmt.Sprint(body["error"]), "file:///etc/passwd") {
		t.Errorf("422 (%d) does not say what is wrong with the manifest: %v", code, body)
	}
	if n := e.pending(); n != 0 {
		t.Fatalf("%d jobs queued for models with bad manifests", n)
	}
	if code, _, body := e.do(t, "POST", "/v1/jobs", `{"model":"demo","prompt":"x"}`); code != http.StatusAccepted {
		t.Fatalf("good model: %d %v", code, body)
	}

	code, _, body := e.do(t, "GET", "/v1/models", "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/models = %d %v", code, body)
	}
	models, _ := body["models"].([]any)
	if len(models) != 1 || models[0].(map[string]any)["name"] != "demo" {
		t.Errorf("models = %v, want [demo]", body["models"])
	}
	errs, _ := body["errors"].([]any)
	names := map[string]string{}
	for _, x := range errs {
		m := x.(map[string]any)
		names[fmt.Sprint(m["name"])] = fmt.Sprint(m["error"])
	}
	if len(names) != 2 || !strings.Contains(names["passwd"], "file:///etc/passwd") || names["garbled"] == "" {
		t.Errorf("errors = %v, want passwd and garbled, each with its error", body["errors"])
	}
}

// The API answers every error in JSON: a body that is not an object, a
// prompt with invalid UTF-8 (refused, not stored as U+FFFD), a method a
// path does not take (405 with Allow), a path it does not have (404), and
// a job id no job can have (400).
func TestErrorAnswersAreJSONAndSayWhatIsWrong(t *testing.T) {
	e := newAPIEnv(t, false)
	tests := []struct {
		name, method, path, body string
		code                     int
		field, want, allow       string
	}{
		{"array body", "POST", "/v1/jobs", `[1,2]`, 400, "", "must be a JSON object, got an array", ""},
		{"bad json", "POST", "/v1/jobs", `{"model":`, 400, "", "request body is not valid JSON", ""},
		{"invalid utf-8 prompt", "POST", "/v1/jobs", "{\"model\":\"demo\",\"prompt\":\"\xff\xfe\"}", 400, "prompt", "not valid UTF-8", ""},
		{"PUT jobs", "PUT", "/v1/jobs", `{}`, 405, "", "method PUT is not allowed on /v1/jobs", "GET, HEAD, POST"},
		{"POST a job", "POST", "/v1/jobs/abc", `{}`, 405, "", "not allowed", "DELETE, GET, HEAD"},
		{"unknown path", "GET", "/v1/nope", "", 404, "", "no such endpoint: GET /v1/nope", ""},
		{"unknown root path", "GET", "/nope", "", 404, "", "no such endpoint", ""},
		{"space in id", "GET", "/v1/jobs/sp%20ace", "", 400, "id", "has ' ' at byte 2", ""},
		{"dots in id", "DELETE", "/v1/jobs/a..b", "", 400, "id", `contains ".."`, ""},
		{"long id image", "GET", "/v1/jobs/" + strings.Repeat("a", 129) + "/image", "", 400, "id", "at most 128", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, body := e.do(t, tt.method, tt.path, tt.body)
			if code != tt.code || !strings.Contains(fmt.Sprint(body["error"]), tt.want) {
				t.Fatalf("%s %s = %d %v; want %d saying %q", tt.method, tt.path, code, body, tt.code, tt.want)
			}
			if got, _ := body["field"].(string); got != tt.field {
				t.Errorf("field %q, want %q", got, tt.field)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if got := hdr.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
	if n := e.pending(); n != 0 {
		t.Fatalf("%d jobs queued by bad requests", n)
	}
}

// An Idempotency-Key reused with another request body is refused, 422
// naming the key; the same request, however it is written, still gets the
// first job back.
func TestIdempotencyKeyBoundToItsBody(t *testing.T) {
	e := newAPIEnv(t, false)
	code, _, first := e.do(t, "POST", "/v1/jobs", `{"model":"demo","prompt":"a fox","seed":1}`, "Idempotency-Key", "key-1")
	if code != http.StatusAccepted {
		t.Fatalf("first POST = %d %v", code, first)
	}
	code, _, body := e.do(t, "POST", "/v1/jobs", `{"model":"demo","prompt":"a whale","seed":1}`, "Idempotency-Key", "key-1")
	if code != http.StatusUnprocessableEntity || body["field"] != "Idempotency-Key" ||
		!strings.Contains(fmt.Sprint(body["error"]), `Idempotency-Key "key-1" was used with a different request body`) {
		t.Fatalf("another body with the key = %d %v; want 422 naming the key", code, body)
	}
	// The same request: fields reordered, a default spelled out.
	code, _, again := e.do(t, "POST", "/v1/jobs", `{"seed":1, "prompt":"a fox", "model":"demo", "width":512}`, "Idempotency-Key", "key-1")
	if code != http.StatusAccepted || again["id"] != first["id"] || again["duplicate"] != true {
		t.Fatalf("same body with the key = %d %v; want 202 with job %v, duplicate", code, again, first["id"])
	}
	if n := e.pending(); n != 1 {
		t.Fatalf("%d jobs queued, want 1", n)
	}
}
