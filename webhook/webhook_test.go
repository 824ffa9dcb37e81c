package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

const secret = "0123456789abcdef0123456789abcdef"

func TestSignAndVerify(t *testing.T) {
	body := []byte(`{"id":"j1:1-0","event":"completed"}`)
	at := time.Unix(1764239822, 0)
	h := Sign([]string{secret}, at, body)
	// The scheme, computed here without the package: t + "." + body.
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("1764239822." + string(body)))
	if want := "t=1764239822,v1=" + hex.EncodeToString(m.Sum(nil)); h != want {
		t.Fatalf("Sign = %s, want %s", h, want)
	}
	if err := Verify(secret, h, body, DefaultTolerance, at.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"tampered body": Verify(secret, h, append(body, ' '), DefaultTolerance, at),
		"other secret":  Verify(secret+"x", h, body, DefaultTolerance, at),
		"no v1":         Verify(secret, "t=1764239822", body, DefaultTolerance, at),
		"garbage":       Verify(secret, "sha256=abc", body, DefaultTolerance, at),
	} {
		if !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v, want ErrBadSignature", name, err)
		}
	}
	if err := Verify(secret, h, body, DefaultTolerance, at.Add(6*time.Minute)); !errors.Is(err, ErrStale) {
		t.Errorf("replayed after 6 minutes: %v, want ErrStale", err)
	}
	// Rotation: signed with the new and the old secret, both verify.
	old := "fedcba9876543210fedcba9876543210"
	h2 := Sign([]string{secret, old}, at, body)
	if strings.Count(h2, "v1=") != 2 || Verify(secret, h2, body, DefaultTolerance, at) != nil || Verify(old, h2, body, DefaultTolerance, at) != nil {
		t.Fatalf("rotation header %s does not verify with both secrets", h2)
	}
}

// The shell line docs/jobs.md gives receivers computes the same signature.
func TestShellVerificationSnippet(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("no openssl")
	}
	body := []byte(`{"id":"j1:1-0","event":"completed","job":{"prompt":"a \"fox\"\n"}}`)
	f := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(f, body, 0o600); err != nil {
		t.Fatal(err)
	}
	h := Sign([]string{secret}, time.Now(), body)
	ts := strings.TrimPrefix(strings.Split(h, ",")[0], "t=")
	// As in docs/jobs.md, "Verifying a signature".
	cmd := exec.Command("sh", "-c", `{ printf '%s.' "$T"; cat "$BODY"; } | openssl dgst -sha256 -hmac "$GENFLEET_WEBHOOK_SECRET" -r | cut -d' ' -f1`)
	cmd.Env = append(os.Environ(), "T="+ts, "BODY="+f, "GENFLEET_WEBHOOK_SECRET="+secret)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); !strings.Contains(h, "v1="+got) {
		t.Fatalf("openssl gives %s; header %s", got, h)
	}
}

func TestPolicy(t *testing.T) {
	for addr, internal := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "172.16.0.1": true, "192.168.1.1": true, "169.254.169.254": true,
		"100.100.100.200": true, "0.0.0.0": true, "::1": true, "fe80::1": true, "fd00::1": true, "::ffff:127.0.0.1": true,
		"::ffff:169.254.169.254": true, "64:ff9b::a9fe:a9fe": true, "2002:a9fe:a9fe::1": true, "224.0.0.1": true,
		"255.255.255.255": true, "8.8.8.8": false, "1.1.1.1": false, "2606:4700:4700::1111": false, "93.184.215.14": false,
	} {
		if got := Internal(netip.MustParseAddr(addr)); got != internal {
			t.Errorf("Internal(%s) = %v", addr, got)
		}
	}
	def := Policy{}
	for _, u := range []string{"http://127.0.0.1:8080/x", "https://[::1]/", "http://169.254.169.254/latest/meta-data/",
		"http://10.0.0.5/", "http://localhost:9/", "http://LOCALHOST./", "http://a.localhost/", "ftp://example.com/", "file:///etc/passwd",
		"http://[::ffff:7f00:1]/", "http://0x7f000001/"} {
		err := def.CheckURL(u)
		if u == "http://0x7f000001/" {
			// Not an IP literal to Go's URL parser: a name, checked when
			// the connection resolves it.
			continue
		}
		if !errors.Is(err, ErrRefused) {
			t.Errorf("CheckURL(%s) = %v, want refused", u, err)
		}
	}
	for _, u := range []string{"https://hooks.example.com/genfleet", "http://8.8.8.8:8080/"} {
		if err := def.CheckURL(u); err != nil {
			t.Errorf("CheckURL(%s) = %v", u, err)
		}
	}
	allow, err := ParseAllow("127.0.0.0/8, 10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{Allow: allow}
	if p.CheckURL("http://127.0.0.1:9/") != nil || p.CheckURL("http://localhost:9/") != nil || p.CheckURL("http://10.1.2.3/") != nil {
		t.Error("allowed addresses refused")
	}
	if p.CheckURL("http://10.1.2.4/") == nil {
		t.Error("10.1.2.4 allowed by 10.1.2.3")
	}
	if _, err := ParseAllow("10.0.0.0/33"); err == nil {
		t.Error("a bad prefix was taken")
	}
}

// receiver is a real HTTP server that answers with the statuses it is
// given, in turn (then 200), and keeps what it got.
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	statuses []int
	got      []received
}

type received struct {
	header http.Header
	body   []byte
	err    error // Verify's verdict
}

func newReceiver(t *testing.T, statuses ...int) *receiver {
	r := &receiver{statuses: statuses}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, received{req.Header.Clone(), b, Verify(secret, req.Header.Get(SignatureHeader), b, DefaultTolerance, time.Now())})
		code := http.StatusNoContent
		if len(r.statuses) > 0 {
			code, r.statuses = r.statuses[0], r.statuses[1:]
		}
		r.mu.Unlock()
		w.WriteHeader(code)
		_, _ = w.Write([]byte("receiver says " + http.StatusText(code)))
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) received() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// env is a Deliverer on a real Redis, with the jobs it knows.
type env struct {
	rdb   *redis.Client
	store *job.Store
	mu    sync.Mutex
	jobs  map[string]*job.Record
}

func newEnv(t *testing.T) *env {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	t.Cleanup(func() { rdb.Close() })
	return &env{rdb: rdb, store: job.NewStore(rdb), jobs: map[string]*job.Record{}}
}

func (e *env) deliverer(t *testing.T, p Policy, maxAge time.Duration) *Deliverer {
	d, err := New(Config{Redis: e.rdb, Secrets: []string{secret}, Policy: p, MaxAge: maxAge,
		RetryBase: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, Poll: 10 * time.Millisecond, Timeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Job: func(ctx context.Context, id string) (*job.Record, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			if r, ok := e.jobs[id]; ok {
				return r, nil
			}
			return nil, ErrJobGone
		}})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(d.Shutdown)
	return d
}

// finish ends job id with a webhook to url, as a worker would: the final
// record write publishes completed and queues its delivery.
func (e *env) finish(t *testing.T, id, url string, events ...string) {
	t.Helper()
	req := job.Request{Model: "demo", Prompt: "x", Webhook: &job.Webhook{URL: url, Events: events}}
	rec := &job.Record{ID: id, Status: job.StatusSucceeded, Model: "demo", Request: &req, FinishedAt: time.Now().UTC()}
	e.mu.Lock()
	e.jobs[id] = rec
	e.mu.Unlock()
	if err := e.store.Finish(context.Background(), rec, ""); err != nil {
		t.Fatal(err)
	}
}

// attempts waits until job id has n recorded attempts and no delivery due.
func (e *env) attempts(t *testing.T, id string, n int) []job.WebhookAttempt {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		a, err := e.store.WebhookAttempts(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		due, _ := e.rdb.ZCard(context.Background(), job.WebhookDueKey).Result()
		if len(a) >= n && due == 0 {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: attempts %+v, %d due; want %d attempts and none due", id, a, due, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A completed job's webhook reaches a real HTTP receiver, signed so that
// the receiver's check passes, with the event and the job; a receiver
// that fails is retried with backoff until it answers, each attempt
// recorded with its status; one that never answers is given up after
// MaxAge; the events asked for are sent, the others not.
func TestDeliveryRetriesAndRecordsAttempts(t *testing.T) {
	e := newEnv(t)
	loopback := Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	e.deliverer(t, loopback, 2*time.Second)

	ok := newReceiver(t)
	e.finish(t, "job-ok", ok.URL+"/hook?token=abc")
	a := e.attempts(t, "job-ok", 1)
	got := ok.received()
	if len(a) != 1 || !a[0].OK || a[0].StatusCode != http.StatusNoContent || a[0].Attempt != 1 || a[0].Event != "completed" || !a[0].NextAt.IsZero() || len(got) != 1 {
		t.Fatalf("attempts %+v, %d received", a, len(got))
	}
	if got[0].err != nil {
		t.Fatalf("the receiver's signature check: %v", got[0].err)
	}
	var p Payload
	if err := json.Unmarshal(got[0].body, &p); err != nil || p.Event != "completed" || p.Job == nil || p.Job.ID != "job-ok" ||
		p.Job.Status != job.StatusSucceeded || string(p.Data) != `{"status":"succeeded"}` || !job.ValidEventID(p.EventID) || p.ID != "job-ok:"+p.EventID {
		t.Fatalf("payload %s (%v)", got[0].body, err)
	}
	if h := got[0].header; h.Get("Genfleet-Event") != "completed" || h.Get("Genfleet-Job") != "job-ok" || h.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", h)
	}

	flaky := newReceiver(t, 500, 503)
	e.finish(t, "job-flaky", flaky.URL)
	a = e.attempts(t, "job-flaky", 3)
	if len(a) != 3 || a[0].StatusCode != 500 || a[0].OK || a[0].NextAt.IsZero() || !strings.Contains(a[0].Error, "receiver says Internal Server Error") ||
		a[1].StatusCode != 503 || a[2].StatusCode != 204 || !a[2].OK || a[2].Attempt != 3 {
		t.Fatalf("attempts %+v", a)
	}
	if gap := a[1].At.Sub(a[0].At); gap < 30*time.Millisecond {
		t.Fatalf("retried after %v; want a backoff", gap)
	}
	rs := flaky.received()
	if len(rs) != 3 {
		t.Fatalf("receiver got %d POSTs", len(rs))
	}
	var ids []string
	for _, r := range rs {
		var p Payload
		_ = json.Unmarshal(r.body, &p)
		ids = append(ids, p.ID)
		if r.err != nil {
			t.Fatalf("retry signature: %v", r.err)
		}
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("delivery ids %v: want one id for every attempt of a delivery", ids)
	}

	down := newReceiver(t, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500)
	e.finish(t, "job-down", down.URL)
	deadline := time.Now().Add(15 * time.Second)
	for {
		a, _ = e.store.WebhookAttempts(context.Background(), "job-down")
		if len(a) > 0 && a[len(a)-1].GaveUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never gave up: %+v", a)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(a) < 3 || a[len(a)-1].At.Sub(a[0].At) > 3*time.Second {
		t.Fatalf("gave up after %d attempts over %v; want several within MaxAge (2s) and its last backoff", len(a), a[len(a)-1].At.Sub(a[0].At))
	}

	// Events asked for: started and progress are sent only when listed.
	ev := newReceiver(t)
	req := job.Request{Model: "demo", Prompt: "x", Webhook: &job.Webhook{URL: ev.URL, Events: []string{"progress"}}}
	e.mu.Lock()
	e.jobs["job-progress"] = &job.Record{ID: "job-progress", Status: job.StatusRunning, Request: &req}
	e.mu.Unlock()
	if err := e.store.Progress(context.Background(), "job-progress", 1, 2, req.Webhook.Wants("progress")); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Finish(context.Background(), &job.Record{ID: "job-progress", Status: job.StatusSucceeded, Request: &req}, ""); err != nil {
		t.Fatal(err)
	}
	a = e.attempts(t, "job-progress", 1)
	if len(a) != 1 || a[0].Event != "progress" {
		t.Fatalf("a webhook asking for progress only: attempts %+v", a)
	}
}

// By default a webhook to an internal address is refused when the POST
// connects, also for a host name that is no IP literal but resolves to
// one (what DNS rebinding does): nothing reaches the receiver, and the
// delivery is given up at once, recorded as refused. Allowed, the same
// name is delivered to.
func TestDeliveryRefusesInternalAddressesAtConnect(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	addrs, err := net.LookupHost(host)
	if err != nil || len(addrs) == 0 || !Internal(netip.MustParseAddr(addrs[0])) || addrs[0] != "127.0.0.1" {
		t.Skipf("this host's name %q resolves to %v, not loopback: no name to test with", host, addrs)
	}
	e := newEnv(t)
	r := newReceiver(t)
	_, port, _ := net.SplitHostPort(r.Listener.Addr().String())
	url := "http://" + host + ":" + port + "/hook"
	if err := (Policy{}).CheckURL(url); err != nil {
		t.Fatalf("CheckURL(%s) = %v: the name must pass the submit-time check for this test", url, err)
	}
	d := e.deliverer(t, Policy{}, time.Minute)
	e.finish(t, "job-internal", url)
	a := e.attempts(t, "job-internal", 1)
	if len(a) != 1 || a[0].OK || !a[0].GaveUp || !strings.Contains(a[0].Error, "internal address") || len(r.received()) != 0 {
		t.Fatalf("attempts %+v, receiver got %d", a, len(r.received()))
	}
	d.Shutdown()
	e.deliverer(t, Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, time.Minute)
	e.finish(t, "job-allowed", url)
	if a := e.attempts(t, "job-allowed", 1); !a[0].OK || len(r.received()) != 1 {
		t.Fatalf("allowed: attempts %+v", a)
	}
}

// docVerify is the Go snippet of docs/jobs.md ("Verifying a signature"),
// as printed there.
func docVerify(secret, header string, body []byte) bool {
	var t string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		if k == "t" {
			t = v
		} else if k == "v1" {
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(t, 10, 64)
	if err != nil || math.Abs(time.Since(time.Unix(sec, 0)).Minutes()) > 5 {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(t + "."))
	m.Write(body)
	want := hex.EncodeToString(m.Sum(nil))
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return true
		}
	}
	return false
}

// The documented Go check accepts what Sign makes, with either secret of a
// rotation, and refuses a changed body, another secret and an old POST.
func TestDocumentedVerification(t *testing.T) {
	body := []byte(`{"event":"completed"}`)
	now := time.Now()
	h := Sign([]string{secret, "the-old-secret-0123456789"}, now, body)
	if !docVerify(secret, h, body) || !docVerify("the-old-secret-0123456789", h, body) {
		t.Fatal("the documented check refuses a good signature")
	}
	if docVerify(secret, h, []byte(`{"event":"completed "}`)) || docVerify("another-secret-0123456789", h, body) ||
		docVerify(secret, Sign([]string{secret}, now.Add(-10*time.Minute), body), body) {
		t.Fatal("the documented check accepts a bad or old signature")
	}
}
