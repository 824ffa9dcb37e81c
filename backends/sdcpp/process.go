package sdcpp

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// process is an engine process in a process group of its own, so that a
// cancelled job kills the engine and anything it started.
type process struct {
	cmd    *exec.Cmd
	out    *engineOutput
	done   chan struct{} // closed once the process has exited and its output is read
	err    error         // Wait's error; read after done
	killMu sync.Mutex
	reaped bool // the group was killed after the engine exited: never signal its id again
}

// startProcess starts prog with args, its output going to out. dir is its
// working directory.
func startProcess(prog string, args []string, dir string, out *engineOutput) (*process, error) {
	cmd := exec.Command(prog, args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Pipes of our own rather than exec's copying goroutines: a grandchild
	// that inherited them must not keep Wait from returning; the group is
	// killed once the engine exits, which closes them.
	var readers []*os.File
	var writers []*os.File
	for i := range 2 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(readers)
			closeAll(writers)
			return nil, err
		}
		readers, writers = append(readers, r), append(writers, w)
		if i == 0 {
			cmd.Stdout = w
		} else {
			cmd.Stderr = w
		}
	}
	if err := cmd.Start(); err != nil {
		closeAll(readers)
		closeAll(writers)
		return nil, err
	}
	closeAll(writers)
	p := &process{cmd: cmd, out: out, done: make(chan struct{})}
	var copying sync.WaitGroup
	for i, r := range readers {
		copying.Add(1)
		go func() {
			defer copying.Done()
			_, _ = io.Copy(out.stream(i), r)
			r.Close()
		}()
	}
	go func() {
		p.err = cmd.Wait()
		p.killMu.Lock()
		// Whatever the engine left running. The group's id cannot be reused
		// while any member lives, but it can once the group is empty: after
		// this kill, the id is never signalled again.
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		p.reaped = true
		p.killMu.Unlock()
		copying.Wait()
		close(p.done)
	}()
	return p, nil
}

// killGroup sends SIGKILL to the process group. Safe to call repeatedly.
func (p *process) killGroup() {
	p.killMu.Lock()
	defer p.killMu.Unlock()
	if !p.reaped {
		_ = unix.Kill(-p.cmd.Process.Pid, unix.SIGKILL)
	}
}

// stop kills the group and waits for the process to be reaped.
func (p *process) stop() {
	p.killGroup()
	<-p.done
}

// exitError describes how the process ended, with the engine's last error
// line; nil for exit status 0.
func (p *process) exitError(what string) error {
	if p.err == nil {
		return nil
	}
	return fmt.Errorf("%s %s%s", what, p.status(), suffix(p.out.lastError()))
}

// status says how the process ended ("exited with status 1", "was killed
// by signal: killed"); read after done.
func (p *process) status() string {
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Sprintf("was killed by signal: %v", ws.Signal())
		}
		return fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	if p.err == nil {
		return "exited with status 0"
	}
	return p.err.Error()
}

func suffix(msg string) string {
	if msg == "" {
		return " (it printed nothing)"
	}
	return ": " + msg
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
