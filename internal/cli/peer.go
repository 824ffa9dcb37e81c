package cli

import (
	"fmt"
	"time"

	"github.com/genfleet/genfleet/peer"
)

// PeerFlags configure a worker's part in the fleet-wide model cache
// (package peer, docs/fleet.md).
type PeerFlags struct {
	token     *string
	listen    *string
	advertise *string
	bandwidth *string
	wait      *time.Duration
}

// AddPeerFlags adds the fleet-wide cache flags to f.
func AddPeerFlags(f Flags) *PeerFlags {
	return &PeerFlags{
		token:     f.EnvString("fleet-token", "GENFLEET_FLEET_TOKEN", "", "token shared by the fleet's workers (at least 16 characters): with it, models with part digests are fetched from peers first; the blob server (--peer-listen) requires it of every peer. Empty: S3 only. Prefer the environment: flags show in ps"),
		listen:    f.EnvString("peer-listen", "GENFLEET_PEER_LISTEN", "", "address of the blob server that serves this host's models to its peers, e.g. :9092; empty: serve none (and take no part in electing the host that pulls a model from S3)"),
		advertise: f.EnvString("peer-advertise", "GENFLEET_PEER_ADVERTISE", "", "host:port peers reach the blob server at (heartbeats advertise it); default: --peer-listen's address, or this host's first non-loopback IP with its port"),
		bandwidth: f.EnvString("peer-bandwidth", "GENFLEET_PEER_BANDWIDTH", "250MB", "bytes per second the blob server may send to all peers together, e.g. 250MB, 1GiB; 0: no cap"),
		wait:      f.EnvDuration("peer-wait", "GENFLEET_PEER_WAIT", 10*time.Second, "how long a part that no peer has yet is waited for (while another host pulls it from S3) before it is fetched from S3; keep it below --fetch-stall-timeout"),
	}
}

// Config is the peer.HostConfig the flags describe, checked (Origin,
// Redis, Metrics and Logger are the caller's to set).
func (pf *PeerFlags) Config() (peer.HostConfig, error) {
	cfg := peer.HostConfig{Token: *pf.token, Listen: *pf.listen, Advertise: *pf.advertise, PartWait: *pf.wait}
	if cfg.Token == "" {
		return cfg, cfg.Check()
	}
	var err error
	if cfg.Bandwidth, err = pf.bytesPerSecond(); err != nil {
		return cfg, err
	}
	return cfg, cfg.Check()
}

// bytesPerSecond is --peer-bandwidth for peer.HostConfig: -1 for no cap.
func (pf *PeerFlags) bytesPerSecond() (float64, error) {
	if *pf.bandwidth == "0" {
		return -1, nil
	}
	n, err := ParseSize(*pf.bandwidth)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--peer-bandwidth %q: want bytes per second, e.g. 250MB, or 0 for no cap", *pf.bandwidth)
	}
	return float64(n), nil
}
