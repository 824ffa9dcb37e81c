package cli

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

// progressLine is one JSON progress line; MBPerS is nil when absent.
type progressLine struct {
	Event  string   `json:"event"`
	What   string   `json:"what"`
	Done   int64    `json:"done"`
	Total  int64    `json:"total"`
	MBPerS *float64 `json:"mb_per_s"`
}

func parseProgressLines(t *testing.T, text string) []progressLine {
	t.Helper()
	var out []progressLine
	for _, l := range strings.Split(text, "\n") {
		if !strings.Contains(l, `"event":"progress"`) {
			continue
		}
		var pl progressLine
		if err := json.Unmarshal([]byte(l), &pl); err != nil {
			t.Fatalf("progress line %q: %v", l, err)
		}
		out = append(out, pl)
	}
	return out
}

// testProgress is a progress on a buffer whose clock the test moves.
type testProgress struct {
	*Progress
	buf   *bytes.Buffer
	clock time.Time
}

func newTestProgress(tty bool) *testProgress {
	tp := &testProgress{buf: &bytes.Buffer{}, clock: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	tp.Progress = &Progress{w: tp.buf, label: "pull s3://m/x", tty: tty, now: func() time.Time { return tp.clock }}
	return tp
}

// at reports done of total bytes d after the clock's start.
func (tp *testProgress) at(d time.Duration, done, total int64) {
	tp.clock = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(d)
	tp.Update(done, total)
}

func rateOf(pl progressLine) string {
	if pl.MBPerS == nil {
		return "none"
	}
	return strconv.FormatFloat(*pl.MBPerS, 'f', -1, 64)
}

// The speed is bytes moved over the wall time they took, both counted
// from the first report: never bytes over microseconds, never the bytes a
// resumed fetch found in place.
func TestProgressJSONSpeed(t *testing.T) {
	const total = 64_000_000
	type report struct {
		at   time.Duration
		done int64
	}
	tests := []struct {
		name    string
		reports []report
		want    []string // mb_per_s of each printed line, "none" when absent
	}{
		{"steady 20 MB/s", []report{{0, 4_000_000}, {time.Second, 24_000_000}, {2 * time.Second, 44_000_000}, {3 * time.Second, total}},
			[]string{"none", "20", "20", "20"}},
		// The only report of a fast fetch is its last: the rate is unknown,
		// not 64 MB over the microseconds since the bar appeared.
		{"one report", []report{{0, total}}, []string{"none"}},
		// A resumed fetch found 48 MB on disk: 16 MB moved in 2 s.
		{"resumed", []report{{0, 48_000_000}, {time.Second, 56_000_000}, {2 * time.Second, total}}, []string{"none", "8", "8"}},
		// An upload body read once to sign it (fast, local), then rewound
		// and sent: the speed is the second pass's.
		// (The report after the rewind falls within progressInterval of
		// the line before, so it is not printed.)
		{"rewound", []report{{0, 32_768}, {10 * time.Millisecond, total}, {20 * time.Millisecond, 4_000_000}, {4*time.Second + 20*time.Millisecond, total}},
			[]string{"none", "none", "15"}},
		// Within progressInterval of the last line only the end is printed.
		{"throttled", []report{{0, 0}, {100 * time.Millisecond, 1_000_000}, {400 * time.Millisecond, 2_000_000}, {800 * time.Millisecond, total}},
			[]string{"none", "80"}},
		{"short window", []report{{0, 0}, {10 * time.Millisecond, total}}, []string{"none", "none"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTestProgress(false)
			for _, r := range tc.reports {
				tp.at(r.at, r.done, total)
			}
			lines := parseProgressLines(t, tp.buf.String())
			var got []string
			for _, l := range lines {
				if l.What != "pull s3://m/x" || l.Total != total {
					t.Errorf("line %+v", l)
				}
				got = append(got, rateOf(l))
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("mb_per_s = %v, want %v\n%s", got, tc.want, tp.buf.String())
			}
			if last := lines[len(lines)-1]; last.Done != tc.reports[len(tc.reports)-1].done {
				t.Errorf("last line done = %d, want %d", last.Done, tc.reports[len(tc.reports)-1].done)
			}
		})
	}
}

func TestProgressTerminal(t *testing.T) {
	tp := newTestProgress(true)
	tp.at(0, 0, 100_000_000)
	tp.at(2*time.Second, 50_000_000, 100_000_000)
	tp.at(2*time.Second+time.Millisecond, 100_000_000, 100_000_000)
	tp.Done()
	want := "\rpull s3://m/x:   0.0% 0/100000000 bytes - MB/s\x1b[K" +
		"\rpull s3://m/x:  50.0% 50000000/100000000 bytes 25.0 MB/s\x1b[K" +
		"\rpull s3://m/x: 100.0% 100000000/100000000 bytes 50.0 MB/s\x1b[K\n"
	if got := tp.buf.String(); got != want {
		t.Errorf("terminal output\n%q\nwant\n%q", got, want)
	}
	// A transfer whose only report is its last shows no speed.
	tp = newTestProgress(true)
	tp.at(0, 67108864, 67108864)
	if got, want := tp.buf.String(), "\rpull s3://m/x: 100.0% 67108864/67108864 bytes - MB/s\x1b[K"; got != want {
		t.Errorf("terminal output %q, want %q", got, want)
	}
}
