package ui_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

const token = "ui-test-token"

// env is the scheduler (API and page) on a real Redis, with one fake
// host's heartbeat and one finished job; model checks are off, so no S3
// is needed.
type env struct {
	t   *testing.T
	url string
	rdb *redis.Client
}

func newEnv(t *testing.T, tokens ...string) *env {
	t.Helper()
	addr := testenv.Redis(t).Addr
	cl := s3.New(s3.Options{Region: "us-east-1"}) // never called here
	s, err := scheduler.New(scheduler.Config{Redis: asynq.RedisClientOpt{Addr: addr}, S3: cl, APITokens: tokens,
		Registry: &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: "models"}},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close(); srv.Close(); s.Close() })
	ctx := t.Context()
	if err := job.NewFleet(rdb).Beat(ctx, &job.Heartbeat{Host: "box-1", PID: 42, Backend: "cpu", DeviceClass: "cpu", Concurrency: 2, At: time.Now().UTC(),
		Blobs: []job.BlobState{{Digest: "sha256:0123456789abcdef", Size: 1 << 20, Resident: 1}}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	req := job.Request{Model: "demo", Prompt: "an old lighthouse", Width: 64, Height: 64, Steps: 2}
	if err := job.NewStore(rdb).Finish(ctx, &job.Record{ID: "job-done", Status: job.StatusFailed, Model: "demo", Request: &req,
		Error: "boom", FinishedAt: time.Now(), Timings: map[string]float64{"queue_wait": 5, "generate": 20, "total": 25}}, ""); err != nil {
		t.Fatal(err)
	}
	// A job waits on a priority queue no worker serves.
	task, opts, err := job.NewTask("job-waiting", req, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := asynq.NewClientFromRedisClient(rdb).Enqueue(task, append(opts, asynq.Queue("pool:cpu:high"))...); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, url: srv.URL, rdb: rdb}
}

// client is a browser without JavaScript: it keeps cookies and does not
// follow redirects, so each answer can be checked.
func client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *env) do(c *http.Client, method, path string, form url.Values, hdr ...string) (*http.Response, string) {
	e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, e.url+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

func csrfOf(t *testing.T, html string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(html)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", html)
	}
	return m[1]
}

// Where the API has tokens, the page sends a browser to sign in, takes
// only a real token, keeps a session cookie that holds no token, and
// then shows every list in plain HTML; signing out ends the session.
func TestSignInAndListsWithoutJavaScript(t *testing.T) {
	e := newEnv(t, token)
	c := client()
	resp, _ := e.do(c, "GET", "/ui/jobs?status=failed", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login?next=%2Fui%2Fjobs%3Fstatus%3Dfailed" {
		t.Fatalf("page without a session = %d → %q, want 303 to the sign-in", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := e.do(c, "GET", "/ui/part/hosts", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("fragment without a session = %d, want 401", resp.StatusCode)
	}
	if resp, body := e.do(c, "GET", "/ui/login?next=/ui/jobs", nil); resp.StatusCode != 200 || !strings.Contains(body, `<label for="token">`) {
		t.Fatalf("sign-in page = %d", resp.StatusCode)
	}
	// A wrong token: 401, the form again, no cookie.
	resp, body := e.do(c, "POST", "/ui/login", url.Values{"token": {"nope"}, "next": {"/ui/jobs"}})
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `role="alert"`) || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token = %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	// A sign-in posted from another site is refused.
	if resp, _ := e.do(c, "POST", "/ui/login", url.Values{"token": {token}}, "Sec-Fetch-Site", "cross-site"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site sign-in = %d, want 403", resp.StatusCode)
	}
	resp, _ = e.do(c, "POST", "/ui/login", url.Values{"token": {token}, "next": {"https://evil.example/"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("sign-in = %d → %q, want 303 to /ui/ (never elsewhere)", resp.StatusCode, resp.Header.Get("Location"))
	}
	ck := resp.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Path != "/ui" || strings.Contains(ck[0].Value, token) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/ui, without the token", ck)
	}

	// Lists, without any script.
	resp, body = e.do(c, "GET", "/ui/", nil)
	for _, want := range []string{`<h3 id="host-0">box-1</h3>`, "0 of 2 slots", "sha256:0123456789ab", "<table class=\"queues\"", "<td>high</td>", "<code>pool:cpu:high</code>: 1 pending", "Sign out"} {
		if resp.StatusCode != 200 || !strings.Contains(body, want) {
			t.Fatalf("fleet page = %d lacks %q:\n%s", resp.StatusCode, want, body)
		}
	}
	resp, body = e.do(c, "GET", "/ui/jobs?status=failed&model=demo", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, "an old lighthouse") || !strings.Contains(body, `href="/ui/jobs/job-done"`) {
		t.Fatalf("jobs page = %d:\n%s", resp.StatusCode, body)
	}
	if _, body := e.do(c, "GET", "/ui/jobs?status=succeeded", nil); !strings.Contains(body, "No jobs match this filter") {
		t.Fatalf("filtered jobs page:\n%s", body)
	}
	resp, body = e.do(c, "GET", "/ui/jobs/job-done", nil)
	for _, want := range []string{"boom", "queue wait", "generate", `class="waterfall"`, "an old lighthouse"} {
		if resp.StatusCode != 200 || !strings.Contains(body, want) {
			t.Fatalf("job page = %d lacks %q:\n%s", resp.StatusCode, want, body)
		}
	}
	if resp, _ := e.do(c, "GET", "/ui/jobs/no-such-job", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown job's page = %d, want 404", resp.StatusCode)
	}
	// The bearer header works too (scripts and curl).
	if resp, body := e.do(client(), "GET", "/ui/part/jobs", nil, "Authorization", "Bearer "+token); resp.StatusCode != 200 || !strings.Contains(body, "job-done") {
		t.Fatalf("fragment with a bearer token = %d", resp.StatusCode)
	}

	// Sign out: needs the CSRF token; then the cookie is gone.
	_, body = e.do(c, "GET", "/ui/", nil)
	if resp, _ := e.do(c, "POST", "/ui/logout", url.Values{"csrf": {"0000"}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-out without the CSRF token = %d, want 403", resp.StatusCode)
	}
	if resp, _ := e.do(c, "POST", "/ui/logout", url.Values{"csrf": {csrfOf(t, body)}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out = %d", resp.StatusCode)
	}
	if resp, _ := e.do(c, "GET", "/ui/", nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after sign-out the page answers %d, want 303 to the sign-in", resp.StatusCode)
	}
}

// The submit form posts through the page with its CSRF token: without
// it nothing is queued; with it the job is queued once (sent twice with
// one nonce, still once) and the browser goes to the job's page; a bad
// field comes back on the form, named.
func TestSubmitForm(t *testing.T) {
	e := newEnv(t) // an open API: no sign-in, CSRF still checked
	c := client()
	_, page := e.do(c, "GET", "/ui/submit", nil)
	csrf := csrfOf(t, page)
	form := url.Values{"model": {"demo"}, "prompt": {"a red fox"}, "width": {"64"}, "height": {"64"}, "steps": {"2"}, "seed": {"7"}, "nonce": {"n1"}}

	if resp, _ := e.do(c, "POST", "/ui/submit", form); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("submit without CSRF = %d, want 403", resp.StatusCode)
	}
	form.Set("csrf", csrf)
	if resp, _ := e.do(c, "POST", "/ui/submit", form, "Origin", "https://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("submit from another origin = %d, want 403", resp.StatusCode)
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d jobs queued by refused posts", n)
	}
	resp, _ := e.do(c, "POST", "/ui/submit", form)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/jobs/") {
		t.Fatalf("submit = %d → %q", resp.StatusCode, loc)
	}
	if resp, _ := e.do(c, "POST", "/ui/submit", form); resp.Header.Get("Location") != loc {
		t.Fatalf("the same form again went to %q, want the same job %q", resp.Header.Get("Location"), loc)
	}
	if n := e.queued(); n != 1 {
		t.Fatalf("%d jobs queued, want 1", n)
	}
	// The job page of a queued job reloads itself without a script.
	_, body := e.do(c, "GET", loc, nil)
	if !strings.Contains(body, `<noscript><meta http-equiv="refresh"`) || !strings.Contains(body, "queued") || !strings.Contains(body, "a red fox") {
		t.Fatalf("queued job's page:\n%s", body)
	}
	// The script asks for JSON.
	form.Set("nonce", "n2")
	if resp, body := e.do(c, "POST", "/ui/submit", form, "Accept", "application/json"); resp.StatusCode != http.StatusAccepted || !strings.Contains(body, `"url":"/ui/jobs/`) {
		t.Fatalf("JSON submit = %d %s", resp.StatusCode, body)
	}
	form.Set("nonce", "n3")
	form.Set("width", "65")
	resp, body = e.do(c, "POST", "/ui/submit", form)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="width" name="width" type="number" min="64" max="2048" step="8" value="65" aria-invalid="true"`) || !strings.Contains(body, "multiple of 8") {
		t.Fatalf("bad width = %d:\n%s", resp.StatusCode, body)
	}
	form.Set("width", "sixty")
	if resp, body := e.do(c, "POST", "/ui/submit", form, "Accept", "application/json"); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"field":"width"`) {
		t.Fatalf("width that is not a number = %d %s", resp.StatusCode, body)
	}
	// Cancel from the job's page.
	_, body = e.do(c, "GET", loc, nil)
	resp, _ = e.do(c, "POST", loc+"/cancel", url.Values{"csrf": {csrfOf(t, body)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("cancel = %d", resp.StatusCode)
	}
	if _, body := e.do(c, "GET", loc, nil); !strings.Contains(body, "cancelled") {
		t.Fatalf("job page after cancel:\n%s", body)
	}
}

func (e *env) queued() int {
	e.t.Helper()
	insp := asynq.NewInspectorFromRedisClient(e.rdb)
	info, err := insp.GetQueueInfo("pool:cpu")
	if err != nil {
		return 0
	}
	return info.Pending
}

// Every answer of the page carries its security headers, and the assets
// are embedded.
func TestHeadersAndAssets(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/ui/", "/ui/static/ui.css", "/ui/static/ui.js"} {
		resp, body := e.do(client(), "GET", p, nil)
		if resp.StatusCode != 200 || len(body) < 100 {
			t.Fatalf("GET %s = %d (%d bytes)", p, resp.StatusCode, len(body))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Fatalf("GET %s: CSP %q", p, csp)
		}
	}
	// No request leaves the host: nothing in the page names another one.
	_, body := e.do(client(), "GET", "/ui/", nil)
	if m := regexp.MustCompile(`(src|href)="(https?:)?//`).FindString(body); m != "" {
		t.Fatalf("page loads from elsewhere: %s", m)
	}
	// /ui without the slash goes to /ui/; the API is untouched.
	if resp, _ := e.do(client(), "GET", "/ui", nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("/ui = %d → %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := e.do(client(), "GET", "/v1/jobs", nil); resp.StatusCode != 200 || resp.Header.Get("Content-Security-Policy") != "" {
		t.Fatalf("/v1/jobs = %d", resp.StatusCode)
	}
}
