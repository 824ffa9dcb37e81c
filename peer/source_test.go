package peer

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/genfleet/genfleet/modelcache"
)

// A host that lacks a blob fetches every part from a peer that holds it:
// no byte from S3.
func TestFetchFromPeer(t *testing.T) {
	e := newEnv(t)
	const parts = 8
	m, data := e.push(t, "frompeer", parts*testPart)
	a := e.newHost(t, "a", hostOpts{})
	a.acquire(t, m, data)
	before := e.origin.bytes.Load()
	if before != parts*testPart {
		t.Fatalf("the first host took %d bytes from S3, want %d", before, parts*testPart)
	}
	b := e.newHost(t, "b", hostOpts{})
	mod := b.acquire(t, m, data)
	if got := e.origin.bytes.Load() - before; got != 0 {
		t.Errorf("the second host took %d bytes from S3, want 0", got)
	}
	if got := counter(t, b.metrics, "genfleet_peer_parts_total", map[string]string{"from": "peer", "result": "ok"}); got != parts {
		t.Errorf("parts from peers = %v, want %d", got, parts)
	}
	if got := counter(t, a.metrics, "genfleet_peer_served_bytes_total", nil); got != parts*testPart {
		t.Errorf("a served %v bytes, want %d", got, parts*testPart)
	}
	if mod.Report.FetchedBytes != parts*testPart {
		t.Errorf("report: %+v", mod.Report)
	}
	// A host without a blob server takes part in no election: with no
	// peer holding the blob it goes to S3 at once.
	m2, data2 := e.push(t, "alone", 2*testPart)
	c := e.newHost(t, "c", hostOpts{noServer: true})
	before = e.origin.bytes.Load()
	c.acquire(t, m2, data2)
	if got := e.origin.bytes.Load() - before; got != 2*testPart {
		t.Errorf("a host without a server took %d bytes from S3, want %d", got, 2*testPart)
	}
}

// A peer killed in the middle of a transfer (its server and every
// connection closed, its heartbeat gone) is put aside, and the download
// carries on from where the part broke, from S3 when no other peer has
// it: the blob ends up whole and verified.
func TestPeerKilledMidTransfer(t *testing.T) {
	e := newEnv(t)
	const parts = 10
	m, data := e.push(t, "killed", parts*testPart)
	a := e.newHost(t, "a", hostOpts{bandwidth: 2e6})
	a.acquire(t, m, data)
	var sent atomic.Int64
	var kill sync.Once
	a.wrap.Store(ptr(wrapper(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&hookWriter{ResponseWriter: w, wrote: func(n int) {
				if sent.Add(int64(n)) > 3*testPart+testPart/2 {
					kill.Do(func() { go a.stop() })
				}
			}}, r)
		})
	})))
	before := e.origin.bytes.Load()
	b := e.newHost(t, "b", hostOpts{})
	b.acquire(t, m, data)
	fromS3 := e.origin.bytes.Load() - before
	if fromS3 == 0 || fromS3 >= parts*testPart {
		t.Errorf("after the peer died, %d bytes came from S3; want some but not all %d", fromS3, parts*testPart)
	}
	if !slices.Contains(b.src.Avoided(), a.addr) {
		t.Errorf("the dead peer %s is not put aside: %v", a.addr, b.src.Avoided())
	}
	if got := counter(t, b.metrics, "genfleet_peer_avoided_total", map[string]string{"reason": "error"}); got < 1 {
		t.Errorf("avoided{error} = %v", got)
	}
}

// hookWriter reports every write of a response body.
type hookWriter struct {
	http.ResponseWriter
	wrote func(int)
}

func (w *hookWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.wrote(n)
	return n, err
}

// corruptWriter flips one byte of every response body it passes on.
type corruptWriter struct {
	http.ResponseWriter
	done bool
}

func (w *corruptWriter) Write(p []byte) (int, error) {
	if !w.done && len(p) > 0 && w.Header().Get("Content-Type") == "application/octet-stream" {
		q := append([]byte(nil), p...)
		q[len(q)/2] ^= 0x5a
		w.done = true
		return w.ResponseWriter.Write(q)
	}
	return w.ResponseWriter.Write(p)
}

func ptr[T any](v T) *T { return &v }

// A peer that serves corrupt bytes (a fault-injecting wrapper around its
// real server) is caught by the part digests: the part is thrown away,
// fetched again from an honest peer, and the liar is put aside. No byte
// comes from S3.
func TestLyingPeer(t *testing.T) {
	e := newEnv(t)
	const parts = 8
	m, data := e.push(t, "lies", parts*testPart)
	liar := e.newHost(t, "liar", hostOpts{})
	liar.acquire(t, m, data)
	honest := e.newHost(t, "honest", hostOpts{})
	honest.acquire(t, m, data)
	liar.wrap.Store(ptr(wrapper(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&corruptWriter{ResponseWriter: w}, r)
		})
	})))
	b := e.newHost(t, "b", hostOpts{})
	// The honest peer answers transfers only once b has caught the liar,
	// so that b surely asks the liar first (busy: 503, not its fault).
	honest.wrap.Store(ptr(wrapper(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Range") != "" && !slices.Contains(b.src.Avoided(), liar.addr) {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, r)
		})
	})))
	before := e.origin.bytes.Load()
	b.acquire(t, m, data)
	if got := e.origin.bytes.Load() - before; got != 0 {
		t.Errorf("%d bytes came from S3, want 0 (the honest peer has them all)", got)
	}
	if corrupt := counter(t, b.metrics, "genfleet_peer_parts_total", map[string]string{"result": "corrupt"}); corrupt < 1 {
		t.Errorf("corrupt parts = %v, want at least 1", corrupt)
	}
	if !slices.Equal(b.src.Avoided(), []string{liar.addr}) {
		t.Errorf("put aside: %v, want only the liar %s", b.src.Avoided(), liar.addr)
	}
	if got := counter(t, b.metrics, "genfleet_peer_avoided_total", map[string]string{"reason": "corrupt"}); got < 1 {
		t.Errorf("avoided{corrupt} = %v", got)
	}
}

// When no host has a blob and three need it at once, one wins the
// election and pulls it from S3; the others stream its verified parts from
// it and from each other. S3 sends the blob once.
func TestElectionOneS3Fetch(t *testing.T) {
	e := newEnv(t)
	const parts = 12
	m, data := e.push(t, "elect", parts*testPart)
	var hosts []*host
	for _, n := range []string{"a", "b", "c"} {
		hosts = append(hosts, e.newHost(t, n, hostOpts{}))
	}
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() { h.acquire(t, m, data) })
	}
	wg.Wait()
	if got := e.origin.bytes.Load(); got != parts*testPart {
		t.Errorf("S3 sent %d bytes for three hosts, want %d (the blob once)", got, parts*testPart)
	}
	var won, lost float64
	for _, h := range hosts {
		won += counter(t, h.metrics, "genfleet_peer_elections_total", map[string]string{"result": "won"})
		lost += counter(t, h.metrics, "genfleet_peer_elections_total", map[string]string{"result": "lost"})
	}
	if won != 1 || lost != 2 {
		t.Errorf("elections: won %v, lost %v; want 1 and 2", won, lost)
	}
	if n, err := e.rdb.Exists(t.Context(), leasePrefix+m.Files[0].Digest).Result(); err != nil || n != 0 {
		t.Errorf("lease left after the downloads: %d, %v", n, err)
	}
}

// The elected host dies half way (its download cancelled, its server
// gone): its lease goes with it, another host takes it over and pulls the
// rest from S3; every host ends with the blob.
func TestElectionLeaderDies(t *testing.T) {
	e := newEnv(t)
	const parts = 10
	m, data := e.push(t, "leaderdies", parts*testPart)
	release := make(chan struct{})
	leader := e.newHost(t, "leader", hostOpts{src: func(c *SourceConfig) {
		c.Origin = &gatedOrigin{Source: e.origin, after: 4, release: release}
	}})
	ctx, cancel := context.WithCancel(t.Context())
	led := make(chan error, 1)
	go func() {
		mod, err := leader.cache.Acquire(ctx, m)
		if err == nil {
			mod.Close()
		}
		led <- err
	}()
	// Wait until it holds the lease and has parts to give.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if inv, _ := leader.cache.PeerInventory(); len(inv.Partials) == 1 && inv.Partials[0].Have >= 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	follower := e.newHost(t, "follower", hostOpts{})
	got := make(chan error, 1)
	go func() {
		mod, err := follower.cache.Acquire(t.Context(), m)
		if err == nil {
			mod.Close()
		}
		got <- err
	}()
	time.Sleep(300 * time.Millisecond) // the follower streams what the leader has
	cancel()
	leader.stop()
	if err := <-led; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v", err)
	}
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("follower: %v", err)
	}
	follower.acquire(t, m, data)
	if won := counter(t, follower.metrics, "genfleet_peer_elections_total", map[string]string{"result": "won"}); won != 1 {
		t.Errorf("the follower won %v elections, want 1 (after the leader died)", won)
	}
	// At most the parts the leader had in flight are fetched twice.
	if s3 := e.origin.bytes.Load(); s3 > (parts+3)*testPart {
		t.Errorf("S3 sent %d bytes, want at most %d", s3, (parts+3)*testPart)
	}
}

// A download from peers interrupted by a restart (the process gone, its
// cache directory kept) resumes where it stopped: the parts it had
// verified are not fetched again.
func TestPeerFetchResumesAfterRestart(t *testing.T) {
	e := newEnv(t)
	const parts = 12
	m, data := e.push(t, "resume", parts*testPart)
	a := e.newHost(t, "a", hostOpts{bandwidth: 256e3})
	a.acquire(t, m, data)
	root := t.TempDir()
	b := e.newHost(t, "b", hostOpts{root: root, src: func(c *SourceConfig) { c.PeerStall = 5 * time.Second }})
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan error, 1)
	go func() {
		_, err := b.cache.Acquire(ctx, m)
		got <- err
	}()
	have := 0
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && have < 4 {
		if inv, _ := b.cache.PeerInventory(); len(inv.Partials) == 1 {
			have = inv.Partials[0].Have
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted acquire: %v", err)
	}
	b.stop()
	inv, _ := b.cache.PeerInventory()
	if len(inv.Partials) != 1 || inv.Partials[0].Have < 4 {
		t.Fatalf("after the interruption: %+v, want a partial with at least 4 parts", inv)
	}
	kept := inv.Partials[0].Have

	b2 := e.newHost(t, "b", hostOpts{root: root})
	mod := b2.acquire(t, m, data)
	if want := int64((parts - kept) * testPart); mod.Report.FetchedBytes != want {
		t.Errorf("the resumed download fetched %d bytes, want %d (%d parts kept)", mod.Report.FetchedBytes, want, kept)
	}
	if s3 := e.origin.bytes.Load(); s3 != parts*testPart {
		t.Errorf("S3 sent %d bytes, want %d (the first host's fetch only)", s3, parts*testPart)
	}
}

var _ modelcache.PartSource = (*Source)(nil)

// A lease held by a host that no longer answers (killed: it could not give
// the lease back) is taken over as soon as the host is found unreachable,
// not after the lease lapses and not after PartWait.
func TestElectionLeaseOfDeadHostTakenOver(t *testing.T) {
	e := newEnv(t)
	const parts = 4
	m, data := e.push(t, "deadlease", parts*testPart)
	dead := "127.0.0.1:1" // nothing listens there
	if err := e.rdb.Set(t.Context(), leasePrefix+m.Files[0].Digest, dead, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	h := e.newHost(t, "h", hostOpts{src: func(c *SourceConfig) { c.PartWait = 30 * time.Second }})
	start := time.Now()
	h.acquire(t, m, data)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v: the dead host's lease was waited out", d)
	}
	if won := counter(t, h.metrics, "genfleet_peer_elections_total", map[string]string{"result": "won"}); won != 1 {
		t.Errorf("won %v elections, want 1 (the take-over)", won)
	}
	if got := e.origin.bytes.Load(); got != parts*testPart {
		t.Errorf("S3 sent %d bytes, want %d", got, parts*testPart)
	}
}

// hangingWriter passes the first left bytes of a blob body on, then hangs
// until the request ends.
type hangingWriter struct {
	http.ResponseWriter
	ctx  context.Context
	left int
}

func (w *hangingWriter) Write(p []byte) (int, error) {
	if w.Header().Get("Content-Type") != "application/octet-stream" {
		return w.ResponseWriter.Write(p)
	}
	n := 0
	if w.left > 0 {
		var err error
		n, err = w.ResponseWriter.Write(p[:min(len(p), w.left)])
		w.left -= n
		w.ResponseWriter.(http.Flusher).Flush()
		if err != nil || n == len(p) {
			return n, err
		}
	}
	<-w.ctx.Done()
	return n, w.ctx.Err()
}

// A peer that starts a transfer and then sends nothing (hung) is given up
// on after PeerStall: the transfer is cancelled, the peer put aside as
// slow, and the part fetched elsewhere.
func TestStalledPeer(t *testing.T) {
	e := newEnv(t)
	const parts = 4
	m, data := e.push(t, "stall", parts*testPart)
	a := e.newHost(t, "a", hostOpts{})
	a.acquire(t, m, data)
	a.wrap.Store(ptr(wrapper(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&hangingWriter{ResponseWriter: w, ctx: r.Context(), left: 1024}, r)
		})
	})))
	before := e.origin.bytes.Load()
	b := e.newHost(t, "b", hostOpts{src: func(c *SourceConfig) { c.PeerStall = 300 * time.Millisecond }})
	start := time.Now()
	b.acquire(t, m, data)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v with a hung peer", d)
	}
	if got := counter(t, b.metrics, "genfleet_peer_avoided_total", map[string]string{"reason": "slow"}); got < 1 {
		t.Errorf("the hung peer was not put aside as slow")
	}
	if !slices.Contains(b.src.Avoided(), a.addr) {
		t.Errorf("put aside: %v, want %s", b.src.Avoided(), a.addr)
	}
	if got := e.origin.bytes.Load() - before; got == 0 {
		t.Error("nothing came from S3, but the only peer was hung")
	}
}
