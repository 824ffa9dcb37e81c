package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// Output is where one image of a finished job is.
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
	// CacheHit says the model's files were all on this host's disk, intact,
	// when the job asked for them.
	CacheHit bool `json:"cache_hit"`
	// ModelSource tells where the job got its model: "disk" (a cache
	// hit), "waited" (another process on the host fetched it while this
	// job waited; this job downloaded nothing) or "fetched" (this job
	// downloaded it, or a corrupt copy's replacement, from S3).
	ModelSource string `json:"model_source"`
	// ModelWaitMS is how long the job waited for another process's fetch
	// of its model; ModelFetchedBytes what the job itself downloaded.
	ModelWaitMS       float64 `json:"model_wait_ms"`
	ModelFetchedBytes int64   `json:"model_fetched_bytes"`
	// Seed is the seed this image was made with: the request's seed plus
	// the image's index.
	Seed int64 `json:"seed"`

	// What the API adds when it shows a job (docs/jobs.md); never stored.
	// ImageURL is where a client fetches this image: a presigned S3 GET
	// valid until ImageURLExpiresAt, or the API's own image URL (no
	// expiry). Set on each of a job's Outputs, not on Result.
	ImageURL          string    `json:"image_url,omitempty"`
	ImageURLExpiresAt time.Time `json:"image_url_expires_at,omitzero"`
}

// apiSet reports whether o has a field only the API sets.
func (o *Output) apiSet() bool { return o.ImageURL != "" || !o.ImageURLExpiresAt.IsZero() }

// Route says where the scheduler sent a job and why.
type Route struct {
	Queue string `json:"queue"`
	Host  string `json:"host,omitempty"`
	// Pool is the pool queue the job falls back to if Host stops
	// heartbeating before running it.
	Pool   string `json:"pool"`
	Reason string `json:"reason"`
}

// WorkerInfo says which process ran a job.
type WorkerInfo struct {
	Host    string `json:"host"`
	PID     int    `json:"pid"`
	Backend string `json:"backend"`
}

// Record is what Redis holds about a job besides asynq's own task state.
// The worker writes it (from the task's payload and its own work) when it
// starts the job and as the job moves; the scheduler writes it only for a
// job it cancelled before any worker took it. A job no worker has started
// yet has no record: the scheduler reads it from asynq's task (payload and
// state). The cancel flag and progress are separate hash fields, so nothing
// is read-modify-written across processes.
//
// Timings are in milliseconds by phase: queue_wait, resolve, wait (for
// another process fetching the same model), fetch, verify, map, generate,
// engine_load (part of generate, reported by the backend), encode, upload,
// total.
type Record struct {
	ID       string             `json:"id"`
	Status   Status             `json:"status"`
	Model    string             `json:"model"`
	Queue    string             `json:"queue,omitempty"`
	Route    *Route             `json:"route,omitempty"`
	Error    string             `json:"error,omitempty"`
	Request  *Request           `json:"request,omitempty"`
	Progress *Progress          `json:"progress,omitempty"`
	Timings  map[string]float64 `json:"timings,omitempty"`
	Result   *Output            `json:"result,omitempty"`
	// Outputs are the job's images, n of them in seed order; Result is the
	// first, kept for clients that know only one.
	Outputs    []Output    `json:"outputs,omitempty"`
	Worker     *WorkerInfo `json:"worker,omitempty"`
	Attempt    int         `json:"attempt,omitempty"`
	CreatedAt  time.Time   `json:"created_at,omitzero"`
	StartedAt  time.Time   `json:"started_at,omitzero"`
	FinishedAt time.Time   `json:"finished_at,omitzero"`

	// What the API adds when it shows a job (docs/jobs.md); never stored.
	// ImageURL is where a client fetches a succeeded job's image (its
	// first, the same as Outputs[0].ImageURL; each output has its own): a
	// presigned S3 GET valid until ImageURLExpiresAt, or the API's own
	// image URL (no expiry).
	ImageURL          string    `json:"image_url,omitempty"`
	ImageURLExpiresAt time.Time `json:"image_url_expires_at,omitzero"`
	// WebhookAttempts are the POSTs made to the job's webhook, oldest
	// first.
	WebhookAttempts []WebhookAttempt `json:"webhook_attempts,omitempty"`
}

// RecordTTL is how long a job record stays in Redis after its last update.
const RecordTTL = 7 * 24 * time.Hour

// Redis keys of the job store. They are namespaced apart from asynq's.
func recordKey(id string) string { return recordPrefix + id }
func idemKey(key string) string  { return "genfleet:idem:" + key }

// Hash fields of a record key. Each has one writer at a time, so a cancel
// request and a worker's update never overwrite each other.
const (
	fieldRun    = "run"    // the record (JSON)
	fieldFinal  = "final"  // terminal status, once there is one
	fieldCancel = "cancel" // "1" once a cancel was requested
	fieldStep   = "step"
	fieldSteps  = "steps"
)

func claimKey(id string) string { return claimPrefix + id }

const (
	recordPrefix = "genfleet:job:"
	claimPrefix  = "genfleet:claim:"
)

// ErrNoRecord means the store has no record for the id.
var ErrNoRecord = errors.New("no job record")

// Store reads and writes job records in Redis.
type Store struct {
	rdb redis.UniversalClient
}

// NewStore returns a store on rdb.
func NewStore(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Get returns the record of id with live progress. A missing record gives
// ErrNoRecord.
func (s *Store) Get(ctx context.Context, id string) (*Record, error) {
	vals, err := s.rdb.HMGet(ctx, recordKey(id), fieldRun, fieldStep, fieldSteps).Result()
	if err != nil {
		return nil, fmt.Errorf("read job record %s: %w", id, err)
	}
	return decodeRecord(id, vals)
}

// decodeRecord makes the record of id from the values of its hash fields
// run, step and steps. A missing run field gives ErrNoRecord.
func decodeRecord(id string, vals []any) (*Record, error) {
	raw, ok := vals[0].(string)
	if !ok {
		return nil, ErrNoRecord
	}
	rec := &Record{}
	if err := json.Unmarshal([]byte(raw), rec); err != nil {
		return nil, fmt.Errorf("job record %s is corrupt: %w", id, err)
	}
	rec.ID = id
	if rec.Status == StatusRunning {
		step, _ := strconv.Atoi(str(vals[1]))
		steps, _ := strconv.Atoi(str(vals[2]))
		if steps > 0 {
			rec.Progress = &Progress{Step: step, Steps: steps}
		}
	}
	return rec, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// StartResult says whether a worker may run a job.
type StartResult string

const (
	// StartOK: the claim is the caller's and the record says running.
	StartOK StartResult = "ok"
	// StartCancelled: a cancel was requested before the job started.
	StartCancelled StartResult = "cancelled"
	// StartDone: another copy of the job already ended; don't run it twice.
	StartDone StartResult = "done"
	// StartClaimed: another live worker holds the job's claim right now.
	StartClaimed StartResult = "claimed"
)

// claimLua is the body of a Lua function claim(rk, ck, owner, ttl) that
// decides whether owner may run the job whose record key is rk and claim
// key ck: not if a cancel was requested ("cancelled") or the job already
// ended ("done"), nor while another owner holds the claim ("claimed").
// Otherwise it takes the claim for ttl milliseconds, clears a previous
// attempt's progress and returns "ok".
const claimLua = `
local f = redis.call("HMGET", rk, "cancel", "final")
if f[1] == "1" then return "cancelled" end
if f[2] then return "done" end
if not redis.call("SET", ck, owner, "NX", "PX", ttl) then return "claimed" end
redis.call("HDEL", rk, "step", "steps", "started")
return "ok"`

// claimFunc defines claimLua as the Lua function claim, for the scripts
// that use it.
const claimFunc = "local function claim(rk, ck, owner, ttl)" + claimLua + "\nend\n"

// startScript: one round trip to decide whether a worker may run a job and,
// if so, take the job's run claim, write its record and publish its started
// event (ARGV[5], when not empty).
var startScript = redis.NewScript(claimFunc + publishFunc + startedFunc + `
local r = claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if r ~= "ok" then return r end
redis.call("HSET", KEYS[1], "run", ARGV[3])
redis.call("PEXPIRE", KEYS[1], ARGV[4])
started(KEYS[1], KEYS[3], ARGV[5])
return "ok"`)

// Start decides in one round trip whether the caller (owner, unique per
// attempt) may run job run.ID: it checks the cancel flag and whether the
// job already ended, takes the run claim for claimTTL, writes run as the
// record and publishes the job's started event (from run.Worker).
func (s *Store) Start(ctx context.Context, run *Record, owner string, claimTTL time.Duration) (StartResult, error) {
	b, err := encodeRecord(run)
	if err != nil {
		return "", err
	}
	res, err := startScript.Run(ctx, s.rdb, []string{recordKey(run.ID), claimKey(run.ID), EventsKey(run.ID)},
		owner, claimTTL.Milliseconds(), b, RecordTTL.Milliseconds(), startedData(run)).Text()
	if err != nil {
		return "", fmt.Errorf("start job %s: %w", run.ID, err)
	}
	return StartResult(res), nil
}

// ClaimHook is Start's decision and claim (not its record write, nor the
// started event, which follow with the running record or the final one)
// as the body of an asynq dequeue hook (asynq.DequeueHook), so that a
// worker claims a job in the round trip that dequeues it. Its arguments
// are ClaimHookArgs; its result, ParseClaimHook's input, is the
// StartResult followed, when ok, by a space and the owner that holds the
// claim.
const ClaimHook = claimFunc + `
local r = claim("` + recordPrefix + `" .. id, "` + claimPrefix + `" .. id, args[1], args[2])
if r == "ok" then return "ok " .. args[1] end
return r`

// ClaimHookArgs are ClaimHook's arguments for one dequeue: the owner the
// claim would be taken for (unique per attempt) and the claim's TTL.
func ClaimHookArgs(owner string, ttl time.Duration) []string {
	return []string{owner, strconv.FormatInt(ttl.Milliseconds(), 10)}
}

// ParseClaimHook splits ClaimHook's result into the decision and, when it
// is StartOK, the claim's owner.
func ParseClaimHook(s string) (res StartResult, owner string, err error) {
	r, owner, _ := strings.Cut(s, " ")
	switch res = StartResult(r); res {
	case StartOK:
		if owner == "" {
			return "", "", fmt.Errorf("claim hook result %q: ok without an owner", s)
		}
		return res, owner, nil
	case StartCancelled, StartDone, StartClaimed:
		return res, "", nil
	}
	return "", "", fmt.Errorf("claim hook result %q: not a start result", s)
}

// markRunningScript writes the record of a job that is running, unless it
// has already ended, and publishes its started event (ARGV[3]) unless that
// is out already.
var markRunningScript = redis.NewScript(publishFunc + startedFunc + `
if redis.call("HEXISTS", KEYS[1], "final") == 1 then return 0 end
redis.call("HSET", KEYS[1], "run", ARGV[1])
redis.call("PEXPIRE", KEYS[1], ARGV[2])
started(KEYS[1], KEYS[2], ARGV[3])
return 1`)

// MarkRunning writes run as the record of a job a worker claimed at
// dequeue (ClaimHook), unless the job has ended meanwhile, and publishes
// its started event (from run.Worker) if no write of this attempt has.
func (s *Store) MarkRunning(ctx context.Context, run *Record) error {
	b, err := encodeRecord(run)
	if err != nil {
		return err
	}
	if err := markRunningScript.Run(ctx, s.rdb, []string{recordKey(run.ID), EventsKey(run.ID)}, b, RecordTTL.Milliseconds(), startedData(run)).Err(); err != nil {
		return fmt.Errorf("write job record %s: %w", run.ID, err)
	}
	return nil
}

var refreshScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)

// RefreshClaim extends owner's claim on id.
func (s *Store) RefreshClaim(ctx context.Context, id, owner string, ttl time.Duration) error {
	return refreshScript.Run(ctx, s.rdb, []string{claimKey(id)}, owner, ttl.Milliseconds()).Err()
}

// finishScript writes the record, marks a terminal status final, drops
// the caller's claim and publishes the job's event (ARGV[5], ARGV[6]),
// queueing its webhook delivery when ARGV[7] is "1" (due at ARGV[8] ms,
// job ARGV[9]), in one round trip. A caller that holds the claim (it ran
// the job) publishes the started event (ARGV[10]) first, if no earlier
// write of this attempt did (a job shorter than the running record's
// delay). A terminal status that is already final publishes no second
// completed event: a retried completion repeats this script. It also
// scores the job in the index of recent jobs (KEYS[4], see RecentKey) at
// ARGV[11] and trims the index to its cap (ARGV[12]). With ARGV[13] "1" it
// writes nothing when the job already ended (FinishUnlessEnded).
var finishScript = redis.NewScript(publishFunc + notifyFunc + startedFunc + `
local prev = redis.call("HGET", KEYS[1], "final")
if ARGV[13] == "1" and prev then return 0 end
if ARGV[3] ~= "" and redis.call("GET", KEYS[2]) == ARGV[3] then started(KEYS[1], KEYS[3], ARGV[10]) end
if ARGV[2] ~= "" then
	redis.call("HSET", KEYS[1], "run", ARGV[1], "final", ARGV[2])
else
	redis.call("HSET", KEYS[1], "run", ARGV[1])
end
redis.call("PEXPIRE", KEYS[1], ARGV[4])
if ARGV[3] ~= "" and redis.call("GET", KEYS[2]) == ARGV[3] then redis.call("DEL", KEYS[2]) end
if ARGV[5] ~= "" and not (ARGV[2] ~= "" and prev == ARGV[2]) then
	local eid = publish(KEYS[3], ARGV[5], ARGV[6])
	if ARGV[7] == "1" then notify(ARGV[9], ARGV[5], eid, ARGV[8]) end
end
redis.call("ZADD", KEYS[4], ARGV[11], ARGV[9])
redis.call("ZREMRANGEBYRANK", KEYS[4], 0, -1 - tonumber(ARGV[12]))
return 1`)

// Finish writes run as the record; a terminal status is recorded as final,
// so no later copy of the job runs, and published as the job's completed
// event (a job going back to its queue, as requeued). owner's claim is
// released (owner "" releases nothing).
func (s *Store) Finish(ctx context.Context, run *Record, owner string) error {
	_, err := s.finish(ctx, run, owner, false)
	return err
}

// FinishUnlessEnded is Finish, without a claim, for a job that ended
// without its worker writing it (it died on the last attempt): it writes
// run and reports true unless the record already says the job ended, in
// which case it changes nothing.
func (s *Store) FinishUnlessEnded(ctx context.Context, run *Record) (bool, error) {
	return s.finish(ctx, run, "", true)
}

func (s *Store) finish(ctx context.Context, run *Record, owner string, unlessEnded bool) (bool, error) {
	keys, args, err := finishArgs(run, owner, unlessEnded)
	if err != nil {
		return false, err
	}
	n, err := finishScript.Run(ctx, s.rdb, keys, args...).Int()
	if err != nil {
		return false, fmt.Errorf("write job record %s: %w", run.ID, err)
	}
	return n == 1, nil
}

// QueueFinish queues what Finish does on pipe, for a caller that sends it
// with other commands in one round trip. It is idempotent. The returned
// function must be called once the pipeline has run: it reports the
// outcome, and writes the record itself where the pipeline could not.
func (s *Store) QueueFinish(ctx context.Context, pipe redis.Pipeliner, run *Record, owner string) (result func() error) {
	keys, args, err := finishArgs(run, owner, false)
	if err != nil {
		return func() error { return err }
	}
	// EVALSHA; where Redis does not have the script (a first use, or after
	// a restart or SCRIPT FLUSH) it did not run, and runs here on its own.
	cmd := finishScript.EvalSha(ctx, pipe, keys, args...)
	return func() error {
		err := cmd.Err()
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			err = finishScript.Run(ctx, s.rdb, keys, args...).Err()
		}
		if err != nil {
			return fmt.Errorf("write job record %s: %w", run.ID, err)
		}
		return nil
	}
}

func finishArgs(run *Record, owner string, unlessEnded bool) ([]string, []any, error) {
	b, err := encodeRecord(run)
	if err != nil {
		return nil, nil, err
	}
	final := ""
	if run.Status.Terminal() {
		final = string(run.Status)
	}
	typ, data := finishEvent(run)
	notify := flag(run.Request != nil && run.Request.Webhook.Wants(typ))
	return []string{recordKey(run.ID), claimKey(run.ID), EventsKey(run.ID), RecentKey},
		[]any{b, final, owner, RecordTTL.Milliseconds(), typ, data, notify, time.Now().UnixMilli(), run.ID, startedData(run),
			recentScore(run), RecentCap, flag(unlessEnded)}, nil
}

// flag is a boolean as the scripts take it: "1" or "".
func flag(b bool) string {
	if b {
		return "1"
	}
	return ""
}

var releaseClaimScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// ReleaseClaim drops owner's run claim on id, if owner still holds it,
// without writing a record.
func (s *Store) ReleaseClaim(ctx context.Context, id, owner string) error {
	return releaseClaimScript.Run(ctx, s.rdb, []string{claimKey(id)}, owner).Err()
}

// progressScript records step ARGV[1] of ARGV[2] in the record and
// publishes it as a progress event, queueing its webhook delivery when
// ARGV[3] is "1" (due at ARGV[4] ms, job ARGV[5]).
var progressScript = redis.NewScript(publishFunc + notifyFunc + `
redis.call("HSET", KEYS[1], "step", ARGV[1], "steps", ARGV[2])
local eid = publish(KEYS[2], "progress", '{"step":' .. ARGV[1] .. ',"steps":' .. ARGV[2] .. '}')
if ARGV[3] == "1" then notify(ARGV[5], "progress", eid, ARGV[4]) end
return eid`)

// SetProgress records step i of n of a running job, in its record and as
// a progress event.
func (s *Store) SetProgress(ctx context.Context, id string, step, steps int) error {
	return s.Progress(ctx, id, step, steps, false)
}

// Progress is SetProgress that also queues a webhook delivery of the
// progress event when notify is set (the job's webhook wants progress).
func (s *Store) Progress(ctx context.Context, id string, step, steps int, notify bool) error {
	return progressScript.Run(ctx, s.rdb, []string{recordKey(id), EventsKey(id)}, step, steps, flag(notify), time.Now().UnixMilli(), id).Err()
}

// RequestCancel sets the cancel flag of id. A worker that runs the job
// stops at its next step; a worker that picks it up later skips it.
func (s *Store) RequestCancel(ctx context.Context, id string) error {
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, recordKey(id), fieldCancel, "1")
	pipe.PExpire(ctx, recordKey(id), RecordTTL)
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

// Idempotency is what an Idempotency-Key is bound to: the job it names
// and the RequestDigest of the request that made the job. Digest is empty
// for a binding written before digests were kept.
type Idempotency struct {
	ID, Digest string
}

// Matches reports whether a request with digest may reuse the binding: it
// asks for the same job, or the binding predates digests.
func (b Idempotency) Matches(digest string) bool {
	return b.Digest == "" || b.Digest == digest
}

func (b Idempotency) value() string { return b.ID + " " + b.Digest }

func parseIdempotency(v string) Idempotency {
	id, digest, _ := strings.Cut(v, " ")
	return Idempotency{ID: id, Digest: digest}
}

// claimIdemScript binds KEYS[1] to ARGV[1] for ARGV[2] ms unless it is
// bound; it returns the existing binding, or nil when the claim won.
var claimIdemScript = redis.NewScript(`
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then return false end
return redis.call("GET", KEYS[1])`)

// ClaimIdempotencyKey binds key to want (the new job's id and request
// digest) unless the key is already bound, in one round trip; it returns
// the binding the key has: want itself when the claim won. The caller
// compares the digests (Idempotency.Matches).
func (s *Store) ClaimIdempotencyKey(ctx context.Context, key string, want Idempotency, ttl time.Duration) (Idempotency, error) {
	v, err := claimIdemScript.Run(ctx, s.rdb, []string{idemKey(key)}, want.value(), ttl.Milliseconds()).Text()
	if errors.Is(err, redis.Nil) {
		return want, nil
	}
	if err != nil {
		return Idempotency{}, err
	}
	return parseIdempotency(v), nil
}

// ReleaseIdempotencyKey unbinds key if it is still bound to b (used when
// the enqueue that claimed it failed).
func (s *Store) ReleaseIdempotencyKey(ctx context.Context, key string, b Idempotency) error {
	return releaseIdemScript.Run(ctx, s.rdb, []string{idemKey(key)}, b.value()).Err()
}
