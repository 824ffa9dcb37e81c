// Copyright 2020 Kentaro Hibino. All rights reserved.
// Use of this source code is governed by a MIT license
// that can be found in the LICENSE file.

package asynq

// genfleet patch (see PATCHES.md): a handler's own final write can travel
// to Redis in the same pipeline as the task's completion.

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// CompletionHook queues a handler's final Redis commands on pipe. The
// function it returns, if not nil, is called once the pipeline has run, to
// check the results of those commands. A hook may run more than once (the
// completion is retried when Redis fails), so its commands must be
// idempotent.
type CompletionHook func(ctx context.Context, pipe redis.Pipeliner) (after func())

// completionSlot holds the hook a handler registered for its task, until the
// processor takes it.
type completionSlot struct {
	mu     sync.Mutex
	hook   CompletionHook
	closed bool
}

type completionKey struct{}

// OnSuccess registers hook to run in the same Redis pipeline as the
// completion of the task whose context ctx is, saving the handler a round
// trip of its own. Call it from ProcessTask just before returning nil; only
// the last registration counts. It reports false when it cannot register
// (ctx is not a task's context, or the processor is already done with the
// task): the handler must then write itself.
//
// If the task is not completed normally after all (its lease expired, the
// server is shutting down and hands the task back, or the task keeps a
// retention, which completes it differently), the hook still runs, in a
// pipeline of its own, before anything else happens to the task.
func OnSuccess(ctx context.Context, hook CompletionHook) bool {
	s, ok := ctx.Value(completionKey{}).(*completionSlot)
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.hook = hook
	return true
}

// take closes the slot and returns its hook, if any.
func (s *completionSlot) take() CompletionHook {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.hook
}
