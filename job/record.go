package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Status is a job's state as the API reports it.
type Status string

const (
	StatusQueued    Status = "queued"
	StatusRunning   Status = "running"
	StatusSucceeded Status = "succeeded"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// Terminal reports whether s is a final state.
func (s Status) Terminal() bool {
	return s == StatusSucceeded || s == StatusFailed || s == StatusCancelled
}

// Progress is step i of n of a running job.
type Progress struct {
	Step  int `json:"step"`
	Steps int `json:"steps"`
}

// Output is where a finished job's image is.
type Output struct {
	Bucket      string `json:"bucket"`
	Key         string `json:"key"`
	URL         string `json:"url"` // s3://bucket/key
	ContentType string `json:"content_type"`
	Bytes       int64  `json:"bytes"`
	SHA256      string `json:"sha256"`
	ModelDigest string `json:"model_digest"`
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	// CacheHit says the model's blob was already on this host's disk
	// (possibly fetched by another process while this one waited).
	CacheHit bool `json:"cache_hit"`
}

// WorkerInfo says which process ran a job.
type WorkerInfo struct {
	Host    string `json:"host"`
	PID     int    `json:"pid"`
	Backend string `json:"backend"`
}

// Record is what Redis holds about a job besides asynq's own task state.
// The scheduler creates it at submit; the worker updates it as it runs.
// Timings are in milliseconds by phase: queue_wait, resolve, wait (for
// another process fetching the same model), fetch, verify, map, generate,
// encode, upload, total.
type Record struct {
	ID         string             `json:"id"`
	Status     Status             `json:"status"`
	Model      string             `json:"model"`
	Queue      string             `json:"queue,omitempty"`
	Error      string             `json:"error,omitempty"`
	Request    *Request           `json:"request,omitempty"`
	Progress   *Progress          `json:"progress,omitempty"`
	Timings    map[string]float64 `json:"timings,omitempty"`
	Result     *Output            `json:"result,omitempty"`
	Worker     *WorkerInfo        `json:"worker,omitempty"`
	Attempt    int                `json:"attempt,omitempty"`
	CreatedAt  time.Time          `json:"created_at,omitzero"`
	StartedAt  time.Time          `json:"started_at,omitzero"`
	FinishedAt time.Time          `json:"finished_at,omitzero"`
}

// RecordTTL is how long a job record stays in Redis after its last update.
const RecordTTL = 7 * 24 * time.Hour

// Redis keys of the job store. They are namespaced apart from asynq's.
func recordKey(id string) string { return "genfleet:job:" + id }
func idemKey(key string) string  { return "genfleet:idem:" + key }

// Hash fields of a record key. The record's JSON and the cancel flag are
// separate fields so that a cancel request never races a worker's update.
const (
	fieldRecord = "rec"
	fieldCancel = "cancel"
	fieldStep   = "step"
	fieldSteps  = "steps"
)

// ErrNoRecord means the store has no record for the id.
var ErrNoRecord = errors.New("no job record")

// Store reads and writes job records in Redis.
type Store struct {
	rdb redis.UniversalClient
}

// NewStore returns a store on rdb.
func NewStore(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Put writes rec, replacing the previous record (the cancel flag and
// progress are kept).
func (s *Store) Put(ctx context.Context, rec *Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	key := recordKey(rec.ID)
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, key, fieldRecord, b)
	pipe.Expire(ctx, key, RecordTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("write job record %s: %w", rec.ID, err)
	}
	return nil
}

// Get returns the record of id, with live progress merged in. A missing
// record gives ErrNoRecord.
func (s *Store) Get(ctx context.Context, id string) (*Record, error) {
	vals, err := s.rdb.HMGet(ctx, recordKey(id), fieldRecord, fieldStep, fieldSteps).Result()
	if err != nil {
		return nil, fmt.Errorf("read job record %s: %w", id, err)
	}
	raw, ok := vals[0].(string)
	if !ok {
		return nil, ErrNoRecord
	}
	var rec Record
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		return nil, fmt.Errorf("job record %s is corrupt: %w", id, err)
	}
	if rec.Status == StatusRunning {
		step, _ := strconv.Atoi(str(vals[1]))
		steps, _ := strconv.Atoi(str(vals[2]))
		if steps > 0 {
			rec.Progress = &Progress{Step: step, Steps: steps}
		}
	}
	return &rec, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// SetProgress records step i of n of a running job.
func (s *Store) SetProgress(ctx context.Context, id string, step, steps int) error {
	return s.rdb.HSet(ctx, recordKey(id), fieldStep, step, fieldSteps, steps).Err()
}

// RequestCancel sets the cancel flag of id. A worker that runs the job
// stops at its next step; a worker that picks it up later skips it.
func (s *Store) RequestCancel(ctx context.Context, id string) error {
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, recordKey(id), fieldCancel, "1")
	pipe.Expire(ctx, recordKey(id), RecordTTL)
	_, err := pipe.Exec(ctx)
	return err
}

// CancelRequested reports whether a cancel was requested for id.
func (s *Store) CancelRequested(ctx context.Context, id string) (bool, error) {
	v, err := s.rdb.HGet(ctx, recordKey(id), fieldCancel).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return v == "1", nil
}

// ClaimIdempotencyKey binds key to id unless the key is already bound; it
// returns the id the key is bound to (id itself when the claim won).
func (s *Store) ClaimIdempotencyKey(ctx context.Context, key, id string, ttl time.Duration) (string, error) {
	ok, err := s.rdb.SetNX(ctx, idemKey(key), id, ttl).Result()
	if err != nil {
		return "", err
	}
	if ok {
		return id, nil
	}
	existing, err := s.rdb.Get(ctx, idemKey(key)).Result()
	if errors.Is(err, redis.Nil) {
		// Expired between SETNX and GET: try once more.
		return s.ClaimIdempotencyKey(ctx, key, id, ttl)
	}
	return existing, err
}

// ReleaseIdempotencyKey unbinds key if it is still bound to id (used when
// the enqueue that claimed it failed).
func (s *Store) ReleaseIdempotencyKey(ctx context.Context, key, id string) error {
	const script = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`
	return s.rdb.Eval(ctx, script, []string{idemKey(key)}, id).Err()
}

// Delete removes the record of id (used when the enqueue it was written for
// failed).
func (s *Store) Delete(ctx context.Context, id string) error {
	return s.rdb.Del(ctx, recordKey(id)).Err()
}
