// Copyright 2020 Kentaro Hibino. All rights reserved.
// Use of this source code is governed by a MIT license
// that can be found in the LICENSE file.

package asynq

// genfleet patch (see PATCHES.md): a server may run a Lua snippet of its own
// inside the script that dequeues a task, in the same round trip.

import (
	"context"

	asynqcontext "github.com/hibiken/asynq/internal/context"
)

// DequeueHook is a Lua snippet run inside the dequeue script, right after a
// task has been made active, in the same round trip. Its result reaches the
// task's handler through GetDequeueHookResult.
//
// Script is the body of a Lua function called as hook(id, args): id is the
// dequeued task's ID and args a table with the strings Args returned for
// this dequeue. It must return a string. It may read and write keys of its
// own that it derives from id (the dequeue script then touches keys it does
// not declare, so a server with a hook must not use Redis Cluster, where
// the hook is not run). It runs atomically with the dequeue: a task is
// never dequeued without its hook having run.
//
// The hook runs only for dequeues from a plain (non-cluster) Redis client;
// a handler that finds no result must do the hook's work itself.
type DequeueHook struct {
	Script string
	// Args returns the hook's arguments for one dequeue; nil means none.
	Args func() []string
}

// GetDequeueHookResult returns what the server's DequeueHook returned when
// the task of ctx was dequeued; ok is false when no hook ran.
func GetDequeueHookResult(ctx context.Context) (result string, ok bool) {
	return asynqcontext.GetDequeueHookResult(ctx)
}
