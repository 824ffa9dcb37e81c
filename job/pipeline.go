package job

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// QueueClaimIdempotencyKey queues what ClaimIdempotencyKey does on pipe,
// for a caller that claims many keys in one round trip (a batch submit).
// The returned function, called once the pipeline has run, gives the
// binding the key has (want itself when the claim won).
func (s *Store) QueueClaimIdempotencyKey(ctx context.Context, pipe redis.Pipeliner, key string, want Idempotency, ttl time.Duration) func() (Idempotency, error) {
	// EVAL, not EVALSHA: in a pipeline a NOSCRIPT reply could only be
	// handled by a second round trip; Redis caches the script either way.
	cmd := claimIdemScript.Eval(ctx, pipe, []string{idemKey(key)}, want.value(), ttl.Milliseconds())
	return func() (Idempotency, error) {
		v, err := cmd.Text()
		if errors.Is(err, redis.Nil) {
			return want, nil
		}
		if err != nil {
			return Idempotency{}, fmt.Errorf("claim Idempotency-Key: %w", err)
		}
		return parseIdempotency(v), nil
	}
}

// QueueReleaseIdempotencyKey queues what ReleaseIdempotencyKey does on
// pipe.
func (s *Store) QueueReleaseIdempotencyKey(ctx context.Context, pipe redis.Pipeliner, key string, b Idempotency) {
	releaseIdemScript.Eval(ctx, pipe, []string{idemKey(key)}, b.value())
}

// releaseIdemScript unbinds KEYS[1] if it is still bound to ARGV[1].
var releaseIdemScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
