package modelcache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/s3x"
)

const testPartSize = 256 << 10

// openWith opens a cache with small parts, so that multi-part fetches stay
// small in tests.
func openWith(t *testing.T, root string, src Source, o Options) *Cache {
	t.Helper()
	if o.PartSize == 0 {
		o.PartSize = testPartSize
	}
	c, err := OpenWith(root, src, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setBackoff sets the retry backoff for one test.
func setBackoff(t *testing.T, lo, hi time.Duration) {
	oldLo, oldHi := fetchBackoffMin, fetchBackoffMax
	fetchBackoffMin, fetchBackoffMax = lo, hi
	t.Cleanup(func() { fetchBackoffMin, fetchBackoffMax = oldLo, oldHi })
}

// progressParts returns how many parts tmp/<key>.progress records as done
// (-1 when there is no usable log).
func progressParts(root, key string) int {
	data, err := os.ReadFile(filepath.Join(root, "tmp", key+".progress"))
	if err != nil {
		return -1
	}
	_, done, ok := parseProgress(data)
	if !ok {
		return -1
	}
	n := 0
	for _, d := range done {
		if d {
			n++
		}
	}
	return n
}

func TestFetchParallelParts(t *testing.T) {
	e := newEnv(t)
	const size = 5*testPartSize + 1234
	m, data := e.push(t, "parts", size)
	src := &testSource{Source: e.src}
	root := t.TempDir()
	var mu sync.Mutex
	var calls []FetchProgress
	c := openWith(t, root, src, Options{FetchConcurrency: 3, Progress: func(p FetchProgress) {
		mu.Lock()
		calls = append(calls, p)
		mu.Unlock()
	}})
	mod := acquire(t, c, m)
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("mapped bytes differ from the pushed file")
	}
	if got := src.ranged.Load(); got != 6 {
		t.Errorf("ranged GETs = %d, want 6", got)
	}
	if got := src.gets.Load(); got != 6 {
		t.Errorf("GETs = %d, want 6 (no whole-object GET)", got)
	}
	if r := mod.Report; r.FetchedBytes != size || r.Hit || r.Fetch <= 0 || r.Verify <= 0 {
		t.Errorf("report = %+v", r)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ after install = %v", names)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) == 0 {
		t.Fatal("Progress never called")
	}
	last := calls[len(calls)-1]
	want := FetchProgress{URL: m.Files[0].URL, Digest: m.Files[0].Digest, Done: size, Total: size, Finished: true}
	if last != want {
		t.Errorf("last progress = %+v, want %+v", last, want)
	}
}

// A small object is one plain GET, not a ranged one.
func TestFetchSmallObjectIsOneGet(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "small", testPartSize)
	src := &testSource{Source: e.src}
	mod := acquire(t, openWith(t, t.TempDir(), src, Options{}), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) || src.gets.Load() != 1 || src.ranged.Load() != 0 {
		t.Errorf("gets %d, ranged %d", src.gets.Load(), src.ranged.Load())
	}
}

// A part that fails mid-body is retried from where it broke: no byte is
// downloaded twice.
func TestFetchRetriesPartFromWhereItBroke(t *testing.T) {
	setBackoff(t, time.Millisecond, 10*time.Millisecond)
	e := newEnv(t)
	const size = 4 * testPartSize
	m, data := e.push(t, "flaky-part", size)
	src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
		if n == 2 {
			return &breakingBody{ReadCloser: rc, left: 100 << 10}
		}
		return rc
	}}
	root := t.TempDir()
	mod := acquire(t, openWith(t, root, src, Options{FetchConcurrency: 2}), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("mapped bytes differ")
	}
	if got := src.gets.Load(); got != 5 {
		t.Errorf("GETs = %d, want 5 (4 parts, one retried)", got)
	}
	if got := mod.Report.FetchedBytes; got != size {
		t.Errorf("FetchedBytes = %d, want %d: the retry should resume mid-part", got, size)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ = %v", names)
	}
}

// A broken whole-object GET is resumed with a ranged GET of the rest.
func TestFetchRetriesSingleGetFromWhereItBroke(t *testing.T) {
	setBackoff(t, time.Millisecond, 10*time.Millisecond)
	e := newEnv(t)
	const size = testPartSize - 10
	m, data := e.push(t, "flaky-single", size)
	src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
		if n == 1 {
			return &breakingBody{ReadCloser: rc, left: 100 << 10}
		}
		return rc
	}}
	mod := acquire(t, openWith(t, t.TempDir(), src, Options{}), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("mapped bytes differ")
	}
	if src.gets.Load() != 2 || src.ranged.Load() != 1 || mod.Report.FetchedBytes != size {
		t.Errorf("gets %d, ranged %d, fetched %d; want 2, 1, %d", src.gets.Load(), src.ranged.Load(), mod.Report.FetchedBytes, size)
	}
}

// blockingBody delivers nothing until it is closed: a connection that
// went silent.
type blockingBody struct {
	io.ReadCloser
	once   sync.Once
	closed chan struct{}
}

func newBlockingBody(rc io.ReadCloser) *blockingBody {
	return &blockingBody{ReadCloser: rc, closed: make(chan struct{})}
}

func (b *blockingBody) Read([]byte) (int, error) {
	<-b.closed
	return 0, errors.New("read on closed body")
}

func (b *blockingBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return b.ReadCloser.Close()
}

func TestFetchStallWatchdog(t *testing.T) {
	setBackoff(t, time.Millisecond, 10*time.Millisecond)
	e := newEnv(t)
	for _, tt := range []struct {
		name  string
		size  int
		stall int64 // which GET stalls
		gets  int64
	}{
		{name: "single GET", size: testPartSize / 2, stall: 1, gets: 2},
		{name: "ranged part", size: 4 * testPartSize, stall: 3, gets: 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, data := e.push(t, "stall-"+strings.ReplaceAll(strings.ToLower(tt.name), " ", "-"), tt.size)
			src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
				if n == tt.stall {
					return newBlockingBody(rc)
				}
				return rc
			}}
			const stall = 300 * time.Millisecond
			c := openWith(t, t.TempDir(), src, Options{FetchConcurrency: 2, StallTimeout: stall})
			start := time.Now()
			mod := acquire(t, c, m)
			if d := time.Since(start); d > 10*stall {
				t.Errorf("fetch with one stalled part took %v (stall timeout %v)", d, stall)
			}
			if !bytes.Equal(mod.Blobs[0].Data, data) {
				t.Fatal("mapped bytes differ")
			}
			if got := src.gets.Load(); got != tt.gets {
				t.Errorf("GETs = %d, want %d", got, tt.gets)
			}
		})
	}
}

// A stalled attempt that uses up the retries fails with errStalled.
func TestFetchStallGivesUp(t *testing.T) {
	setBackoff(t, time.Millisecond, 10*time.Millisecond)
	e := newEnv(t)
	m, _ := e.push(t, "always-stalls", 1000)
	src := &testSource{Source: e.src, wrapBody: func(rc io.ReadCloser, n int64) io.ReadCloser {
		return newBlockingBody(rc)
	}}
	root := t.TempDir()
	c := openWith(t, root, src, Options{StallTimeout: 50 * time.Millisecond, FetchRetries: 2})
	_, err := c.Acquire(t.Context(), m)
	if !errors.Is(err, errStalled) || !strings.Contains(err.Error(), "3 attempts") {
		t.Fatalf("err = %v, want a stall after 3 attempts", err)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ = %v", names)
	}
}

// Cancelling the context while a part waits out its backoff returns at
// once: backoff is not an uninterruptible sleep.
func TestFetchBackoffHonoursContext(t *testing.T) {
	setBackoff(t, time.Hour, time.Hour)
	e := newEnv(t)
	m, _ := e.push(t, "backoff", 3*testPartSize)
	failed := make(chan struct{})
	var once sync.Once
	src := &testSource{Source: e.src, beforeGet: func(ctx context.Context, n int64) error {
		once.Do(func() { close(failed) })
		return errInjected
	}}
	c := openWith(t, t.TempDir(), src, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	var cancelled time.Time
	go func() {
		<-failed
		time.Sleep(50 * time.Millisecond) // into the backoff
		cancelled = time.Now()
		cancel()
	}()
	_, err := c.Acquire(ctx, m)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(cancelled); d > time.Second {
		t.Errorf("Acquire returned %v after cancellation", d)
	}
}

// An object replaced between two parts is caught by the ETag pin: nothing
// is installed, no partial is kept, and after resolving again the new
// object is fetched.
func TestFetchObjectReplacedBetweenParts(t *testing.T) {
	e := newEnv(t)
	const key = "raw/replaced.safetensors"
	const size = 4 * testPartSize
	e.putObject(t, key, randomBytes(size, 21))
	m, err := e.reg.Resolve(t.Context(), "s3://models/"+key)
	if err != nil {
		t.Fatal(err)
	}
	data2 := randomBytes(size, 22) // same size: only the ETag tells
	src := &testSource{Source: e.src, beforeGet: func(ctx context.Context, n int64) error {
		if n == 3 {
			e.putObject(t, key, data2) // after two parts landed
		}
		return nil
	}}
	root := t.TempDir()
	c := openWith(t, root, src, Options{FetchConcurrency: 1})
	_, err = c.Acquire(t.Context(), m)
	if !errors.Is(err, ErrChanged) {
		t.Fatalf("err = %v, want ErrChanged", err)
	}
	if got := src.gets.Load(); got != 3 {
		t.Errorf("GETs = %d, want 3 (no retry of a changed object)", got)
	}
	for _, d := range []string{"blobs", "tmp", "refs"} {
		if names := dirNames(t, filepath.Join(root, d)); len(names) != 0 {
			t.Errorf("%s/ = %v, want empty", d, names)
		}
	}

	m2, err := e.reg.Resolve(t.Context(), "s3://models/"+key)
	if err != nil {
		t.Fatal(err)
	}
	mod := acquire(t, c, m2)
	if !bytes.Equal(mod.Blobs[0].Data, data2) || mod.Report.FetchedBytes != size {
		t.Errorf("after resolving again: equal=%v report=%+v", bytes.Equal(mod.Blobs[0].Data, data2), mod.Report)
	}
}

// A fetch interrupted in this process (its context cancelled) keeps its
// finished parts; the next Acquire downloads only the rest. If the object
// changed meanwhile, the partial is dropped and the new version fetched.
func TestFetchResumeInProcess(t *testing.T) {
	e := newEnv(t)
	const size = 16 * testPartSize
	m, data := e.push(t, "resume", size)
	h, _ := parseDigest(m.Files[0].Digest)
	key := blobKey(h)
	root := t.TempDir()

	ctx, cancel := context.WithCancel(t.Context())
	src := &testSource{Source: e.src, beforeGet: func(_ context.Context, n int64) error {
		if n == 7 {
			cancel()
			return context.Canceled
		}
		return nil
	}}
	_, err := openWith(t, root, src, Options{FetchConcurrency: 2}).Acquire(ctx, m)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	done := progressParts(root, key)
	if done < 4 || done > 6 {
		t.Fatalf("progress records %d parts after 6 GETs, want 4..6", done)
	}

	src2 := &testSource{Source: e.src}
	mod := acquire(t, openWith(t, root, src2, Options{}), m) // Open keeps the partial
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("resumed fetch mapped the wrong bytes")
	}
	if want := int64(size - done*testPartSize); mod.Report.FetchedBytes != want {
		t.Errorf("resumed fetch downloaded %d bytes, want %d", mod.Report.FetchedBytes, want)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ after install = %v", names)
	}
}

func TestFetchResumeDropsChangedObject(t *testing.T) {
	e := newEnv(t)
	const key = "raw/changing.safetensors"
	const size = 8 * testPartSize
	e.putObject(t, key, randomBytes(size, 31))
	m, err := e.reg.Resolve(t.Context(), "s3://models/"+key)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	src := &testSource{Source: e.src, beforeGet: func(_ context.Context, n int64) error {
		if n == 4 {
			cancel()
			return context.Canceled
		}
		return nil
	}}
	if _, err := openWith(t, root, src, Options{FetchConcurrency: 1}).Acquire(ctx, m); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := progressParts(root, refKey(sha256Hex([]byte("s3://models/"+key)))); n != 3 {
		t.Fatalf("progress records %d parts, want 3", n)
	}

	data2 := randomBytes(size, 32)
	e.putObject(t, key, data2)
	m2, err := e.reg.Resolve(t.Context(), "s3://models/"+key)
	if err != nil {
		t.Fatal(err)
	}
	mod := acquire(t, openWith(t, root, e.src, Options{}), m2)
	if !bytes.Equal(mod.Blobs[0].Data, data2) || mod.Report.FetchedBytes != size {
		t.Errorf("equal=%v report=%+v; want the new object downloaded in full", bytes.Equal(mod.Blobs[0].Data, data2), mod.Report)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ = %v", names)
	}
}

func TestOpenKeepsResumablePartials(t *testing.T) {
	root := t.TempDir()
	c := openCache(t, root, nil)
	tmp := filepath.Join(root, "tmp")
	hdr := func(size, part int64) string {
		b, _ := json.Marshal(progressHeader{V: progressVersion, URL: "s3://b/k", ETag: `"e"`, Size: size, PartSize: part})
		return string(b) + "\n"
	}
	installed := strings.Repeat("9", 64)
	if err := os.WriteFile(c.blobPath(installed), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-partialMaxAge - time.Hour)
	tests := []struct {
		name     string
		key      string
		partSize int64 // size of .part; -1: none
		progress string
		mtime    time.Time
		keep     bool
	}{
		{name: "valid", key: blobKey(strings.Repeat("1", 64)), partSize: 1000, progress: hdr(1000, 300) + "0\n2\n", keep: true},
		{name: "valid ref, torn tail", key: refKey(strings.Repeat("2", 64)), partSize: 1000, progress: hdr(1000, 300) + "1\n3", keep: true},
		{name: "nothing finished", key: blobKey(strings.Repeat("3", 64)), partSize: 1000, progress: hdr(1000, 300)},
		{name: "size differs", key: blobKey(strings.Repeat("4", 64)), partSize: 999, progress: hdr(1000, 300) + "0\n"},
		{name: "garbage", key: blobKey(strings.Repeat("5", 64)), partSize: 1000, progress: "garbage\n0\n"},
		{name: "part out of range", key: blobKey(strings.Repeat("6", 64)), partSize: 1000, progress: hdr(1000, 300) + "4\n"},
		{name: "no progress", key: blobKey(strings.Repeat("7", 64)), partSize: 1000},
		{name: "no part file", key: blobKey(strings.Repeat("8", 64)), partSize: -1, progress: hdr(1000, 300) + "0\n"},
		{name: "blob installed", key: blobKey(installed), partSize: 1000, progress: hdr(1000, 300) + "0\n"},
		{name: "too old", key: blobKey(strings.Repeat("a", 64)), partSize: 1000, progress: hdr(1000, 300) + "0\n", mtime: old},
	}
	var want []string
	for _, tt := range tests {
		if tt.partSize >= 0 {
			if err := os.WriteFile(filepath.Join(tmp, tt.key+".part"), make([]byte, tt.partSize), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if tt.progress != "" {
			p := filepath.Join(tmp, tt.key+".progress")
			if err := os.WriteFile(p, []byte(tt.progress), 0o644); err != nil {
				t.Fatal(err)
			}
			if !tt.mtime.IsZero() {
				if err := os.Chtimes(p, tt.mtime, tt.mtime); err != nil {
					t.Fatal(err)
				}
			}
		}
		if tt.keep {
			want = append(want, tt.key+".part", tt.key+".progress")
		}
	}
	openCache(t, root, nil)
	got := dirNames(t, tmp)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("tmp/ after Open = %v, want %v", got, want)
	}
}

func FuzzParseProgress(f *testing.F) {
	f.Add([]byte(`{"v":1,"url":"s3://b/k","etag":"\"e\"","size":1000,"part_size":300}` + "\n0\n3\n"))
	f.Add([]byte(`{"v":1,"etag":"e","size":1,"part_size":1}` + "\n0"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		hdr, done, ok := parseProgress(data)
		if ok && (hdr.Size <= 0 || hdr.PartSize <= 0 || len(done) != hdr.parts() || len(done) > maxParts) {
			t.Fatalf("accepted %+v with %d parts", hdr, len(done))
		}
	})
}

// --- across processes ---

// The test binary doubles as a fetching helper process; see startFetcher.
const fetchHelperEnv = "GENFLEET_MODELCACHE_TEST_FETCH"

// fetchSpec tells a helper process what to do.
type fetchSpec struct {
	Root        string     `json:"root"`
	S3          s3x.Config `json:"s3"`
	Manifest    *Manifest  `json:"manifest"`
	PartSize    int64      `json:"part_size"`
	Concurrency int        `json:"concurrency"`
	// ReadDelay slows every read of a body (at most 32 KiB each), so that
	// the parent can observe and interrupt the fetch.
	ReadDelay time.Duration `json:"read_delay"`
	// Acquirers is how many goroutines acquire, each with its own Cache.
	Acquirers int `json:"acquirers"`
	// WaitGo makes the helper print "ready" and wait for a line on stdin
	// before acquiring.
	WaitGo bool `json:"wait_go"`
}

// fetchResult is what a helper prints (one JSON line) when it is done.
type fetchResult struct {
	GETs    int64    `json:"gets"`
	Fetched []int64  `json:"fetched"`
	Sums    []string `json:"sums"`
	Err     string   `json:"err,omitempty"`
}

// slowBody passes reads on in small pieces, each after a delay.
type slowBody struct {
	io.ReadCloser
	delay time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	time.Sleep(b.delay)
	return b.ReadCloser.Read(p[:min(len(p), 32<<10)])
}

func slowSource(src Source, delay time.Duration) *testSource {
	return &testSource{Source: src, wrapBody: func(rc io.ReadCloser, _ int64) io.ReadCloser {
		if delay == 0 {
			return rc
		}
		return &slowBody{ReadCloser: rc, delay: delay}
	}}
}

// fetchHelper is the helper process's main.
func fetchHelper(specJSON string) {
	var spec fetchSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "bad spec:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	cl, err := s3x.NewClient(ctx, spec.S3)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	src := slowSource(NewS3Source(cl), spec.ReadDelay)
	caches := make([]*Cache, spec.Acquirers)
	for i := range caches {
		caches[i], err = OpenWith(spec.Root, src, Options{PartSize: spec.PartSize, FetchConcurrency: spec.Concurrency})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	if spec.WaitGo {
		fmt.Println("ready")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			os.Exit(2)
		}
	}
	res := fetchResult{Fetched: make([]int64, len(caches)), Sums: make([]string, len(caches))}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, c := range caches {
		wg.Go(func() {
			mod, err := c.Acquire(ctx, spec.Manifest)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Err = err.Error()
				return
			}
			res.Fetched[i] = mod.Report.FetchedBytes
			res.Sums[i] = "sha256:" + sha256Hex(mod.Blobs[0].Data)
			mod.Close()
		})
	}
	wg.Wait()
	res.GETs = src.gets.Load()
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

// helper is a running helper process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	lines chan string // stdout lines; closed at EOF
}

func startFetcher(t *testing.T, spec fetchSpec) *helper {
	t.Helper()
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fetchHelperEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(h.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	t.Cleanup(h.kill)
	return h
}

// kill SIGKILLs the helper: no cleanup of any kind runs, as in a crash.
func (h *helper) kill() {
	if h.cmd.ProcessState == nil {
		_ = h.cmd.Process.Kill()
		_ = h.cmd.Wait()
	}
}

func (h *helper) line(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			t.Fatal("helper exited without output")
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("no output from helper within %v", timeout)
	}
	return ""
}

// A fetch SIGKILLed at random points (before any part finished, after a
// few, mid-part) resumes each time from its saved progress, and finally
// ends with a verified blob and nothing left in tmp/.
func TestFetchResumesAfterSIGKILL(t *testing.T) {
	e := newEnv(t)
	const parts = 32
	const size = parts * testPartSize
	m, data := e.push(t, "killed", size)
	h, _ := parseDigest(m.Files[0].Digest)
	key := blobKey(h)
	root := t.TempDir()
	partPath := filepath.Join(root, "tmp", key+".part")
	spec := fetchSpec{
		Root: root, S3: e.s3.Config, Manifest: m, PartSize: testPartSize, Concurrency: 2,
		ReadDelay: 4 * time.Millisecond, Acquirers: 1,
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	// Each point: kill once the progress log records at least this many
	// parts, then after a random extra delay (mostly mid-part).
	points := []int{0, 2, 5, 9, 14, 20}
	last := -1
	for _, atLeast := range points {
		p := startFetcher(t, spec)
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := os.Stat(partPath); err == nil && progressParts(root, key) >= atLeast {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("progress never reached %d parts", atLeast)
			}
			select {
			case l, ok := <-p.lines:
				if ok {
					t.Fatalf("helper finished before the kill point (%d parts): %s; slow it down", atLeast, l)
				}
			case <-time.After(2 * time.Millisecond):
			}
		}
		time.Sleep(time.Duration(rng.IntN(25)) * time.Millisecond)
		p.kill()
		got := progressParts(root, key)
		t.Logf("killed at >= %d parts: progress records %d", atLeast, got)
		if got < last {
			t.Errorf("progress went back from %d to %d parts: a resume started over", last, got)
		}
		last = got
	}
	if last < 14 || last >= parts {
		t.Fatalf("progress records %d parts after the last kill, want 14..%d", last, parts-1)
	}

	// This process picks up where the last helper died.
	src := &testSource{Source: e.src}
	mod := acquire(t, openWith(t, root, src, Options{}), m)
	if !bytes.Equal(mod.Blobs[0].Data, data) {
		t.Fatal("resumed fetch mapped the wrong bytes")
	}
	if r := mod.Report; r.FetchedBytes <= 0 || r.FetchedBytes > int64(size-last*testPartSize) {
		t.Errorf("resumed fetch downloaded %d bytes of %d; %d parts were saved", r.FetchedBytes, size, last)
	}
	if got, max := src.gets.Load(), int64(parts-last); got > max {
		t.Errorf("resumed fetch made %d GETs, want at most %d", got, max)
	}
	if names := dirNames(t, filepath.Join(root, "tmp")); len(names) != 0 {
		t.Errorf("tmp/ after install = %v", names)
	}
}

// Eight acquirers in two processes (four each, each with its own Cache on
// one root) ask for one missing model at once: exactly one downloads it.
func TestFetchOnceAcrossProcesses(t *testing.T) {
	e := newEnv(t)
	const size = 8 * testPartSize
	m, data := e.push(t, "contended", size)
	root := t.TempDir()
	const perProc = 4
	spec := fetchSpec{
		Root: root, S3: e.s3.Config, Manifest: m, PartSize: testPartSize, Concurrency: 2,
		ReadDelay: 2 * time.Millisecond, Acquirers: perProc, WaitGo: true,
	}
	child := startFetcher(t, spec)
	if l := child.line(t, 30*time.Second); l != "ready" {
		t.Fatalf("helper said %q", l)
	}
	src := slowSource(e.src, spec.ReadDelay)
	caches := make([]*Cache, perProc)
	for i := range caches {
		caches[i] = openWith(t, root, src, Options{FetchConcurrency: 2})
	}
	if _, err := io.WriteString(child.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	var fetchers atomic.Int64
	var fetched atomic.Int64
	var wg sync.WaitGroup
	for i := range caches {
		wg.Go(func() {
			mod, err := caches[i].Acquire(t.Context(), m)
			if err != nil {
				t.Errorf("acquirer %d: %v", i, err)
				return
			}
			defer mod.Close()
			if !bytes.Equal(mod.Blobs[0].Data, data) {
				t.Errorf("acquirer %d mapped different bytes", i)
			}
			if n := mod.Report.FetchedBytes; n > 0 {
				fetchers.Add(1)
				fetched.Add(n)
			}
		})
	}
	wg.Wait()
	var res fetchResult
	if err := json.Unmarshal([]byte(child.line(t, 30*time.Second)), &res); err != nil {
		t.Fatal(err)
	}
	if res.Err != "" {
		t.Fatalf("helper: %s", res.Err)
	}
	for i, n := range res.Fetched {
		if res.Sums[i] != m.Files[0].Digest {
			t.Errorf("helper acquirer %d mapped %s, want %s", i, res.Sums[i], m.Files[0].Digest)
		}
		if n > 0 {
			fetchers.Add(1)
			fetched.Add(n)
		}
	}
	if got := src.gets.Load() + res.GETs; got != 8 {
		t.Errorf("GETs across both processes = %d (here %d, helper %d), want 8 (one download of 8 parts)",
			got, src.gets.Load(), res.GETs)
	}
	if fetchers.Load() != 1 || fetched.Load() != size {
		t.Errorf("%d acquirers downloaded %d bytes in all; want exactly one downloading %d", fetchers.Load(), fetched.Load(), size)
	}
}
