package cuda

import (
	"errors"
	"runtime"
	"sync"
)

// errThreadClosed is returned by deviceThread.do after close.
var errThreadClosed = errors.New("cuda: device thread closed")

// deviceThread is one goroutine locked to one OS thread on which the CUDA
// context is current. A CUDA context is current per OS thread, and the Go
// scheduler moves goroutines between threads, so every driver call of
// this package is a closure sent to such a thread and run there in
// order: the device's own thread, or a staging worker's (see stager).
type deviceThread struct {
	work chan func()
	// mu guards closed and makes close wait for do calls in flight.
	mu     sync.RWMutex
	closed bool
	done   chan struct{}
}

// startDeviceThread starts the thread and runs setup on it; if setup
// fails the thread exits and its error is returned.
func startDeviceThread(setup func() error) (*deviceThread, error) {
	t := &deviceThread{work: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns the runtime ends the
		// thread, taking whatever context state the driver left on it.
		runtime.LockOSThread()
		defer close(t.done)
		if err := setup(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for f := range t.work {
			f()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return t, nil
}

// do runs f on the device thread and returns its error. Calls from many
// goroutines are served one at a time, in arrival order.
func (t *deviceThread) do(f func() error) error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return errThreadClosed
	}
	errc := make(chan error, 1)
	t.work <- func() { errc <- f() }
	return <-errc
}

// close runs last on the device thread (to release what setup took) and
// stops it. Later do calls return errThreadClosed.
func (t *deviceThread) close(last func()) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	if last != nil {
		t.work <- last
	}
	close(t.work)
	t.mu.Unlock()
	<-t.done
}
