package sdcpp

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// progressRE matches the engine's step progress, which it redraws in place
// with carriage returns on stdout:
//
//	\r  |=========>          | 7/20 - 1.52s/it\033[K
//
// The same bar is drawn while tensors load and while a tiled VAE decodes,
// with other totals; engineOutput reports only bars whose total is the
// job's step count.
var progressRE = regexp.MustCompile(`\|\s*(\d+)/(\d+)\s*-\s*[0-9.]+\s*(?:s/it|it/s)`)

// ansiRE matches the terminal escapes the engine mixes into its output.
var ansiRE = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// tailLines is how many lines of the engine's output are kept for errors.
const tailLines = 40

// engineOutput consumes an engine's stdout and stderr (one engineOutput
// per stream pair; safe for the two streams' writers at once): it reports
// step progress to the current job and keeps the last lines of each
// stream, for error messages and logs.
type engineOutput struct {
	mu       sync.Mutex
	steps    int // the current job's step count; 0: report nothing
	progress func(step, total int)
	lastStep int
	// runs is the number of images of the job, each drawing its own bar
	// of steps; round is the 0-based image the engine is on (batchRE).
	runs, round int
	tail        []string // last tailLines lines of both streams, "stderr: …"-free
	errTail     []string // last tailLines lines of stderr
	partial     [2][]byte
	errCount    int // error-level lines seen
	// What the engine said about the model's files (enginelines.go), counted
	// over the whole output; a server's spans many jobs, so callers
	// compare against a mark.
	refusals     int
	firstRefusal string // of the refusal lines since the last mark…
	lastRefusal  string // …and the last
	missing      int    // "file … not found" lines
	missingLine  string // the last of them
	// loaded is the weights' load time the engine reported since the last
	// mark (loadRE), and loads how many such lines.
	loaded time.Duration
	loads  int
	done   int // "generate_image completed" lines (doneRE)
	// LoRAs the engine did not find, or could not load (enginelines.go):
	// counts and the last line.
	loraMissing, loraFailed int
	loraLine                string
}

// outputMark is where the engine's output stood at a point: the start of
// a run, or of a request to a server.
type outputMark struct{ errs, refusals, missing, loads, done, loraMissing, loraFailed int }

// mark returns where the output stands now, and starts a new span for
// firstRefusal and loaded.
func (o *engineOutput) mark() outputMark {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.firstRefusal, o.lastRefusal, o.loaded = "", "", 0
	return outputMark{o.errCount, o.refusals, o.missing, o.loads, o.done, o.loraMissing, o.loraFailed}
}

// loraSince returns the engine's last line about a LoRA it did not find
// or could not load after m, and which happened.
func (o *engineOutput) loraSince(m outputMark) (line string, missing, failed bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.loraLine, o.loraMissing > m.loraMissing, o.loraFailed > m.loraFailed
}

// refusedSince returns what the engine said when it refused the model's
// files after m (its last refusal line, and its first when they differ),
// and whether it did. A file the engine did not find is no refusal: the
// cache holds the files while the engine runs, so that is a fault of the
// host worth a retry, not of the model.
func (o *engineOutput) refusedSince(m outputMark) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.refusals == m.refusals || o.missing > m.missing {
		return "", false
	}
	why := o.lastRefusal
	if o.firstRefusal != o.lastRefusal {
		why += " (first: " + o.firstRefusal + ")"
	}
	return why, true
}

// missingSince returns the engine's line for a model file it did not
// find after m, if any.
func (o *engineOutput) missingSince(m outputMark) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.missingLine, o.missing > m.missing
}

// loadedSince returns the weights' load time the engine reported after m,
// and whether it reported any (it loads a model's weights on first use).
func (o *engineOutput) loadedSince(m outputMark) (time.Duration, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.loaded, o.loads > m.loads
}

// setJob routes progress bars with total steps to fn, until the next call.
func (o *engineOutput) setJob(steps int, fn func(step, total int)) { o.setBatch(steps, 1, fn) }

// setBatch is setJob for a batch of runs images, each drawing a bar of
// steps: fn gets the steps of all images together.
func (o *engineOutput) setBatch(steps, runs int, fn func(step, total int)) {
	o.mu.Lock()
	o.steps, o.runs, o.round, o.progress, o.lastStep = steps, max(runs, 1), 0, fn, 0
	o.mu.Unlock()
}

// drain waits up to d for the current job's last step and the engine's
// end-of-generation line (after m) to be read: an engine server answers
// right after logging them, and the answer can overtake them on their way
// through the output pipe.
func (o *engineOutput) drain(m outputMark, d time.Duration) {
	o.waitUntil(d, func() bool {
		return (o.steps == 0 || (o.round >= o.runs-1 && o.lastStep >= o.steps)) && o.done > m.done
	})
}

// waitUntil polls cond, with o.mu held, until it holds or max has passed.
func (o *engineOutput) waitUntil(max time.Duration, cond func() bool) {
	deadline := time.Now().Add(max)
	for {
		o.mu.Lock()
		ok := cond()
		o.mu.Unlock()
		if ok || !time.Now().Before(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// errorSince is lastLine's text when the engine logged an error line after
// the first n (a server's output spans many jobs), else "".
func (o *engineOutput) errorSince(n int) string {
	if o.errorLines() <= n {
		return ""
	}
	return lastLine(o)
}

// errorLines is how many error-level lines the engine has logged so far.
func (o *engineOutput) errorLines() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.errCount
}

// awaitError waits up to max for the engine to log an error line beyond
// the first n: a server's error answer can overtake the error lines it logs
// on their way through the output pipe.
func (o *engineOutput) awaitError(n int, max time.Duration) {
	o.waitUntil(max, func() bool { return o.errCount > n })
}

// stream returns the writer for stream 0 (stdout) or 1 (stderr).
func (o *engineOutput) stream(i int) *streamWriter { return &streamWriter{o: o, i: i} }

type streamWriter struct {
	o *engineOutput
	i int
}

func (w *streamWriter) Write(b []byte) (int, error) {
	w.o.write(w.i, b)
	return len(b), nil
}

func (o *engineOutput) write(i int, b []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	buf := append(o.partial[i], b...)
	for {
		j := bytes.IndexAny(buf, "\r\n")
		if j < 0 {
			break
		}
		o.line(i, string(buf[:j]))
		buf = buf[j+1:]
	}
	// A progress bar is only ended by the next \r: look at what is there.
	if len(buf) > 0 {
		o.scanProgress(string(buf))
	}
	if len(buf) > 4096 { // a runaway line: keep its end
		buf = buf[len(buf)-4096:]
	}
	o.partial[i] = append([]byte(nil), buf...)
}

func (o *engineOutput) line(i int, s string) {
	s = strings.TrimSpace(ansiRE.ReplaceAllString(s, ""))
	if s == "" {
		return
	}
	if o.scanProgress(s) {
		return // progress bars would flush everything else out of the tail
	}
	o.tail = appendTail(o.tail, s)
	if isErrorLine(s) {
		o.errCount++
	}
	switch {
	case missingFileRE.MatchString(s):
		o.missing++
		o.missingLine = s
	case refusalRE.MatchString(s):
		o.refusals++
		if o.firstRefusal == "" {
			o.firstRefusal = s
		}
		o.lastRefusal = s
	}
	if doneRE.MatchString(s) {
		o.done++
	}
	if m := batchRE.FindStringSubmatch(s); m != nil {
		// The next image of a batch: its bar starts again from step 1.
		if k, err := strconv.Atoi(m[1]); err == nil && k >= 1 && k <= o.runs && k-1 != o.round {
			o.round, o.lastStep = k-1, 0
		}
	}
	switch {
	case loraMissingRE.MatchString(s):
		o.loraMissing++
		o.loraLine = s
	case loraFailedRE.MatchString(s):
		o.loraFailed++
		o.loraLine = s
	}
	if m := loadRE.FindStringSubmatch(s); m != nil {
		if sec, err := strconv.ParseFloat(m[1], 64); err == nil {
			o.loaded += time.Duration(sec * float64(time.Second))
			o.loads++
		}
	}
	if i == 1 {
		o.errTail = appendTail(o.errTail, s)
	}
}

// scanProgress reports a progress bar in s; it returns whether s was one.
func (o *engineOutput) scanProgress(s string) bool {
	m := progressRE.FindStringSubmatch(s)
	if m == nil {
		return false
	}
	step, err1 := strconv.Atoi(m[1])
	total, err2 := strconv.Atoi(m[2])
	if err1 == nil && err2 == nil && o.steps > 0 && total == o.steps && step > o.lastStep && step <= total && o.progress != nil {
		o.lastStep = step
		o.progress(o.round*total+step, o.runs*total)
	}
	return true
}

func appendTail(t []string, s string) []string {
	if len(s) > 1000 {
		s = s[:1000] + "…"
	}
	t = append(t, s)
	if len(t) > tailLines {
		t = append(t[:0], t[len(t)-tailLines:]...)
	}
	return t
}

// lastError is the engine's own last error line: the last line logged at
// error level, else the last line of stderr.
func (o *engineOutput) lastError() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, lines := range [][]string{o.tail, o.errTail} {
		for k := len(lines) - 1; k >= 0; k-- {
			if isErrorLine(lines[k]) {
				return lines[k]
			}
		}
	}
	if n := len(o.errTail); n > 0 {
		return o.errTail[n-1]
	}
	return ""
}

// tailText is the kept output, oldest first.
func (o *engineOutput) tailText() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.tail, "\n")
}

func isErrorLine(s string) bool {
	l := strings.ToLower(s)
	return strings.HasPrefix(l, "[error]") || strings.Contains(l, "[error]") ||
		strings.HasPrefix(l, "error:") || strings.Contains(l, " error: ")
}
