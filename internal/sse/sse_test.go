package sse

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func readAll(t *testing.T, s string) ([]Event, *Reader, error) {
	t.Helper()
	r := NewReader(strings.NewReader(s))
	var evs []Event
	for {
		ev, err := r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return evs, r, err
		}
		evs = append(evs, ev)
	}
}

func TestReader(t *testing.T) {
	evs, r, err := readAll(t, "retry: 1500\n\n: a comment\nid: 1-0\nevent: queued\ndata: {\"a\":1}\n\n"+
		"data: two\r\ndata:lines\r\n\r\n"+
		"id\nevent: x\r\rid: 7-1\nevent: completed\ndata: {}\n\n"+
		"data: unfinished")
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a stream ending inside a line: %v", err)
	}
	want := []Event{
		{ID: "1-0", Type: "queued", Data: []byte(`{"a":1}`)},
		{ID: "1-0", Type: "message", Data: []byte("two\nlines")},
		{ID: "7-1", Type: "completed", Data: []byte("{}")},
	}
	if len(evs) != len(want) {
		t.Fatalf("events %q", evs)
	}
	for i := range want {
		if evs[i].ID != want[i].ID || evs[i].Type != want[i].Type || !bytes.Equal(evs[i].Data, want[i].Data) {
			t.Fatalf("event %d: %+v (%q), want %+v", i, evs[i], evs[i].Data, want[i])
		}
	}
	if r.Retry != 1500*time.Millisecond || r.LastID() != "7-1" {
		t.Fatalf("retry %v, last id %q", r.Retry, r.LastID())
	}
	if _, _, err := readAll(t, "data: "+strings.Repeat("x", MaxLine+1)+"\n\n"); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("a line over MaxLine: %v", err)
	}
}

// FuzzReader: any bytes read as a stream never panic, and every event
// read has data made only of the stream's data values.
func FuzzReader(f *testing.F) {
	for _, s := range []string{"", "\n", "data\n\n", "id: 1\x00\ndata: x\n\n", "event: e\rdata: a\r\n\r\n", ":\n\n", "retry: -1\nretry: 99999999999\n\n", "data: a\ndata: b\n\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		for range len(b) + 1 {
			ev, err := r.Next()
			if err != nil {
				return
			}
			if ev.Type == "" || bytes.Contains(ev.Data, []byte{'\r'}) || strings.ContainsRune(ev.ID, 0) {
				t.Fatalf("event %+v", ev)
			}
		}
		if _, err := r.Next(); err == nil {
			t.Fatal("more events than lines")
		}
	})
}
