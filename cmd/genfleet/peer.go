package main

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

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/peer"
)

// peerFlags configure a worker's part in the fleet-wide model cache
// (package peer, docs/fleet.md).
type peerFlags struct {
	token     *string
	listen    *string
	advertise *string
	bandwidth *string
	wait      *time.Duration
}

func addPeerFlags(f flags) *peerFlags {
	return &peerFlags{
		token:     f.EnvString("fleet-token", "GENFLEET_FLEET_TOKEN", "", "token shared by the fleet's workers (at least 16 characters): with it, models with part digests are fetched from peers first; the blob server (--peer-listen) requires it of every peer. Empty: S3 only. Prefer the environment: flags show in ps"),
		listen:    f.EnvString("peer-listen", "GENFLEET_PEER_LISTEN", "", "address of the blob server that serves this host's models to its peers, e.g. :9092; empty: serve none (and take no part in electing the host that pulls a model from S3)"),
		advertise: f.EnvString("peer-advertise", "GENFLEET_PEER_ADVERTISE", "", "host:port peers reach the blob server at (heartbeats advertise it); default: --peer-listen's address, or this host's first non-loopback IP with its port"),
		bandwidth: f.EnvString("peer-bandwidth", "GENFLEET_PEER_BANDWIDTH", "250MB", "bytes per second the blob server may send to all peers together, e.g. 250MB, 1GiB; 0: no cap"),
		wait:      f.EnvDuration("peer-wait", "GENFLEET_PEER_WAIT", 10*time.Second, "how long a part that no peer has yet is waited for (while another host pulls it from S3) before it is fetched from S3; keep it below --fetch-stall-timeout"),
	}
}

// peerSetup is a worker process's part in the fleet-wide cache: the
// cache's source and, with --peer-listen, the blob server's listener.
type peerSetup struct {
	// src is the model cache's source: peers in front of S3, or S3.
	src modelcache.Source
	// addr is what heartbeats advertise; "" without a blob server.
	addr  string
	ln    net.Listener
	token string
	bw    float64
	rdb   redis.UniversalClient
}

// check refuses bad peer settings before the worker connects to anything.
func (pf *peerFlags) check() error {
	token := *pf.token
	if token == "" {
		if *pf.listen != "" {
			return errors.New("--peer-listen needs a fleet token (GENFLEET_FLEET_TOKEN, shared by the fleet's workers): the blob server serves no one without it")
		}
		return nil
	}
	if len(token) < peer.MinTokenLen {
		return fmt.Errorf("GENFLEET_FLEET_TOKEN (--fleet-token) must be at least %d characters; got %d", peer.MinTokenLen, len(token))
	}
	if _, err := pf.bytesPerSecond(); err != nil {
		return err
	}
	if *pf.wait <= 0 {
		return fmt.Errorf("--peer-wait %v: want a duration > 0", *pf.wait)
	}
	if a := *pf.advertise; a != "" {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			return fmt.Errorf("--peer-advertise %q: want host:port", a)
		}
	}
	return nil
}

// bytesPerSecond is --peer-bandwidth for peer.ServerConfig: -1 for no cap.
func (pf *peerFlags) bytesPerSecond() (float64, error) {
	if *pf.bandwidth == "0" {
		return -1, nil
	}
	n, err := parseSize(*pf.bandwidth)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--peer-bandwidth %q: want bytes per second, e.g. 250MB, or 0 for no cap", *pf.bandwidth)
	}
	return float64(n), nil
}

// setup opens the listener and the peer source; call check first. Without
// a fleet token the source is origin (S3) itself.
func (pf *peerFlags) setup(origin modelcache.Source, redisOpt asynq.RedisConnOpt, reg prometheus.Registerer, log *slog.Logger) (*peerSetup, error) {
	token := *pf.token
	if token == "" {
		return &peerSetup{src: origin}, nil
	}
	bw, err := pf.bytesPerSecond()
	if err != nil {
		return nil, err
	}
	ps := &peerSetup{token: token, bw: bw}
	if *pf.listen != "" {
		ln, err := net.Listen("tcp", *pf.listen)
		if err != nil {
			return nil, fmt.Errorf("--peer-listen %s: %w", *pf.listen, err)
		}
		ps.ln = ln
		if ps.addr, err = advertiseAddr(*pf.advertise, ln.Addr()); err != nil {
			ln.Close()
			return nil, err
		}
	}
	rdb, ok := redisOpt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		ps.close()
		return nil, errors.New("peers: unsupported Redis connection option")
	}
	ps.rdb = rdb
	src, err := peer.NewSource(peer.SourceConfig{
		Origin: origin, Fleet: peer.NewHeartbeatFleet(rdb), Redis: rdb, Token: token, Self: ps.addr,
		PartWait: *pf.wait, Metrics: reg, Logger: log,
	})
	if err != nil {
		ps.close()
		return nil, err
	}
	ps.src = src
	return ps, nil
}

// advertiseAddr is the address peers reach a blob server listening on
// bound at: given (checked by check), else bound's own when it names a
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

// serve runs the blob server over cache until ctx ends; without
// --peer-listen it does nothing.
func (ps *peerSetup) serve(ctx context.Context, cache *modelcache.Cache, reg prometheus.Registerer, log *slog.Logger) error {
	if ps.ln == nil {
		return nil
	}
	srv, err := peer.NewServer(peer.ServerConfig{Cache: cache, Token: ps.token, Bandwidth: ps.bw, Metrics: reg, Logger: log})
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 90 * time.Second}
	go func() {
		if err := serveHTTP(ctx, hs, ps.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("blob server stopped", "err", err)
		}
	}()
	log.Info("blob server for peers listening", "addr", ps.ln.Addr().String(), "advertised", ps.addr, "bandwidth_bytes_per_s", ps.bw)
	return nil
}

// advertise returns the heartbeat's Peer hook for cache: what the blob
// server offers, or nil without one.
func (ps *peerSetup) advertise(cache *modelcache.Cache, log *slog.Logger) func() *job.PeerState {
	if ps.addr == "" {
		return nil
	}
	return func() *job.PeerState {
		st, err := peer.State(cache, ps.addr)
		if err != nil {
			log.Warn("list cache for peers", "err", err)
			return nil
		}
		return st
	}
}

// close releases what setup opened (the listener is closed by serve's
// shutdown once serving).
func (ps *peerSetup) close() {
	if ps.rdb != nil {
		ps.rdb.Close()
	}
	if ps.ln != nil {
		ps.ln.Close()
	}
}
