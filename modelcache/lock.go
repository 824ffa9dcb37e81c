package modelcache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Backoff between attempts to take a contended flock. A blocking flock(2)
// cannot be interrupted by a context, so every wait polls with LOCK_NB; the
// short ceiling keeps both the added latency after the holder lets go and the
// reaction to cancellation within a few tens of milliseconds.
const (
	lockPollMin = 2 * time.Millisecond
	lockPollMax = 50 * time.Millisecond
)

// flockCtx takes how (unix.LOCK_EX or unix.LOCK_SH) on f, waiting while
// another open file description holds a conflicting lock, until ctx is done.
// It returns how long it waited (zero when the first try succeeded) and, on
// cancellation, an error wrapping ctx.Err().
func flockCtx(ctx context.Context, f *os.File, how int) (time.Duration, error) {
	var start time.Time
	delay := lockPollMin
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil:
			if start.IsZero() {
				return 0, nil
			}
			return time.Since(start), nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EWOULDBLOCK):
			return waited(start), fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		if start.IsZero() {
			start = time.Now()
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return waited(start), fmt.Errorf("waiting for lock on %s: %w", f.Name(), ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, lockPollMax)
	}
}

func waited(start time.Time) time.Duration {
	if start.IsZero() {
		return 0
	}
	return time.Since(start)
}

// tryFlock takes how on f without waiting. It reports false, nil when another
// open file description holds a conflicting lock.
func tryFlock(f *os.File, how int) (bool, error) {
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		default:
			return false, fmt.Errorf("flock %s: %w", f.Name(), err)
		}
	}
}

// lockFile opens (creating if needed) the lock file of key. Lock files are
// never deleted: unlinking a lock file that another process has open but not
// yet locked would let two processes hold "the" lock on different inodes.
func (c *Cache) lockFile(key string) (*os.File, error) {
	f, err := os.OpenFile(c.lockPath(key), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	return f, nil
}

// lock takes the exclusive fetch lock of key, waiting for other fetchers
// until ctx is done. Closing the returned file releases the lock.
func (c *Cache) lock(ctx context.Context, key string) (*os.File, time.Duration, error) {
	f, err := c.lockFile(key)
	if err != nil {
		return nil, 0, err
	}
	wait, err := flockCtx(ctx, f, unix.LOCK_EX)
	if err != nil {
		f.Close()
		return nil, wait, err
	}
	return f, wait, nil
}

// tryLock takes the exclusive fetch lock of key without waiting; it returns
// nil, nil when another holder has it.
func (c *Cache) tryLock(key string) (*os.File, error) {
	f, err := c.lockFile(key)
	if err != nil {
		return nil, err
	}
	ok, err := tryFlock(f, unix.LOCK_EX)
	if err != nil || !ok {
		f.Close()
		return nil, err
	}
	return f, nil
}
