package job

import (
	"crypto/sha256"
	"encoding/hex"
)

// RequestDigest is "sha256:<hex>" of the request's canonical JSON: every
// field in a fixed order, the defaults filled in as decoding fills them.
// Two bodies that ask for the same job (fields in another order, a
// default written out or left away, other spacing) have the same digest;
// any difference in what is asked changes it. The scheduler keeps it with
// an Idempotency-Key, and a worker compares it when a job's id comes back
// after the job ended.
func RequestDigest(r *Request) string {
	sum := sha256.Sum256(appendRequest(make([]byte, 0, 256), r))
	return "sha256:" + hex.EncodeToString(sum[:])
}
