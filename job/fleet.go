package job

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Heartbeat is what each worker process publishes to Redis every few
// seconds, with a TTL: the scheduler's view of the fleet is the set of
// unexpired heartbeats.
type Heartbeat struct {
	Host        string `json:"host"`
	PID         int    `json:"pid"`
	Backend     string `json:"backend"`
	DeviceClass string `json:"device_class"`
	// Engines are the model engines the process's backend runs ("refgen",
	// "sdcpp", …); it takes only models of these engines.
	Engines     []string  `json:"engines,omitempty"`
	Device      string    `json:"device,omitempty"`
	Concurrency int       `json:"concurrency"`
	InFlight    int       `json:"in_flight"`
	StartedAt   time.Time `json:"started_at"`
	At          time.Time `json:"at"`
	// Blobs are the model files on this host's disk (the cache is shared by
	// every process on the host, so processes of one host report the same).
	Blobs []BlobState `json:"blobs"`
	// Models are the models this process has acquired, most recent first.
	Models []ModelState `json:"models,omitempty"`
	// CacheUsed and CacheBudget are the bytes the cache's budget counts
	// (blobs/ and quarantine/) and its cap (0: none).
	CacheUsed   int64 `json:"cache_used"`
	CacheBudget int64 `json:"cache_budget"`
	// Peer is what this process's blob server offers other hosts (the
	// fleet-wide cache, package peer); nil when it serves none.
	Peer *PeerState `json:"peer,omitempty"`
}

// PeerState is what a worker process's blob server offers other hosts.
type PeerState struct {
	// Addr is where peers reach the blob server ("host:port").
	Addr string `json:"addr"`
	// Blobs are the digests of complete blobs it serves.
	Blobs []string `json:"blobs"`
	// Partials are downloads in progress whose verified parts it serves.
	Partials []PeerPartial `json:"partials,omitempty"`
}

// PeerPartial is a download in progress as a heartbeat advertises it.
type PeerPartial struct {
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	PartSize int64  `json:"part_size"`
	Parts    int    `json:"parts"`
	Have     int    `json:"have"`
}

// BlobState is one cached file as a heartbeat reports it.
type BlobState struct {
	Digest        string    `json:"digest"`
	Size          int64     `json:"size"`
	ResidentBytes int64     `json:"resident_bytes"`
	Resident      float64   `json:"resident"` // fraction in RAM, 0..1
	InUse         bool      `json:"in_use"`   // mapped by some process now
	LastUsed      time.Time `json:"last_used,omitzero"`
}

// ModelState is a model a process loaded, with its last load timings (ms).
type ModelState struct {
	Ref string `json:"ref"`
	// Kind is "lora" for a LoRA a job applied; empty for a model.
	Kind     string             `json:"kind,omitempty"`
	Digests  []string           `json:"digests"`
	Mapped   bool               `json:"mapped"`    // held by a job of this process now
	OnDevice bool               `json:"on_device"` // resident in accelerator memory
	LastUsed time.Time          `json:"last_used"`
	Timings  map[string]float64 `json:"timings,omitempty"`
	// ColdStartMS is what the process's last acquire of the model that
	// found it off disk cost (wait + fetch + verify + map, ms): the
	// measured cold start the autoscaler weighs. 0 until there was one.
	ColdStartMS float64 `json:"cold_start_ms,omitempty"`
	// JobMS is the run time of the process's last job on the model
	// (generate + encode + upload, ms).
	JobMS float64 `json:"job_ms,omitempty"`
}

// Redis keys of the fleet view.
const (
	heartbeatPrefix = "genfleet:hb:"
	// heartbeatIndex is a sorted set of heartbeat keys, each scored with
	// the unix ms at which it expires, so that listing the fleet reads the
	// live processes' keys and never scans the keyspace (which holds every
	// job record).
	heartbeatIndex = "genfleet:hbindex"
	// heartbeatIndexSlack is how long past its expiry an index entry is
	// kept: readers whose clocks run behind a worker's still find its key
	// (the key's own TTL decides whether it is alive).
	heartbeatIndexSlack = time.Minute
	// HostsKey is a sorted set: host id → unix ms of its latest heartbeat.
	// The scheduler's reaper finds hosts whose heartbeats stopped here.
	HostsKey = "genfleet:hosts"
)

func heartbeatKey(host string, pid int) string {
	return heartbeatPrefix + host + ":" + strconv.Itoa(pid)
}

// Fleet reads and writes heartbeats.
type Fleet struct {
	rdb redis.UniversalClient
}

// NewFleet returns a Fleet on rdb.
func NewFleet(rdb redis.UniversalClient) *Fleet { return &Fleet{rdb: rdb} }

// Beat publishes hb with the given TTL.
func (f *Fleet) Beat(ctx context.Context, hb *Heartbeat, ttl time.Duration) error {
	b, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	pipe := f.rdb.TxPipeline()
	key := heartbeatKey(hb.Host, hb.PID)
	pipe.Set(ctx, key, b, ttl)
	pipe.ZAdd(ctx, heartbeatIndex, redis.Z{Score: float64(hb.At.Add(ttl).UnixMilli()), Member: key})
	pipe.ZAdd(ctx, HostsKey, redis.Z{Score: float64(hb.At.UnixMilli()), Member: hb.Host})
	_, err = pipe.Exec(ctx)
	return err
}

// Leave removes a process's heartbeat at clean shutdown.
func (f *Fleet) Leave(ctx context.Context, host string, pid int) error {
	key := heartbeatKey(host, pid)
	pipe := f.rdb.TxPipeline()
	pipe.Del(ctx, key)
	pipe.ZRem(ctx, heartbeatIndex, key)
	_, err := pipe.Exec(ctx)
	return err
}

// Heartbeats returns every unexpired heartbeat. It reads the heartbeat
// index, dropping entries long expired, then the keys it names.
func (f *Fleet) Heartbeats(ctx context.Context) ([]Heartbeat, error) {
	stale := strconv.FormatInt(time.Now().Add(-heartbeatIndexSlack).UnixMilli(), 10)
	pipe := f.rdb.Pipeline()
	pipe.ZRemRangeByScore(ctx, heartbeatIndex, "-inf", "("+stale)
	listed := pipe.ZRange(ctx, heartbeatIndex, 0, -1)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("list heartbeats: %w", err)
	}
	keys := listed.Val()
	if len(keys) == 0 {
		return nil, nil
	}
	vals, err := f.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("read heartbeats: %w", err)
	}
	out := make([]Heartbeat, 0, len(vals))
	for _, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // expired (or left) since its index entry was written
		}
		var hb Heartbeat
		if err := json.Unmarshal([]byte(s), &hb); err != nil {
			continue // a foreign or corrupt key must not break the view
		}
		out = append(out, hb)
	}
	return out, nil
}

// SilentHosts returns hosts whose latest heartbeat is older than cutoff.
func (f *Fleet) SilentHosts(ctx context.Context, cutoff time.Time) ([]string, error) {
	return f.rdb.ZRangeByScore(ctx, HostsKey, &redis.ZRangeBy{Min: "-inf", Max: "(" + strconv.FormatInt(cutoff.UnixMilli(), 10)}).Result()
}

// ForgetHost drops host from HostsKey if its latest heartbeat is still the
// one seen at or before cutoff (a host that came back keeps its entry).
func (f *Fleet) ForgetHost(ctx context.Context, host string, cutoff time.Time) error {
	const script = `local s = redis.call("ZSCORE", KEYS[1], ARGV[1])
if s and tonumber(s) < tonumber(ARGV[2]) then return redis.call("ZREM", KEYS[1], ARGV[1]) end
return 0`
	return f.rdb.Eval(ctx, script, []string{HostsKey}, host, cutoff.UnixMilli()).Err()
}
