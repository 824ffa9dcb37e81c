// Package lineprefix tags every line written through a Writer, so the
// logs of several child processes copied to one stream stay readable
// ("worker-1 | …", "h2 | …").
package lineprefix

import (
	"bytes"
	"io"
	"sync"
)

// Writer writes each complete line it is given to the underlying writer
// with a prefix; a partial line waits for its newline. It is safe for
// concurrent use (os/exec copies a child's stdout and stderr from two
// goroutines).
type Writer struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

// New returns a Writer that writes to w, each line prefixed with prefix.
func New(w io.Writer, prefix string) *Writer {
	return &Writer{w: w, prefix: prefix}
}

// Write buffers b and writes out every line it completes. It returns
// len(b), or 0 and the underlying writer's error.
func (p *Writer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		line := make([]byte, 0, len(p.prefix)+i+1)
		line = append(append(append(line, p.prefix...), p.buf[:i]...), '\n')
		if _, err := p.w.Write(line); err != nil {
			return 0, err
		}
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}
