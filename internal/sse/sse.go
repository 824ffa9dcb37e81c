// Package sse reads Server-Sent Events (text/event-stream), as the HTML
// standard's event stream interpretation does: data lines joined with
// newlines, the event type (default "message"), the last event id carried
// over, retry times, comments skipped. Package client reads a job's events
// with it (GET /v1/jobs/{id}/events).
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Event is one dispatched event.
type Event struct {
	// ID is the stream's last event id when the event was dispatched: the
	// event's own id: line, or the one before it (as the standard says).
	ID   string
	Type string
	Data []byte
}

// MaxLine bounds a line of the stream; a longer one is an error, not
// unbounded memory.
const MaxLine = 4 << 20

// ErrLineTooLong is returned for a line over MaxLine.
var ErrLineTooLong = errors.New("sse: line longer than 4 MiB")

// Reader reads events from a stream.
type Reader struct {
	br     *bufio.Reader
	lastID string
	// Retry is the reconnection time the stream last asked for (0: none).
	Retry time.Duration
	// pendingCR: the previous line ended with a lone "\r" so far, and a
	// "\n" that follows belongs to it.
	pendingCR bool
}

// NewReader returns a Reader of r.
func NewReader(r io.Reader) *Reader { return &Reader{br: bufio.NewReaderSize(r, 64<<10)} }

// LastID is the last event id the stream set.
func (r *Reader) LastID() string { return r.lastID }

// Next returns the next event. At the end of the stream it returns io.EOF;
// an event the stream did not finish with a blank line is not dispatched.
func (r *Reader) Next() (Event, error) {
	var data bytes.Buffer
	typ, hasData := "", false
	for {
		line, err := r.line()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return Event{}, io.EOF
			}
			return Event{}, err
		}
		if len(line) == 0 {
			if !hasData {
				typ = ""
				continue
			}
			if typ == "" {
				typ = "message"
			}
			b := data.Bytes()
			return Event{ID: r.lastID, Type: typ, Data: b[:len(b)-1]}, nil
		}
		if line[0] == ':' {
			continue // a comment
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			data.Write(value)
			data.WriteByte('\n')
			hasData = true
		case "event":
			typ = string(value)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.lastID = string(value)
			}
		case "retry":
			if n, err := strconv.ParseUint(string(value), 10, 32); err == nil && len(value) > 0 && value[0] >= '0' && value[0] <= '9' {
				r.Retry = time.Duration(n) * time.Millisecond
			}
		}
	}
}

// line reads one line, without its end ("\r\n", "\n" or "\r").
func (r *Reader) line() ([]byte, error) {
	var out []byte
	for {
		c, err := r.br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) && len(out) > 0 {
				return nil, fmt.Errorf("sse: stream ended inside a line: %w", io.ErrUnexpectedEOF)
			}
			return nil, err
		}
		if r.pendingCR {
			r.pendingCR = false
			if c == '\n' {
				continue
			}
		}
		switch c {
		case '\n':
			return out, nil
		case '\r':
			r.pendingCR = true
			return out, nil
		}
		if len(out) >= MaxLine {
			return nil, ErrLineTooLong
		}
		out = append(out, c)
	}
}
