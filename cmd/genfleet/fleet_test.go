package main

// End-to-end tests: a real redis-server, a real S3 server (versitygw), the
// scheduler's API in this process and worker *processes* (this test binary
// re-executed as `genfleet worker`).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// childEnv marks a re-executed test binary that must act as genfleet.
const childEnv = "GENFLEET_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// countingProxy sits in front of the real S3 server. It counts GETs and
// bytes served per object key and can slow down a key's body, which is how
// a test holds a download open long enough for a second process to arrive.
type countingProxy struct {
	srv   *httptest.Server
	mu    sync.Mutex
	gets  map[string]int
	bytes map[string]int64
	slow  atomic.Value // string: key path prefix to slow down
	delay time.Duration
	// failPuts PUTs under /genfleet-outputs/ are answered 500 InternalError
	// without reaching the server.
	failPuts atomic.Int32
	// failGets, when set to a path prefix, answers every GET under it
	// with 500 InternalError: an object that fails for good.
	failGets atomic.Value
	// cutNext GET bodies whose path starts with the slow prefix are cut
	// off after 256 KiB, like a connection reset mid-download (well past the
	// headers, so the SDK cannot retry the request itself).
	cutNext atomic.Int32
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{gets: map[string]int{}, bytes: map[string]int64{}}
	p.slow.Store("")
	rp := httputil.NewSingleHostReverseProxy(u) // keeps the client's Host header, so SigV4 still verifies
	rp.ModifyResponse = func(resp *http.Response) error {
		req := resp.Request
		if req.Method != http.MethodGet || resp.StatusCode >= 300 {
			return nil
		}
		path := req.URL.Path
		p.mu.Lock()
		p.gets[path]++
		p.mu.Unlock()
		slow := p.slow.Load().(string)
		match := slow != "" && strings.HasPrefix(path, slow)
		cut := match && p.cutNext.Add(-1) >= 0
		resp.Body = &countingBody{ReadCloser: resp.Body, p: p, path: path, slow: match && p.delay > 0, delay: p.delay, cut: cut}
		return nil
	}
	p.failGets.Store("")
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		failGet := p.failGets.Load().(string)
		if (r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/"+outputsBucket+"/") && p.failPuts.Add(-1) >= 0) ||
			(r.Method == http.MethodGet && failGet != "" && strings.HasPrefix(r.URL.Path, failGet)) {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *countingProxy) counts(path string) (int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gets[path], p.bytes[path]
}

type countingBody struct {
	io.ReadCloser
	p     *countingProxy
	path  string
	slow  bool
	delay time.Duration
	once  sync.Once
	cut   bool
	read  int
}

func (b *countingBody) Read(buf []byte) (int, error) {
	if b.slow {
		b.once.Do(func() { time.Sleep(b.delay) })
	}
	if b.cut {
		if b.read >= 256<<10 {
			return 0, io.ErrUnexpectedEOF
		}
		buf = buf[:min(len(buf), 256<<10-b.read)]
	}
	n, err := b.ReadCloser.Read(buf)
	b.read += n
	b.p.mu.Lock()
	b.p.bytes[b.path] += int64(n)
	b.p.mu.Unlock()
	return n, err
}

// fleet is a running test fleet.
type fleet struct {
	t        *testing.T
	redis    *testenv.Server
	s3       *testenv.S3
	proxy    *countingProxy
	api      *httptest.Server
	sched    *scheduler.Server
	cacheDir string
	workers  []*exec.Cmd
	reg      *modelcache.Registry
	// token, when set, is sent as the bearer token of the API requests.
	token string
}

const (
	modelsBucket  = "genfleet-models"
	outputsBucket = "genfleet-outputs"
)

// newFleet starts Redis, S3 (behind the counting proxy) and the API, and
// registers a reference model of modelSize bytes as "demo".
func newFleet(t *testing.T, modelSize int64, pool string) *fleet {
	t.Helper()
	return newFleetWith(t, modelSize, func(c *scheduler.Config) { c.Pool = pool })
}

// newFleetWith is newFleet with the scheduler's config adjusted by edit
// (routing is off unless edit turns it on). The reaper runs.
func newFleetWith(t *testing.T, modelSize int64, edit func(*scheduler.Config)) *fleet {
	t.Helper()
	return newFleetOnRedis(t, testenv.Redis(t), modelSize, edit)
}

// newFleetOnRedis is newFleetWith on a Redis the caller started (one a
// test can stop and restart), with the reaper running. edit may be nil.
func newFleetOnRedis(t *testing.T, rd *testenv.Server, modelSize int64, edit func(*scheduler.Config)) *fleet {
	t.Helper()
	fl := &fleet{t: t, cacheDir: t.TempDir(), redis: rd}
	fl.s3 = testenv.S3Server(t, modelsBucket, outputsBucket)
	fl.proxy = newCountingProxy(t, fl.s3.Endpoint)
	ctx := context.Background()
	fl.reg = &modelcache.Registry{Src: modelcache.NewS3Source(fl.s3.Client), Root: s3x.URL{Bucket: modelsBucket}}
	model := filepath.Join(t.TempDir(), "demo.safetensors")
	if err := writeModel(model, modelSize, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.reg.Push(ctx, model, s3x.URL{Bucket: modelsBucket, Key: "blobs/demo.safetensors"}, "demo", nil); err != nil {
		t.Fatal(err)
	}
	cfg := scheduler.Config{
		Redis: asynq.RedisClientOpt{Addr: rd.Addr}, S3: fl.s3.Client, Registry: fl.reg,
		CheckModels: true, FleetTTL: 50 * time.Millisecond, ReapInterval: 200 * time.Millisecond,
	}
	if edit != nil {
		edit(&cfg)
	}
	sched, err := scheduler.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fl.sched = sched
	fl.api = httptest.NewServer(sched.Handler())
	reapCtx, stopReaper := context.WithCancel(context.Background())
	reaperDone := make(chan struct{})
	go func() { defer close(reaperDone); sched.RunReaper(reapCtx) }()
	t.Cleanup(func() { stopReaper(); <-reaperDone; fl.api.Close(); sched.Close() })
	return fl
}

// startWorker starts one worker process on the shared cache directory.
func (fl *fleet) startWorker(extra ...string) *exec.Cmd {
	fl.t.Helper()
	return fl.startWorkerOn("testhost", fl.cacheDir, extra...)
}

// startWorkerOn starts a worker process as host hostID with its own cache
// directory, as on another machine.
func (fl *fleet) startWorkerOn(hostID, cacheDir string, extra ...string) *exec.Cmd {
	fl.t.Helper()
	self, err := os.Executable()
	if err != nil {
		fl.t.Fatal(err)
	}
	args := append([]string{"worker", "--cache-dir", cacheDir, "--host-id", hostID,
		"--metrics-listen", "127.0.0.1:0", "--shutdown-timeout", "10s", "--heartbeat-interval", "200ms"}, extra...)
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(),
		childEnv+"=1",
		"GENFLEET_REDIS="+fl.redis.Addr,
		"GENFLEET_S3_ENDPOINT="+fl.proxy.srv.URL,
		"GENFLEET_S3_ACCESS_KEY="+testenv.AccessKey,
		"GENFLEET_S3_SECRET_KEY="+testenv.SecretKey,
		"GENFLEET_REGISTRY=s3://"+modelsBucket+"/",
		"GENFLEET_OUTPUTS=s3://"+outputsBucket+"/outputs/",
		"GENFLEET_LOG_LEVEL=debug",
	)
	cmd.Stdout = &testenv.Buffer{}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		fl.t.Fatal(err)
	}
	fl.workers = append(fl.workers, cmd)
	fl.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if fl.t.Failed() {
			fl.t.Logf("worker pid %d log:\n%s", cmd.Process.Pid, cmd.Stdout.(*testenv.Buffer).String())
		}
	})
	return cmd
}

// do sends a request to the API and returns status and body.
func (fl *fleet) do(method, path, body string, hdr ...string) (int, []byte) {
	fl.t.Helper()
	resp, b := fl.rawDo(method, path, body, hdr...)
	return resp.StatusCode, b
}

func (fl *fleet) submit(body string, hdr ...string) string {
	fl.t.Helper()
	code, b := fl.do("POST", "/v1/jobs", body, hdr...)
	if code != http.StatusAccepted {
		fl.t.Fatalf("POST /v1/jobs = %d %s", code, b)
	}
	var r struct{ ID, Status string }
	if err := json.Unmarshal(b, &r); err != nil || r.ID == "" || r.Status != "queued" {
		fl.t.Fatalf("POST /v1/jobs answered %s", b)
	}
	return r.ID
}

// client is the Go client of the fleet's API, with the fleet's token.
func (fl *fleet) client() *client.Client { return client.New(fl.api.URL, fl.token) }

func (fl *fleet) get(id string) job.Record {
	fl.t.Helper()
	rec, err := fl.client().Job(context.Background(), id)
	if err != nil {
		fl.t.Fatal(err)
	}
	return *rec
}

// wait polls until the job reaches a terminal status or until(rec) holds.
func (fl *fleet) wait(id string, timeout time.Duration, until func(job.Record) bool) job.Record {
	fl.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rec := fl.get(id)
		if rec.Status.Terminal() || (until != nil && until(rec)) {
			return rec
		}
		if time.Now().After(deadline) {
			fl.t.Fatalf("job %s still %s after %v", id, rec.Status, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (fl *fleet) image(id string) []byte {
	fl.t.Helper()
	code, b := fl.do("GET", "/v1/jobs/"+id+"/image", "")
	if code != http.StatusOK {
		fl.t.Fatalf("GET image of %s = %d %s", id, code, b)
	}
	return b
}

func jobBody(seed int) string {
	return fmt.Sprintf(`{"model":"demo","prompt":"a red fox","seed":%d,"width":256,"height":256,"steps":4}`, seed)
}

// stopWorkers sends SIGTERM to every worker and checks each exits cleanly.
func (fl *fleet) stopWorkers() {
	fl.t.Helper()
	for _, w := range fl.workers {
		if w.ProcessState != nil {
			continue
		}
		_ = w.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- w.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				fl.t.Errorf("worker pid %d exited with %v after SIGTERM", w.Process.Pid, err)
			}
		case <-time.After(30 * time.Second):
			fl.t.Errorf("worker pid %d did not exit within 30s of SIGTERM", w.Process.Pid)
		}
	}
}
