package job

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RecentKey is a sorted set indexing the jobs whose records were written
// last: job id → unix ms of the record's finish (FinishedAt, or the time of
// the write for a record that has none, such as a job handed back to its
// queue). Store.Finish adds to it in the same script that writes the
// record, and trims it to RecentCap entries, so it stays small whatever
// the traffic. It is an index, not a store: the records it names are the
// job records (which expire after RecordTTL; Recent skips ids whose
// record is gone). Jobs still waiting in a queue are not in it: asynq's
// queues list those.
const RecentKey = "genfleet:jobs:recent"

// RecentCap is the most job ids RecentKey holds.
const RecentCap = 1000

// recentScore is a record's score in RecentKey.
func recentScore(run *Record) int64 {
	if !run.FinishedAt.IsZero() {
		return run.FinishedAt.UnixMilli()
	}
	return time.Now().UnixMilli()
}

// Recent returns the records of the jobs Finish wrote last, newest first:
// n of them from the start-th newest (0 is the newest). Ids whose record
// has expired are skipped and dropped from the index; a record that does
// not decode is skipped too, so one bad record never hides the rest. more
// says whether the index holds ids past the ones read.
func (s *Store) Recent(ctx context.Context, start, n int) (recs []*Record, more bool, err error) {
	if n <= 0 {
		return nil, false, nil
	}
	// One id past the page tells whether there is more.
	ids, err := s.rdb.ZRevRange(ctx, RecentKey, int64(start), int64(start+n)).Result()
	if err != nil {
		return nil, false, fmt.Errorf("read recent jobs: %w", err)
	}
	if more = len(ids) > n; more {
		ids = ids[:n]
	}
	all, err := s.Records(ctx, ids)
	if err != nil {
		return nil, false, err
	}
	var gone []any
	for i, rec := range all {
		if rec == nil {
			gone = append(gone, ids[i])
			continue
		}
		recs = append(recs, rec)
	}
	if len(gone) > 0 {
		// Best effort: a stale id costs one lookup on the next read.
		_ = s.rdb.ZRem(ctx, RecentKey, gone...).Err()
	}
	return recs, more, nil
}

// Records returns the records of ids in one round trip, with live
// progress for running ones; an id without a record, or whose record does
// not decode, gets nil in its place.
func (s *Store) Records(ctx context.Context, ids []string) ([]*Record, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, recordKey(id), fieldRun, fieldStep, fieldSteps)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read job records: %w", err)
	}
	out := make([]*Record, len(ids))
	for i, c := range cmds {
		out[i], _ = decodeRecord(ids[i], c.Val())
	}
	return out, nil
}
