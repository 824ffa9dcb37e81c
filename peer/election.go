package peer

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The election and the swarm live in Redis, one pair of keys per blob:
//
//	genfleet:peer:lease:<digest>  the address of the one host pulling the blob
//	                              from S3 for the fleet (SET NX PX, refreshed
//	                              by its holder every TTL/3, deleted when its
//	                              download ends; a dead holder's lapses)
//	genfleet:peer:swarm:<digest>  sorted set: address of each host downloading
//	                              the blob → unix ms until which it counts (two
//	                              TTLs after its last refresh: a host that just
//	                              finished is found there until its heartbeat
//	                              lists the blob)
//
// The lease makes one host the fleet's S3 fetcher of a blob no peer holds;
// the swarm tells the others, before any heartbeat does, which hosts hold
// verified parts of it. Both are hints: losing Redis costs S3 traffic, never
// correctness (parts are verified wherever they come from).
const (
	leasePrefix = "genfleet:peer:lease:"
	swarmPrefix = "genfleet:peer:swarm:"
)

// coordinator reads and writes a blob's lease and swarm.
type coordinator struct {
	rdb redis.UniversalClient
	ttl time.Duration
}

// Scripts that change the lease only if this host holds it.
var (
	refreshScript  = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	releaseScript  = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
	takeOverScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) return 1 end return 0`)
)

// takeOver gives digest's lease to self if dead still holds it: for a
// holder that stopped answering, whose lease would otherwise keep every
// other host waiting until it lapses.
func (c *coordinator) takeOver(ctx context.Context, digest, dead, self string) (bool, error) {
	n, err := takeOverScript.Run(ctx, c.rdb, []string{leasePrefix + digest}, dead, self, c.ttl.Milliseconds()).Int()
	return n == 1, err
}

// acquire asks for digest's lease for self. won is true when self holds it
// now (also when an earlier incarnation of self took it: same address);
// else holder is who does ("" when it lapsed in between).
func (c *coordinator) acquire(ctx context.Context, digest, self string) (won bool, holder string, err error) {
	ok, err := c.rdb.SetNX(ctx, leasePrefix+digest, self, c.ttl).Result()
	if err != nil {
		return false, "", err
	}
	if ok {
		return true, self, nil
	}
	holder, err = c.rdb.Get(ctx, leasePrefix+digest).Result()
	if errors.Is(err, redis.Nil) {
		return false, "", nil
	}
	if err != nil {
		return false, "", err
	}
	if holder == self {
		return true, self, c.rdb.PExpire(ctx, leasePrefix+digest, c.ttl).Err()
	}
	return false, holder, nil
}

// holder returns who holds digest's lease, "" for no one.
func (c *coordinator) holder(ctx context.Context, digest string) (string, error) {
	h, err := c.rdb.Get(ctx, leasePrefix+digest).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return h, err
}

// refresh extends self's lease; false means self no longer holds it.
func (c *coordinator) refresh(ctx context.Context, digest, self string) (bool, error) {
	n, err := refreshScript.Run(ctx, c.rdb, []string{leasePrefix + digest}, self, c.ttl.Milliseconds()).Int()
	return n == 1, err
}

// release gives up self's lease, if self holds it.
func (c *coordinator) release(ctx context.Context, digest, self string) error {
	return releaseScript.Run(ctx, c.rdb, []string{leasePrefix + digest}, self).Err()
}

// join adds (or keeps) self in digest's swarm for two TTLs, and drops
// members whose time ran out.
func (c *coordinator) join(ctx context.Context, digest, self string) error {
	now := time.Now()
	key := swarmPrefix + digest
	pipe := c.rdb.TxPipeline()
	pipe.ZAdd(ctx, key, redis.Z{Score: float64(now.Add(2 * c.ttl).UnixMilli()), Member: self})
	pipe.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(now.UnixMilli(), 10))
	pipe.PExpire(ctx, key, 4*c.ttl)
	_, err := pipe.Exec(ctx)
	return err
}

// members lists digest's swarm.
func (c *coordinator) members(ctx context.Context, digest string) ([]string, error) {
	return c.rdb.ZRangeByScore(ctx, swarmPrefix+digest, &redis.ZRangeBy{
		Min: strconv.FormatInt(time.Now().UnixMilli(), 10), Max: "+inf"}).Result()
}
