// Copyright 2020 Kentaro Hibino. All rights reserved.
// Use of this source code is governed by a MIT license
// that can be found in the LICENSE file.

package asynq

// genfleet patch (see PATCHES.md): many tasks enqueued in one pipelined
// round trip.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq/internal/base"
	"github.com/hibiken/asynq/internal/errors"
)

// BatchTask is one task of EnqueueBatch, with its options.
type BatchTask struct {
	Task *Task
	Opts []Option
}

// EnqueueBatch enqueues tasks for immediate processing in one pipelined
// round trip to Redis (a second one where Redis lacks the enqueue script,
// after a restart or SCRIPT FLUSH), instead of one round trip per task.
// Each task is stored exactly as EnqueueContext stores it, by the same
// script. A task whose options would make it anything but pending at once
// (ProcessAt or ProcessIn in the future, Unique, Group) gets an error and is
// not enqueued; so does one whose id is taken (ErrTaskIDConflict).
// Redis runs a pipeline's commands in order but not atomically: other
// clients' commands may run in between.
//
// It returns one TaskInfo or one error per task, in the order of tasks.
func (c *Client) EnqueueBatch(ctx context.Context, tasks []BatchTask) ([]*TaskInfo, []error) {
	infos := make([]*TaskInfo, len(tasks))
	errs := make([]error, len(tasks))
	msgs := make([]*base.TaskMessage, len(tasks))
	for i, bt := range tasks {
		msgs[i], errs[i] = batchMessage(bt)
	}
	now := time.Now()
	berrs := c.broker.EnqueueBatch(ctx, msgs)
	for i, msg := range msgs {
		if msg == nil {
			continue
		}
		switch err := berrs[i]; {
		case errors.Is(err, errors.ErrTaskIdConflict):
			errs[i] = fmt.Errorf("%w", ErrTaskIDConflict)
		case err != nil:
			errs[i] = err
		default:
			infos[i] = newTaskInfo(msg, base.TaskStatePending, now, nil)
		}
	}
	return infos, errs
}

// batchMessage is the message EnqueueContext would store for bt, or the
// reason EnqueueBatch cannot enqueue it.
func batchMessage(bt BatchTask) (*base.TaskMessage, error) {
	task := bt.Task
	if task == nil {
		return nil, fmt.Errorf("task cannot be nil")
	}
	if strings.TrimSpace(task.Type()) == "" {
		return nil, fmt.Errorf("task typename cannot be empty")
	}
	opt, err := composeOptions(append(task.opts, bt.Opts...)...)
	if err != nil {
		return nil, err
	}
	switch {
	case opt.processAt.After(time.Now()):
		return nil, fmt.Errorf("EnqueueBatch enqueues for immediate processing only; use Enqueue for a task with ProcessAt or ProcessIn")
	case opt.uniqueTTL > 0:
		return nil, fmt.Errorf("EnqueueBatch does not take the Unique option; use Enqueue")
	case opt.group != "":
		return nil, fmt.Errorf("EnqueueBatch does not take the Group option; use Enqueue")
	}
	deadline := noDeadline
	if !opt.deadline.IsZero() {
		deadline = opt.deadline
	}
	timeout := noTimeout
	if opt.timeout != 0 {
		timeout = opt.timeout
	}
	if deadline.Equal(noDeadline) && timeout == noTimeout {
		timeout = defaultTimeout
	}
	return &base.TaskMessage{
		ID:        opt.taskID,
		Type:      task.Type(),
		Payload:   task.Payload(),
		Headers:   task.Headers(),
		Queue:     opt.queue,
		Retry:     opt.retry,
		Deadline:  deadline.Unix(),
		Timeout:   int64(timeout.Seconds()),
		Retention: int64(opt.retention.Seconds()),
	}, nil
}
