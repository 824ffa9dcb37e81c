package job

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/testenv"
)

func TestRequestDigest(t *testing.T) {
	decode := func(body string) *Request {
		t.Helper()
		var r Request
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatal(err)
		}
		return &r
	}
	a := RequestDigest(decode(`{"model":"demo","prompt":"a fox","seed":7}`))
	for _, same := range []string{
		`{"seed":7,"prompt":"a fox","model":"demo"}`,
		`{ "model": "demo", "prompt": "a fox", "seed": 7, "width": 512, "steps": 20, "guidance": 7.5, "output_format": "png" }`,
		`{"model":"demo","prompt":"a \u0066ox","seed":7}`,
	} {
		if got := RequestDigest(decode(same)); got != a {
			t.Errorf("%s: digest %s, want %s (the same request)", same, got, a)
		}
	}
	for _, other := range []string{
		`{"model":"demo","prompt":"a fox","seed":8}`,
		`{"model":"demo","prompt":"a fox ","seed":7}`,
		`{"model":"demo","prompt":"a fox","seed":7,"guidance":0}`,
		`{"model":"demo","prompt":"a fox","seed":7,"negative_prompt":"x"}`,
	} {
		if got := RequestDigest(decode(other)); got == a {
			t.Errorf("%s: same digest as another request", other)
		}
	}
	if !strings.HasPrefix(a, "sha256:") || len(a) != len("sha256:")+64 {
		t.Errorf("digest %q is not sha256:<hex>", a)
	}
}

// An Idempotency-Key keeps the digest of the request it was first used
// with; a binding from before digests matches any request.
func TestClaimIdempotencyKey(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t).Addr})
	defer rdb.Close()
	s := NewStore(rdb)
	first := Idempotency{ID: "job-1", Digest: "sha256:aa"}
	got, err := s.ClaimIdempotencyKey(ctx, "k", first, time.Minute)
	if err != nil || got != first {
		t.Fatalf("first claim: %+v, %v", got, err)
	}
	got, err = s.ClaimIdempotencyKey(ctx, "k", Idempotency{ID: "job-2", Digest: "sha256:bb"}, time.Minute)
	if err != nil || got != first || got.Matches("sha256:bb") || !got.Matches("sha256:aa") {
		t.Fatalf("second claim: %+v, %v; want the first binding, matching only its digest", got, err)
	}
	if err := s.ReleaseIdempotencyKey(ctx, "k", Idempotency{ID: "job-2", Digest: "sha256:bb"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ClaimIdempotencyKey(ctx, "k", Idempotency{ID: "job-3"}, time.Minute); got != first {
		t.Fatalf("a release by another binding removed the key: %+v", got)
	}
	if err := s.ReleaseIdempotencyKey(ctx, "k", first); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ClaimIdempotencyKey(ctx, "k", Idempotency{ID: "job-4", Digest: "sha256:cc"}, time.Minute); got.ID != "job-4" {
		t.Fatalf("after release: %+v, want the new binding", got)
	}
	// A key written before digests were kept: just the id.
	if err := rdb.Set(ctx, idemKey("old"), "job-5", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	got, err = s.ClaimIdempotencyKey(ctx, "old", Idempotency{ID: "job-6", Digest: "sha256:dd"}, time.Minute)
	if err != nil || got.ID != "job-5" || !got.Matches("sha256:dd") {
		t.Fatalf("legacy binding: %+v, %v; want job-5, matching any request", got, err)
	}
}
