package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"time"
)

// progressInterval is the least time between two progress lines of one
// transfer; the last bytes (done == total) are always shown.
const progressInterval = 500 * time.Millisecond

// minRateWindow is the least wall time a speed is computed over. A rate
// over microseconds says nothing (a window that short holds one read or
// one report), so until this much time has passed no speed is shown.
const minRateWindow = 50 * time.Millisecond

// Progress shows the progress of one transfer on w: a line rewritten in
// place on a terminal, one JSON object per line otherwise
//
//	{"event":"progress","what":"push demo demo.safetensors","done":1048576,"total":67108864,"mb_per_s":212.4}
//
// The speed (MB/s, 10^6 bytes per second) is the bytes this process moved
// over the wall time they took: both are counted from the transfer's first
// report (its origin). Bytes that were in place before it, such as the
// parts a resumed fetch found on disk, are not speed. Before minRateWindow
// has passed since the origin, and on a transfer whose only report is its
// last, no speed is shown ("-" on a terminal, no mb_per_s in JSON).
//
// done going backwards restarts the origin: the S3 client reads an upload
// body once to sign it and then rewinds it to send it, and only the second
// pass is the transfer.
//
// A Progress is used by one goroutine at a time.
type Progress struct {
	w     io.Writer
	label string
	tty   bool
	now   func() time.Time

	started  bool      // the origin is set
	origin   time.Time // time of the origin report
	base     int64     // bytes done at the origin: not counted as speed
	lastDone int64     // done of the previous report
	shown    time.Time // when the last line was written; zero: none yet
}

// NewProgress returns the progress of a transfer labelled label, written
// to w. Whether w is a terminal decides the form.
func NewProgress(w io.Writer, label string) *Progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &Progress{w: w, label: label, tty: tty, now: time.Now}
}

// Update reports that done of total bytes are in place.
func (p *Progress) Update(done, total int64) {
	now := p.now()
	if !p.started || done < p.lastDone {
		p.started, p.origin, p.base = true, now, done
	}
	p.lastDone = done
	if !p.shown.IsZero() && now.Sub(p.shown) < progressInterval && done != total {
		return
	}
	p.shown = now
	rate, ok := p.rate(done, now)
	if p.tty {
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		speed := "- MB/s"
		if ok {
			speed = fmt.Sprintf("%.1f MB/s", rate)
		}
		// \x1b[K clears what a longer previous line left on the right.
		fmt.Fprintf(p.w, "\r%s: %5.1f%% %d/%d bytes %s\x1b[K", p.label, pct, done, total, speed)
		return
	}
	line := struct {
		Event  string   `json:"event"`
		What   string   `json:"what"`
		Done   int64    `json:"done"`
		Total  int64    `json:"total"`
		MBPerS *float64 `json:"mb_per_s,omitempty"`
	}{Event: "progress", What: p.label, Done: done, Total: total}
	if ok {
		line.MBPerS = &rate
	}
	b, _ := json.Marshal(line)
	fmt.Fprintln(p.w, string(b))
}

// rate is the speed in MB/s at now with done bytes in place, and whether
// the window since the origin is long enough to tell.
func (p *Progress) rate(done int64, now time.Time) (float64, bool) {
	elapsed := now.Sub(p.origin)
	if elapsed < minRateWindow {
		return 0, false
	}
	mbps := float64(done-p.base) / elapsed.Seconds() / 1e6
	return math.Round(mbps*100) / 100, true // two decimals are plenty
}

// Done ends the terminal line, if one was shown.
func (p *Progress) Done() {
	if p.tty && !p.shown.IsZero() {
		fmt.Fprintln(p.w)
	}
}
