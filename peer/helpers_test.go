package peer

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

const (
	testToken = "fleet-token-for-tests-0123456789"
	testPart  = modelcache.MinManifestPartSize
)

// env is a real S3 server with a "models" bucket, a real Redis, and an
// origin that counts the bytes S3 sends.
type env struct {
	s3     *testenv.S3
	origin *countingOrigin
	reg    *modelcache.Registry
	rdb    *redis.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := testenv.S3Server(t, "models")
	r := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	origin := &countingOrigin{Source: modelcache.NewS3Source(s.Client)}
	return &env{s3: s, origin: origin, rdb: rdb,
		reg: &modelcache.Registry{Src: origin.Source, Root: s3x.URL{Bucket: "models"}, PartSize: testPart}}
}

// push registers a model of size random bytes with part digests of
// testPart bytes.
func (e *env) push(t *testing.T, name string, size int) (*modelcache.Manifest, []byte) {
	t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), 7))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	p := filepath.Join(t.TempDir(), name+".safetensors")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := e.reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "w/"}, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, data
}

// countingOrigin is the real S3 Source, counting the bytes of object GETs
// (not manifests) it passes on.
type countingOrigin struct {
	modelcache.Source
	bytes atomic.Int64
}

func (o *countingOrigin) GetRange(ctx context.Context, bucket, key, etag string, off, n int64) (io.ReadCloser, error) {
	rc, err := o.Source.GetRange(ctx, bucket, key, etag, off, n)
	if err != nil {
		return nil, err
	}
	return &counted{ReadCloser: rc, n: &o.bytes}, nil
}

type counted struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *counted) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// host is one worker host of a test fleet: a cache, its blob server on a
// loopback port, a peer Source, and a heartbeat loop advertising it.
type host struct {
	name    string
	root    string
	cache   *modelcache.Cache
	srv     *Server
	hs      *http.Server
	addr    string
	src     *Source
	metrics *prometheus.Registry
	// wrap, when set, wraps the blob server's handler (faults).
	wrap atomic.Pointer[wrapper]

	stop func()
}

// hostOpts tune a test host.
type hostOpts struct {
	noServer  bool // no blob server (and so no election)
	bandwidth float64
	src       func(*SourceConfig)
	root      string // reuse a cache directory
}

func (e *env) newHost(t *testing.T, name string, o hostOpts) *host {
	t.Helper()
	h := &host{name: name, root: o.root, metrics: prometheus.NewRegistry()}
	if h.root == "" {
		h.root = t.TempDir()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !o.noServer {
		h.addr = ln.Addr().String()
	} else {
		ln.Close()
	}
	fleet := NewHeartbeatFleet(e.rdb)
	fleet.ttl = 50 * time.Millisecond
	cfg := SourceConfig{Origin: e.origin, Fleet: fleet, Redis: e.rdb, Token: testToken, Self: h.addr,
		PartWait: 5 * time.Second, PeerStall: time.Second, LeaseTTL: 2 * time.Second, Metrics: h.metrics}
	if o.src != nil {
		o.src(&cfg)
	}
	h.src, err = NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.cache, err = modelcache.OpenWith(h.root, h.src, modelcache.Options{FetchConcurrency: 3, StallTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if !o.noServer {
		h.srv, err = NewServer(ServerConfig{Cache: h.cache, Token: testToken, Bandwidth: o.bandwidth, Metrics: h.metrics})
		if err != nil {
			t.Fatal(err)
		}
		h.hs = &http.Server{Handler: handlerFunc(func() http.Handler {
			if w := h.wrap.Load(); w != nil {
				return (*w)(h.srv)
			}
			return h.srv
		})}
		wg.Go(func() { _ = h.hs.Serve(ln) })
		wg.Go(func() { h.beat(ctx, job.NewFleet(e.rdb)) })
	}
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if h.hs != nil {
				h.hs.Close()
			}
			wg.Wait()
		})
	}
	t.Cleanup(h.stop)
	return h
}

// wrapper wraps a handler to inject a fault.
type wrapper func(http.Handler) http.Handler

// handlerFunc serves with whatever get returns at request time, so a test
// can set host.wrap after the server started.
type handlerFunc func() http.Handler

func (f handlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) { f().ServeHTTP(w, r) }

// beat publishes the host's heartbeat every 50ms, as a worker does.
func (h *host) beat(ctx context.Context, f *job.Fleet) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if st, err := State(h.cache, h.addr); err == nil {
			_ = f.Beat(ctx, &job.Heartbeat{Host: h.name, PID: 1, At: time.Now(), Peer: st}, time.Second)
		}
		select {
		case <-ctx.Done():
			lctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = f.Leave(lctx, h.name, 1)
			cancel()
			return
		case <-t.C:
		}
	}
}

// acquire acquires m on h and checks the bytes.
func (h *host) acquire(t *testing.T, m *modelcache.Manifest, data []byte) *modelcache.Model {
	t.Helper()
	mod, err := h.cache.Acquire(t.Context(), m)
	if err != nil {
		t.Fatalf("%s: acquire: %v", h.name, err)
	}
	t.Cleanup(func() { mod.Close() })
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatalf("%s: acquired bytes differ from the model", h.name)
	}
	return mod
}

// counter returns the value of a counter (summed over label sets matching
// labels) in reg.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func matches(m *dto.Metric, labels map[string]string) bool {
	for k, v := range labels {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}
