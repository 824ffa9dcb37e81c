// Copyright 2020 Kentaro Hibino. All rights reserved.
// Use of this source code is governed by a MIT license
// that can be found in the LICENSE file.

package rdb

// genfleet patch (see PATCHES.md): Enqueue for many messages in one
// pipeline.

import (
	"context"
	"fmt"

	"github.com/hibiken/asynq/internal/base"
	"github.com/hibiken/asynq/internal/errors"
	"github.com/redis/go-redis/v9"
)

// EnqueueBatch does what Enqueue does for each message of msgs that is not
// nil, in one pipeline: the queues' SADD where not done yet, then
// enqueueCmd per message (EVALSHA; where Redis lacks the script, those
// messages are sent again in a second pipeline, with EVAL). It returns one
// error per message: nil, an AlreadyExists error wrapping
// ErrTaskIdConflict, or what went wrong.
func (r *RDB) EnqueueBatch(ctx context.Context, msgs []*base.TaskMessage) []error {
	var op errors.Op = "rdb.EnqueueBatch"
	errs := make([]error, len(msgs))
	keys := make([][]string, len(msgs))
	argv := make([][]interface{}, len(msgs))
	now := r.clock.Now().UnixNano()
	newQueues := map[string]bool{}
	for i, msg := range msgs {
		if msg == nil {
			continue
		}
		encoded, err := base.EncodeMessage(msg)
		if err != nil {
			errs[i] = errors.E(op, errors.Unknown, fmt.Sprintf("cannot encode message: %v", err))
			continue
		}
		if _, found := r.queuesPublished.Load(msg.Queue); !found {
			newQueues[msg.Queue] = true
		}
		keys[i] = []string{base.TaskKey(msg.Queue, msg.ID), base.PendingKey(msg.Queue)}
		argv[i] = []interface{}{encoded, msg.ID, now}
	}
	cmds := make([]*redis.Cmd, len(msgs))
	send := func(which []int, eval bool) error {
		pipe := r.client.Pipeline()
		var sadd *redis.IntCmd
		if len(newQueues) > 0 {
			qs := make([]interface{}, 0, len(newQueues))
			for q := range newQueues {
				qs = append(qs, q)
			}
			sadd = pipe.SAdd(ctx, base.AllQueues, qs...)
		}
		for _, i := range which {
			if eval {
				// EVAL sends the script's text, and Redis caches it: the
				// next batch's EVALSHAs find it. (Script.Load must not be
				// used on a pipeline: it would take the unsent command's
				// empty reply for the script's hash.)
				cmds[i] = enqueueCmd.Eval(ctx, pipe, keys[i], argv[i]...)
			} else {
				cmds[i] = enqueueCmd.EvalSha(ctx, pipe, keys[i], argv[i]...)
			}
		}
		_, err := pipe.Exec(ctx)
		if sadd != nil && sadd.Err() == nil {
			for q := range newQueues {
				r.queuesPublished.Store(q, true)
			}
			newQueues = map[string]bool{}
		}
		return err
	}
	var all []int
	for i := range msgs {
		if keys[i] != nil {
			all = append(all, i)
		}
	}
	_ = send(all, false)
	var again []int
	for _, i := range all {
		if redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		_ = send(again, true)
	}
	for _, i := range all {
		n, err := cmds[i].Int64()
		switch {
		case err != nil:
			errs[i] = errors.E(op, errors.Unknown, fmt.Sprintf("redis eval error: %v", err))
		case n == 0:
			errs[i] = errors.E(op, errors.AlreadyExists, errors.ErrTaskIdConflict)
		}
	}
	return errs
}
