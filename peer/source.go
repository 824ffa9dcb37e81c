package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/modelcache"
)

// SourceConfig configures a Source. Fields without a stated default are
// required.
type SourceConfig struct {
	// Origin is S3: every request but parts goes there, and parts that no
	// peer delivers in time.
	Origin modelcache.Source
	// Fleet finds the peers that advertise a blob.
	Fleet Fleet
	// Redis holds the elections and swarms (election.go). Nil: no election
	// (a part no peer has comes from S3 at once) and no swarm.
	Redis redis.UniversalClient
	// Token is the fleet token the peers' servers require.
	Token string
	// Self is the address this host's own blob server advertises: it is
	// never asked, and it is what the swarm and the lease name. Empty
	// means this host serves nothing: it takes no part in elections and
	// never waits for a part that no peer has.
	Self string
	// Client makes the requests to peers. Default: one that gives up on a
	// connection after 2s and on a response's headers after 5s.
	Client *http.Client
	// PartWait is how long a Get waits for a part no peer has yet (while
	// the elected host pulls it from S3) before it takes the part from S3
	// itself. Keep it below the cache's stall timeout. Default 10s.
	PartWait time.Duration
	// PeerStall cancels a transfer from a peer that sends no bytes for
	// this long; the peer is avoided and the part asked for elsewhere.
	// Default 5s.
	PeerStall time.Duration
	// AvoidFor is how long a peer that failed or stalled is left out;
	// one that served a corrupt part is left out four times as long.
	// Default 1 minute.
	AvoidFor time.Duration
	// LeaseTTL is the life of an election lease and of a swarm entry
	// without refresh (their holders refresh them every third of it).
	// Default 10s.
	LeaseTTL time.Duration
	// MaxPeers caps how many of a blob's advertisers one download asks
	// for their part maps (picked at random, complete holders first).
	// Default 8.
	MaxPeers int
	// Metrics, when set, receives the source's collectors.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Source is the model cache's source on a host of the fleet: for files
// with part digests it delivers parts from peers (modelcache.PartSource),
// for everything else it is Origin (S3).
type Source struct {
	modelcache.Source
	cfg   SourceConfig
	coord *coordinator // nil without Redis or Self
	m     *sourceMetrics

	mu    sync.Mutex
	avoid map[string]time.Time // peer address → until when it is left out
}

var _ modelcache.PartSource = (*Source)(nil)

// How often a waiting Get looks again, how long a peer's part map is
// trusted and how often a download's list of peers is refreshed (a Get
// that finds no peer with its part refreshes it every pollEvery).
const (
	pollEvery    = 100 * time.Millisecond
	mapTTL       = 150 * time.Millisecond
	holdersEvery = time.Second
)

// NewSource checks cfg and returns a Source.
func NewSource(cfg SourceConfig) (*Source, error) {
	if cfg.Origin == nil || cfg.Fleet == nil {
		return nil, errors.New("peer source: Origin and Fleet are required")
	}
	if err := checkToken(cfg.Token); err != nil {
		return nil, fmt.Errorf("peer source: %w", err)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ResponseHeaderTimeout: 5 * time.Second,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			DisableCompression:    true,
		}}
	}
	defaults.Positive(&cfg.PartWait, 10*time.Second)
	defaults.Positive(&cfg.PeerStall, 5*time.Second)
	defaults.Positive(&cfg.AvoidFor, time.Minute)
	defaults.Positive(&cfg.LeaseTTL, 10*time.Second)
	defaults.Positive(&cfg.MaxPeers, 8)
	defaults.Zero(&cfg.Logger, slog.Default())
	m, err := newSourceMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s := &Source{Source: cfg.Origin, cfg: cfg, m: m, avoid: map[string]time.Time{}}
	if cfg.Redis != nil && cfg.Self != "" {
		s.coord = &coordinator{rdb: cfg.Redis, ttl: cfg.LeaseTTL}
	}
	return s, nil
}

// avoided reports whether addr is left out now.
func (s *Source) avoided(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.avoid[addr]
	if ok && time.Now().After(until) {
		delete(s.avoid, addr)
		return false
	}
	return ok
}

// putAside leaves addr out for a while, saying why.
func (s *Source) putAside(addr, reason string, err error) {
	d := s.cfg.AvoidFor
	if reason == "corrupt" {
		d *= 4
	}
	s.mu.Lock()
	s.avoid[addr] = time.Now().Add(d)
	s.mu.Unlock()
	s.m.avoided.WithLabelValues(reason).Inc()
	s.cfg.Logger.Warn("peer put aside", "peer", addr, "reason", reason, "for", d, "err", err)
}

// OpenParts implements modelcache.PartSource: it starts one download.
// With an election (Redis and Self set) the host joins the blob's swarm
// for the download's duration.
func (s *Source) OpenParts(ctx context.Context, f modelcache.PartFile) (modelcache.PartFetch, error) {
	d := &download{s: s, f: f, maps: map[string]*peerMap{}, providers: make([][]string, len(f.Parts)),
		inflight: map[string]int{}, stop: make(chan struct{}), stopped: make(chan struct{})}
	if s.coord == nil {
		close(d.stopped)
		return d, nil
	}
	if err := s.coord.join(ctx, f.Digest, s.cfg.Self); err != nil {
		s.cfg.Logger.Warn("peer source: cannot join the swarm; peers will find this download later, by heartbeat", "digest", f.Digest, "err", err)
	}
	go d.keepAlive()
	return d, nil
}

// download is one file's download through a Source (modelcache.PartFetch).
type download struct {
	s *Source
	f modelcache.PartFile

	mu        sync.Mutex
	peers     []string        // advertisers to ask, refreshed every holdersEvery
	complete  map[string]bool // of peers: which advertise the whole blob
	peersAt   time.Time
	maps      map[string]*peerMap
	providers [][]string     // per part: who sent its bytes since its last verdict
	inflight  map[string]int // per peer: transfers of ours under way
	leader    bool           // this host holds the blob's lease
	pulled    bool           // and has taken a part from S3 under it
	lost      bool           // this download lost an election (counted once)
	leaseBy   string         // who holds the lease, when not us

	stop, stopped chan struct{}
	closeOnce     sync.Once
}

// peerMap is a peer's part map, as last fetched.
type peerMap struct {
	mu       sync.Mutex
	at       time.Time
	ok       bool   // the peer answered with a map
	complete bool   // it holds the whole blob
	have     []bool // else its verified parts
}

// Get implements modelcache.PartFetch: part i from bytes from, from a
// peer that has it. A part that no peer has comes from S3 once this host
// holds the blob's lease (or at once, without an election), or after
// PartWait; one that peers have but are too busy to send (503) is asked
// for again, from S3 only after PartWait.
func (d *download) Get(ctx context.Context, i int, from int64) (io.ReadCloser, error) {
	deadline := time.Now().Add(d.s.cfg.PartWait)
	for {
		cands := d.candidates(ctx, i, holdersEvery, mapTTL)
		if len(cands) == 0 {
			// Look again, afresh, before going to S3 or waiting: a
			// peer may have just joined, or received the part.
			cands = d.candidates(ctx, i, pollEvery, 0)
		}
		for _, addr := range cands {
			body, err := d.fromPeer(ctx, addr, i, from)
			if err == nil {
				return body, nil
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
		switch {
		case len(cands) > 0:
			// Peers have the part but were busy (503), or failed and are
			// put aside now: ask again shortly rather than take it from S3.
			if time.Now().After(deadline) {
				return d.fromS3(ctx, i, from, fmt.Sprintf("the peers that have it stayed busy for %v", d.s.cfg.PartWait))
			}
		default:
			switch ok, justWon := d.mayUseS3(ctx); {
			case justWon:
				// The last leader may have finished just before we
				// looked: look once more before taking the part from S3.
				continue
			case ok:
				d.pulling()
				return d.fromS3(ctx, i, from, "")
			}
			if time.Now().After(deadline) {
				return d.fromS3(ctx, i, from, fmt.Sprintf("no peer had it within %v", d.s.cfg.PartWait))
			}
		}
		t := time.NewTimer(pollEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// Done implements modelcache.PartFetch: a part that did not match its
// digest puts every peer that sent bytes of it aside.
func (d *download) Done(i int, ok bool) {
	d.mu.Lock()
	provs := d.providers[i]
	d.providers[i] = nil
	d.mu.Unlock()
	from := "s3"
	for _, p := range provs {
		if p != "s3" {
			from = "peer"
		}
	}
	if from == "peer" && slices.Contains(provs, "s3") {
		from = "mixed"
	}
	result := "ok"
	if !ok {
		result = "corrupt"
		for _, p := range provs {
			if p != "s3" {
				d.s.putAside(p, "corrupt", fmt.Errorf("part %d of %s did not match its digest", i, d.f.Digest))
			}
		}
	}
	d.s.m.parts.WithLabelValues(from, result).Inc()
}

// Close implements modelcache.PartFetch: it gives up the lease, if held,
// and stops refreshing the swarm entry. The entry itself lapses on its own
// (two LeaseTTLs): a host that just finished the blob is still found there
// until its next heartbeat advertises it.
func (d *download) Close() {
	d.closeOnce.Do(func() {
		close(d.stop)
		<-d.stopped
		if d.s.coord == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if d.isLeader() {
			if err := d.s.coord.release(ctx, d.f.Digest, d.s.cfg.Self); err != nil {
				d.s.cfg.Logger.Warn("peer source: release lease", "digest", d.f.Digest, "err", err)
			}
		}
	})
}

// pulling notes that this download takes a part from S3 under the lease:
// the first time, the host counts as elected to pull the blob for the
// fleet (a lease won but never used to pull, after the leader finished,
// does not count).
func (d *download) pulling() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.leader || d.pulled {
		return
	}
	d.pulled = true
	d.s.m.elections.WithLabelValues("won").Inc()
	d.s.cfg.Logger.Info("elected to pull a blob from S3 for the fleet", "digest", d.f.Digest)
}

func (d *download) isLeader() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leader
}

// keepAlive refreshes the swarm entry, and the lease while held, every
// third of LeaseTTL until Close.
func (d *download) keepAlive() {
	defer close(d.stopped)
	t := time.NewTicker(d.s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.s.cfg.LeaseTTL/3)
		self := d.s.cfg.Self
		if err := d.s.coord.join(ctx, d.f.Digest, self); err != nil {
			d.s.cfg.Logger.Debug("peer source: refresh swarm entry", "digest", d.f.Digest, "err", err)
		}
		if d.isLeader() {
			held, err := d.s.coord.refresh(ctx, d.f.Digest, self)
			if err == nil && !held {
				// It lapsed (Redis was unreachable too long) and may be
				// someone else's now; ask again before the next S3 part.
				d.mu.Lock()
				d.leader = false
				d.mu.Unlock()
				d.s.cfg.Logger.Warn("peer source: lost the lease on a blob", "digest", d.f.Digest)
			}
		}
		cancel()
	}
}

// mayUseS3 reports whether this download may take a part no peer has from
// S3 now: without an election always; with one, only while this host
// holds the blob's lease (it asks for it when no one holds it). justWon
// says this call won the lease.
func (d *download) mayUseS3(ctx context.Context) (ok, justWon bool) {
	if d.s.coord == nil {
		return true, false
	}
	d.mu.Lock()
	leader := d.leader
	d.mu.Unlock()
	if leader {
		return true, false
	}
	won, holder, err := d.s.coord.acquire(ctx, d.f.Digest, d.s.cfg.Self)
	if err == nil && !won && holder != "" && d.s.avoided(holder) {
		// The holder stopped answering (or lied): do not wait for its
		// lease to lapse.
		if won, err = d.s.coord.takeOver(ctx, d.f.Digest, holder, d.s.cfg.Self); won {
			d.s.cfg.Logger.Warn("took over the S3 lease of a peer that stopped answering", "digest", d.f.Digest, "peer", holder)
		}
	}
	if err != nil {
		// Redis trouble costs S3 traffic, not a stalled download.
		d.s.cfg.Logger.Warn("peer source: election unavailable; fetching from S3", "digest", d.f.Digest, "err", err)
		return true, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if won {
		if d.leader {
			return true, false // another part of ours won it a moment ago
		}
		d.leader = true
		return true, true
	}
	if holder != d.leaseBy {
		d.leaseBy = holder
		d.peersAt = time.Time{} // ask the new leader at once
	}
	if !d.lost {
		d.lost = true
		d.s.m.elections.WithLabelValues("lost").Inc()
		d.s.cfg.Logger.Info("another host pulls this blob from S3; streaming its parts from peers", "digest", d.f.Digest, "leader", holder)
	}
	return false, false
}

// candidates returns the peers whose part maps say they hold part i now,
// fewest of our transfers first (random among equals), leaving out this
// host and peers put aside.
func (d *download) candidates(ctx context.Context, i int, listAge, mapAge time.Duration) []string {
	peers, complete := d.peerList(ctx, listAge)
	var out []string
	for _, addr := range peers {
		if d.s.avoided(addr) {
			continue
		}
		if complete[addr] {
			out = append(out, addr)
			continue
		}
		pm := d.partMap(ctx, addr, mapAge)
		if pm.ok && (pm.complete || (i < len(pm.have) && pm.have[i])) {
			out = append(out, addr)
		}
	}
	d.mu.Lock()
	load := make(map[string]int, len(out))
	for _, a := range out {
		load[a] = d.inflight[a]
	}
	d.mu.Unlock()
	rand.Shuffle(len(out), func(a, b int) { out[a], out[b] = out[b], out[a] })
	slices.SortStableFunc(out, func(a, b string) int { return load[a] - load[b] })
	return out
}

// peerList returns the peers to ask about this blob: the advertisers
// (heartbeats), the swarm and the lease holder, at most MaxPeers of them
// (complete holders first), read again when older than maxAge.
func (d *download) peerList(ctx context.Context, maxAge time.Duration) ([]string, map[string]bool) {
	d.mu.Lock()
	if time.Since(d.peersAt) < maxAge {
		defer d.mu.Unlock()
		return d.peers, d.complete
	}
	leaseBy := d.leaseBy
	d.mu.Unlock()

	self := d.s.cfg.Self
	all := map[string]bool{} // address → advertises the whole blob
	var order []string
	add := func(addr string, complete bool) {
		if addr == "" || addr == self {
			return
		}
		if c, ok := all[addr]; ok {
			all[addr] = c || complete
			return
		}
		all[addr] = complete
		order = append(order, addr)
	}
	if hs, err := d.s.cfg.Fleet.Holders(ctx, d.f.Digest); err == nil {
		for _, h := range hs {
			add(h.Addr, h.Complete)
		}
	} else {
		d.s.cfg.Logger.Debug("peer source: fleet view", "err", err)
	}
	if d.s.coord != nil {
		if ms, err := d.s.coord.members(ctx, d.f.Digest); err == nil {
			for _, m := range ms {
				add(m, false)
			}
		}
		if h, err := d.s.coord.holder(ctx, d.f.Digest); err == nil && h != "" {
			leaseBy = h
		}
		add(leaseBy, false)
	}
	var whole, partly []string
	complete := map[string]bool{}
	for _, a := range order {
		if all[a] {
			whole = append(whole, a)
			complete[a] = true
		} else {
			partly = append(partly, a)
		}
	}
	rand.Shuffle(len(whole), func(a, b int) { whole[a], whole[b] = whole[b], whole[a] })
	rand.Shuffle(len(partly), func(a, b int) { partly[a], partly[b] = partly[b], partly[a] })
	peers := append(whole, partly...)
	if len(peers) > d.s.cfg.MaxPeers {
		peers = peers[:d.s.cfg.MaxPeers]
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.peers, d.complete, d.peersAt = peers, complete, time.Now()
	return peers, complete
}

// partMap returns addr's part map, fetched again when older than maxAge.
func (d *download) partMap(ctx context.Context, addr string, maxAge time.Duration) partMapView {
	pm := d.peerMapOf(addr)
	pm.mu.Lock()
	defer pm.mu.Unlock()
	d.refreshMap(ctx, addr, pm, maxAge)
	return partMapView{ok: pm.ok, complete: pm.complete, have: pm.have}
}

// partMapView is a copy of a peerMap's answer (have is never written in
// place, only replaced).
type partMapView struct {
	ok, complete bool
	have         []bool
}

// peerMapOf returns addr's map entry, creating it.
func (d *download) peerMapOf(addr string) *peerMap {
	d.mu.Lock()
	defer d.mu.Unlock()
	pm := d.maps[addr]
	if pm == nil {
		pm = &peerMap{}
		d.maps[addr] = pm
	}
	return pm
}

// refreshMap fetches addr's part map into pm (whose lock the caller
// holds) when it is older than maxAge.
func (d *download) refreshMap(ctx context.Context, addr string, pm *peerMap, maxAge time.Duration) {
	if time.Since(pm.at) < maxAge {
		return
	}
	pm.at = time.Now()
	pm.ok = false
	req, err := d.request(ctx, addr, "/parts")
	if err != nil {
		return
	}
	resp, err := d.s.cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			d.s.putAside(addr, "error", err)
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusUnauthorized {
			d.s.putAside(addr, "error", errors.New("the peer refused the fleet token"))
		}
		return
	}
	var m PartMap
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&m); err != nil || m.Size != d.f.Size ||
		(!m.Complete && (m.PartSize != d.f.PartSize || len(m.Have) != len(d.f.Parts))) {
		return
	}
	pm.ok, pm.complete = true, m.Complete
	pm.have = make([]bool, len(m.Have))
	for j := range m.Have {
		pm.have[j] = m.Have[j] == '1'
	}
}

// request builds an authenticated GET of this blob on addr.
func (d *download) request(ctx context.Context, addr, suffix string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/blobs/"+d.f.Digest+suffix, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+d.s.cfg.Token)
	return req, nil
}

// fromPeer asks addr for the rest of part i.
func (d *download) fromPeer(ctx context.Context, addr string, i int, from int64) (io.ReadCloser, error) {
	off := int64(i)*d.f.PartSize + from
	n := d.f.PartLen(i) - from
	req, err := d.request(ctx, addr, "")
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := d.s.cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			d.s.putAside(addr, "error", err)
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusNotFound {
		// Busy, or its map moved on (a download that restarted, or was
		// installed a moment ago and is not offered again yet): not its
		// fault; look again.
		resp.Body.Close()
		d.mu.Lock()
		if pm := d.maps[addr]; pm != nil {
			pm.mu.Lock()
			pm.at = time.Time{}
			pm.mu.Unlock()
		}
		d.mu.Unlock()
		return nil, fmt.Errorf("peer %s: %s", addr, resp.Status)
	}
	want := fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, d.f.Size)
	if resp.StatusCode != http.StatusPartialContent || resp.ContentLength != n || resp.Header.Get("Content-Range") != want {
		resp.Body.Close()
		err := fmt.Errorf("peer %s answered %s, %d bytes, Content-Range %q to a request for %s", addr, resp.Status, resp.ContentLength, resp.Header.Get("Content-Range"), want)
		d.s.putAside(addr, "error", err)
		return nil, err
	}
	d.mu.Lock()
	d.providers[i] = append(d.providers[i], addr)
	d.inflight[addr]++
	d.mu.Unlock()
	b := &peerBody{d: d, addr: addr, body: resp.Body}
	b.timer = time.AfterFunc(d.s.cfg.PeerStall, b.stalled)
	return b, nil
}

// fromS3 takes the rest of part i from S3; why, when set, says why not
// from a peer (logged).
func (d *download) fromS3(ctx context.Context, i int, from int64, why string) (io.ReadCloser, error) {
	if why != "" {
		d.s.cfg.Logger.Info("fetching a part from S3", "digest", d.f.Digest, "part", i, "why", why)
	}
	off := int64(i)*d.f.PartSize + from
	body, err := d.s.cfg.Origin.GetRange(ctx, d.f.Bucket, d.f.Key, d.f.ETag, off, d.f.PartLen(i)-from)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.providers[i] = append(d.providers[i], "s3")
	d.mu.Unlock()
	return &countingBody{ReadCloser: body, c: d.s.m.bytes.WithLabelValues("s3")}, nil
}

// peerBody is a transfer from a peer: it counts bytes, and puts the peer
// aside when the transfer breaks or stalls for PeerStall.
type peerBody struct {
	d     *download
	addr  string
	body  io.ReadCloser
	timer *time.Timer

	mu     sync.Mutex
	stall  bool
	closed bool
}

func (b *peerBody) stalled() {
	b.mu.Lock()
	b.stall = true
	b.mu.Unlock()
	b.body.Close() // unblocks Read
}

func (b *peerBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if n > 0 {
		b.timer.Reset(b.d.s.cfg.PeerStall)
		b.d.s.m.bytes.WithLabelValues("peer").Add(float64(n))
	}
	if err != nil && !errors.Is(err, io.EOF) {
		b.mu.Lock()
		stall, closed := b.stall, b.closed
		b.mu.Unlock()
		switch {
		case closed:
		case stall:
			err = fmt.Errorf("peer %s sent nothing for %v: %w", b.addr, b.d.s.cfg.PeerStall, err)
			b.d.s.putAside(b.addr, "slow", err)
		default:
			err = fmt.Errorf("peer %s: %w", b.addr, err)
			b.d.s.putAside(b.addr, "error", err)
		}
	}
	return n, err
}

func (b *peerBody) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.timer.Stop()
	b.d.mu.Lock()
	b.d.inflight[b.addr]--
	b.d.mu.Unlock()
	return b.body.Close()
}

// countingBody counts the bytes read through it.
type countingBody struct {
	io.ReadCloser
	c prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.c.Add(float64(n))
	}
	return n, err
}

// Avoided lists the peers put aside now, for tests and status pages.
func (s *Source) Avoided() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for a, until := range s.avoid {
		if time.Now().Before(until) {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}

// String names the source in logs.
func (s *Source) String() string {
	return "peers of " + strconv.Quote(s.cfg.Self) + " in front of S3"
}
