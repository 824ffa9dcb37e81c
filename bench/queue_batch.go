package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
)

// batchRound is one round of Queue's batch phase: it measures how fast n
// jobs get into the queue, never how fast they run. The anchor: raw
// asynq's Client.Enqueue in a loop, clients goroutines sharing the n tasks;
// genfleet: the same n jobs through POST /v1/jobs:batch in batches of
// size, clients connections sharing the batches (validation, model check,
// routing, job ids, one pipelined Redis round trip per batch). The anchor
// goes first, or second when genfleetFirst (rounds alternate, so that a
// machine that slows down or speeds up in a round favours neither). Each side's
// queue is paused while it is filled, so no worker competes for the two
// cores during the timing, and resumed after: every task is then run by its
// worker (raw asynq's no-op handler; the genfleet worker, which decodes,
// claims and records each job) before batchRound returns, which is what
// shows the batch's tasks are tasks as asynq stores them.
func batchRound(ctx context.Context, raw *rawAsynq, fl *noopFleet, insp *asynq.Inspector, n, size, clients int, genfleetFirst bool) (asynqRate, batchRate float64, err error) {
	if genfleetFirst {
		if batchRate, err = batchPhase(ctx, fl, insp, n, size, clients); err != nil {
			return 0, 0, err
		}
		asynqRate, err = enqueuePhase(ctx, raw, insp, n, clients)
		return asynqRate, batchRate, err
	}
	if asynqRate, err = enqueuePhase(ctx, raw, insp, n, clients); err != nil {
		return 0, 0, err
	}
	batchRate, err = batchPhase(ctx, fl, insp, n, size, clients)
	return asynqRate, batchRate, err
}

// enqueuePhase is the anchor of batchRound: n tasks through raw asynq's
// Client.Enqueue into its paused queue, then run.
func enqueuePhase(ctx context.Context, raw *rawAsynq, insp *asynq.Inspector, n, clients int) (float64, error) {
	if err := insp.PauseQueue(rawQueue); err != nil {
		return 0, err
	}
	base := raw.done.Load()
	start := time.Now()
	enqErr := raw.enqueue(ctx, n, clients)
	rate := float64(n) / time.Since(start).Seconds()
	if err := insp.UnpauseQueue(rawQueue); err != nil {
		return 0, err
	}
	if enqErr != nil {
		return 0, enqErr
	}
	if err := waitCount(ctx, func() float64 { return float64(raw.done.Load()) }, float64(base)+float64(n), 10*time.Minute); err != nil {
		return 0, fmt.Errorf("raw asynq: %w", err)
	}
	return rate, nil
}

// batchPhase is genfleet's side of batchRound: n jobs through POST
// /v1/jobs:batch into the paused pool queue, then run by the worker.
func batchPhase(ctx context.Context, fl *noopFleet, insp *asynq.Inspector, n, size, clients int) (float64, error) {
	const pool = "pool:cpu"
	// The bodies are made before the clock starts, as the anchor's tasks
	// are cheap to make.
	var bodies [][]byte
	for left := n; left > 0; left -= size {
		bodies = append(bodies, batchBody(min(size, left)))
	}
	if err := insp.PauseQueue(pool); err != nil {
		return 0, err
	}
	doneBase := fl.done()
	start := time.Now()
	var wg sync.WaitGroup
	var nextBody atomic.Int64
	errc := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := nextBody.Add(1) - 1; i < int64(len(bodies)); i = nextBody.Add(1) - 1 {
				if err := fl.submitBatch(ctx, bodies[i], strings.Count(string(bodies[i]), `"request"`)); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	rate := float64(n) / time.Since(start).Seconds()
	close(errc)
	if err := insp.UnpauseQueue(pool); err != nil {
		return 0, err
	}
	if err := <-errc; err != nil {
		return 0, err
	}
	if err := waitCount(ctx, fl.done, doneBase+float64(n), 10*time.Minute); err != nil {
		return 0, fmt.Errorf("genfleet batch jobs: %w", err)
	}
	return rate, nil
}

// batchBody is a POST /v1/jobs:batch body of k no-op jobs.
func batchBody(k int) []byte {
	var b strings.Builder
	b.WriteString(`{"jobs":[`)
	for i := range k {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"request":{"model":"demo","prompt":"noop","seed":%d,"width":64,"height":64,"steps":1}}`, i)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// submitBatch posts one batch body and checks that all want jobs of it
// were queued.
func (f *noopFleet) submitBatch(ctx context.Context, body []byte, want int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := f.conn()
	if err != nil {
		return err
	}
	resp, err := c.do("/v1/jobs:batch", body)
	if err != nil {
		c.close()
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.close()
		return err
	}
	if resp.Close {
		c.close()
	} else {
		f.conns <- c
	}
	var r struct {
		Queued int `json:"queued"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &r) != nil || r.Queued != want {
		return fmt.Errorf("POST /v1/jobs:batch: %s, queued %d of %d: %.300s", resp.Status, r.Queued, want, b)
	}
	return nil
}

// waitCount waits until count() reaches n.
func waitCount(ctx context.Context, count func() float64, n float64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for count() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %.0f of %.0f done after %v", count(), n, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
