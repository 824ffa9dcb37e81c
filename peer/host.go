package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// HostConfig configures a worker process's part in the fleet-wide cache:
// the model cache's source and, with Listen, the blob server. Errors about
// it name the settings by the worker's flags (--fleet-token,
// --peer-listen, …), as users set them.
type HostConfig struct {
	// Origin is S3: the cache's source, behind peers when there is a
	// Token.
	Origin modelcache.Source
	// Token is the fleet token, shared by the fleet's workers, at least
	// MinTokenLen characters. Empty: no peers; the source is Origin and
	// nothing is served.
	Token string
	// Listen is the blob server's listen address, e.g. ":9092". Empty:
	// serve none, and take no part in electing the host that pulls a
	// model from S3.
	Listen string
	// Advertise is the host:port peers reach the blob server at (what
	// heartbeats advertise). Default: the bound address when it names a
	// host, else this host's first non-loopback IP with the bound port,
	// else its hostname.
	Advertise string
	// Bandwidth caps the bytes per second the blob server sends to all
	// peers together. Default DefaultBandwidth; negative means no cap.
	Bandwidth float64
	// PartWait is how long a part no peer has yet is waited for before it
	// is fetched from S3 (SourceConfig.PartWait). Must be positive with a
	// Token.
	PartWait time.Duration
	// Redis opens the client of the elections and of the heartbeats that
	// say who holds what; it is called once, when there is a Token, and
	// the Host closes what it returns.
	Redis func() (redis.UniversalClient, error)
	// Metrics, when set, receives the source's and the server's collectors.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Check refuses settings that cannot work, before anything is opened: a
// blob server without a token, a short token, a PartWait that is not
// positive, an Advertise that is not host:port.
func (c *HostConfig) Check() error {
	if c.Token == "" {
		if c.Listen != "" {
			return errors.New("--peer-listen needs a fleet token (GENFLEET_FLEET_TOKEN, shared by the fleet's workers): the blob server serves no one without it")
		}
		return nil
	}
	if len(c.Token) < MinTokenLen {
		return fmt.Errorf("GENFLEET_FLEET_TOKEN (--fleet-token) must be at least %d characters; got %d", MinTokenLen, len(c.Token))
	}
	if c.PartWait <= 0 {
		return fmt.Errorf("--peer-wait %v: want a duration > 0", c.PartWait)
	}
	if a := c.Advertise; a != "" {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			return fmt.Errorf("--peer-advertise %q: want host:port", a)
		}
	}
	return nil
}

// Host is a worker process's part in the fleet-wide cache, made by
// NewHost: the source its cache reads through and, with a listener, the
// blob server it runs (Serve) and advertises (Advertise).
type Host struct {
	cfg HostConfig
	src modelcache.Source
	// addr is what heartbeats advertise; "" without a blob server.
	addr string
	ln   net.Listener
	rdb  redis.UniversalClient
}

// NewHost checks cfg, binds the blob server's listener (with Listen) and
// makes the source: a Source in front of Origin, or Origin itself without
// a Token. Close releases what it opened.
func NewHost(cfg HostConfig) (*Host, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	defaults.Zero(&cfg.Logger, slog.Default())
	h := &Host{cfg: cfg, src: cfg.Origin}
	if cfg.Token == "" {
		return h, nil
	}
	if cfg.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("--peer-listen %s: %w", cfg.Listen, err)
		}
		h.ln = ln
		if h.addr, err = advertiseAddr(cfg.Advertise, ln.Addr()); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if cfg.Redis == nil {
		h.Close()
		return nil, errors.New("peers: no Redis")
	}
	rdb, err := cfg.Redis()
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("peers: %w", err)
	}
	h.rdb = rdb
	src, err := NewSource(SourceConfig{
		Origin: cfg.Origin, Fleet: NewHeartbeatFleet(rdb), Redis: rdb, Token: cfg.Token, Self: h.addr,
		PartWait: cfg.PartWait, Metrics: cfg.Metrics, Logger: cfg.Logger,
	})
	if err != nil {
		h.Close()
		return nil, err
	}
	h.src = src
	return h, nil
}

// Source is the model cache's source: peers in front of S3, or S3.
func (h *Host) Source() modelcache.Source { return h.src }

// advertiseAddr is the address peers reach a blob server listening on
// bound at: given (checked by Check), else bound's own when it names a
// host, else this host's first non-loopback IP with bound's port.
func advertiseAddr(given string, bound net.Addr) (string, error) {
	if given != "" {
		return given, nil
	}
	host, port, _ := net.SplitHostPort(bound.String())
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return bound.String(), nil
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.IsGlobalUnicast() {
				return net.JoinHostPort(ipn.IP.String(), port), nil
			}
		}
	}
	if h, err := os.Hostname(); err == nil && !strings.Contains(h, " ") {
		return net.JoinHostPort(h, port), nil
	}
	return "", errors.New("cannot tell the address peers reach this host at: set --peer-advertise (GENFLEET_PEER_ADVERTISE)")
}

// Serve runs the blob server over cache in the background until ctx ends,
// then shuts it down (and closes the listener); without a listener it does
// nothing.
func (h *Host) Serve(ctx context.Context, cache *modelcache.Cache) error {
	if h.ln == nil {
		return nil
	}
	log := h.cfg.Logger
	srv, err := NewServer(ServerConfig{Cache: cache, Token: h.cfg.Token, Bandwidth: h.cfg.Bandwidth, Metrics: h.cfg.Metrics, Logger: log})
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 90 * time.Second}
	go func() {
		if err := hs.Serve(h.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("blob server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	bw := h.cfg.Bandwidth
	if bw == 0 {
		bw = DefaultBandwidth
	}
	log.Info("blob server for peers listening", "addr", h.ln.Addr().String(), "advertised", h.addr, "bandwidth_bytes_per_s", bw)
	return nil
}

// Advertise returns the heartbeat's Peer hook for cache: what the blob
// server offers, or nil without one.
func (h *Host) Advertise(cache *modelcache.Cache) func() *job.PeerState {
	if h.addr == "" {
		return nil
	}
	return func() *job.PeerState {
		st, err := State(cache, h.addr)
		if err != nil {
			h.cfg.Logger.Warn("list cache for peers", "err", err)
			return nil
		}
		return st
	}
}

// Close releases what NewHost opened: the Redis client and, unless Serve
// took it over, the listener.
func (h *Host) Close() {
	if h.rdb != nil {
		h.rdb.Close()
	}
	if h.ln != nil {
		h.ln.Close()
	}
}
