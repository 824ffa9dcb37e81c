package peer

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// Fleet tells a Source which peers may hold a blob.
type Fleet interface {
	// Holders returns the blob servers that advertise digest, complete or
	// partly downloaded.
	Holders(ctx context.Context, digest string) ([]Holder, error)
}

// Holder is a peer that advertises a blob.
type Holder struct {
	Addr     string
	Complete bool
}

// HeartbeatFleet is the Fleet of the worker heartbeats in Redis
// (job.Heartbeat.Peer). It reads them at most once per TTL.
type HeartbeatFleet struct {
	fleet *job.Fleet
	ttl   time.Duration

	mu  sync.Mutex
	at  time.Time
	hbs []job.Heartbeat
}

// NewHeartbeatFleet returns the Fleet of the heartbeats in rdb, read at
// most once a second.
func NewHeartbeatFleet(rdb redis.UniversalClient) *HeartbeatFleet {
	return &HeartbeatFleet{fleet: job.NewFleet(rdb), ttl: time.Second}
}

// Holders implements Fleet.
func (f *HeartbeatFleet) Holders(ctx context.Context, digest string) ([]Holder, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.at) >= f.ttl {
		hbs, err := f.fleet.Heartbeats(ctx)
		if err != nil {
			return nil, err
		}
		f.at, f.hbs = time.Now(), hbs
	}
	var out []Holder
	for _, hb := range f.hbs {
		p := hb.Peer
		if p == nil || p.Addr == "" {
			continue
		}
		switch {
		case slices.Contains(p.Blobs, digest):
			out = append(out, Holder{Addr: p.Addr, Complete: true})
		case slices.ContainsFunc(p.Partials, func(pp job.PeerPartial) bool { return pp.Digest == digest }):
			out = append(out, Holder{Addr: p.Addr})
		}
	}
	return out, nil
}

// State is what a heartbeat advertises for the blob server at addr over
// cache: its complete blobs known intact and its downloads with verified
// parts (modelcache.PeerInventory).
func State(cache *modelcache.Cache, addr string) (*job.PeerState, error) {
	inv, err := cache.PeerInventory()
	if err != nil {
		return nil, err
	}
	st := &job.PeerState{Addr: addr, Blobs: inv.Blobs}
	if st.Blobs == nil {
		st.Blobs = []string{}
	}
	for _, p := range inv.Partials {
		st.Partials = append(st.Partials, job.PeerPartial{Digest: p.Digest, Size: p.Size, PartSize: p.PartSize, Parts: p.Parts, Have: p.Have})
	}
	return st, nil
}
