package modelcache

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The test binary doubles as helper processes for the tests in this file
// (the lock holder of helpers_test.go is started through TestMain; these
// start from init so that file stays untouched).
const (
	readerEnv = "GENFLEET_MODELCACHE_TEST_READER"
	mlockEnv  = "GENFLEET_MODELCACHE_TEST_MLOCK"
)

func init() {
	if spec := os.Getenv(readerEnv); spec != "" {
		os.Exit(slowReader(spec))
	}
	if spec := os.Getenv(mlockEnv); spec != "" {
		os.Exit(mlockChild(spec))
	}
}

// helperSpec is what a helper process is told: "<root> <hex> <size>".
func helperSpec(root, hex string, size int64) string {
	return fmt.Sprintf("%s %s %d", root, hex, size)
}

func parseHelperSpec(spec string) (root, hex string, size int64, err error) {
	f := strings.Fields(spec)
	if len(f) != 3 {
		return "", "", 0, fmt.Errorf("bad spec %q", spec)
	}
	size, err = strconv.ParseInt(f[2], 10, 64)
	return f[0], f[1], size, err
}

// importedManifest is a manifest for a blob imported into a cache: its URL
// is never fetched, since the blob is there.
func importedManifest(digest string, size int64) *Manifest {
	return &Manifest{Schema: ManifestSchema, Files: []File{{
		Name: "model.safetensors", URL: "s3://models/imported/" + digest[len("sha256:"):], Size: size, Digest: digest,
	}}}
}

// slowReader is a helper process: it acquires the blob (mmap), says
// "mapped", hashes the first half of the mapping, says "half", waits for a
// line on stdin, hashes the rest a page at a time with pauses, says
// "sum <hex>", closes the model, says "closed" and waits for stdin to close.
// A SIGBUS anywhere kills it, which the parent sees as a missing line.
func slowReader(spec string) int {
	root, hx, size, err := parseHelperSpec(spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c, err := Open(root, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	m, err := c.Acquire(context.Background(), importedManifest("sha256:"+hx, size))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	in := bufio.NewReader(os.Stdin)
	data := m.Blobs[0].Data
	fmt.Println("mapped")
	h := sha256.New()
	half := len(data) / 2 &^ (os.Getpagesize() - 1)
	h.Write(data[:half])
	fmt.Println("half")
	if _, err := in.ReadString('\n'); err != nil {
		return 2
	}
	ps := os.Getpagesize()
	for i := half; i < len(data); i += ps {
		h.Write(data[i:min(i+ps, len(data))])
		if (i/ps)%64 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	fmt.Println("sum " + hex.EncodeToString(h.Sum(nil)))
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("closed")
	io.Copy(io.Discard, in)
	return 0
}

// mlockChild is a helper process that gives up CAP_IPC_LOCK (which lets
// root lock without limit), sets RLIMIT_MEMLOCK to 64 KiB and acquires the
// blob with Mlock. It prints "err: <message>", "ok" or "skip: <why>".
func mlockChild(spec string) int {
	root, hx, size, err := parseHelperSpec(spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// Capabilities are per thread: drop it on the thread that will mlock.
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		fmt.Println("skip: capget:", err)
		return 0
	}
	data[unix.CAP_IPC_LOCK/32].Effective &^= 1 << (unix.CAP_IPC_LOCK % 32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		fmt.Println("skip: capset:", err)
		return 0
	}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: 64 << 10, Max: 64 << 10}); err != nil {
		fmt.Println("skip: setrlimit:", err)
		return 0
	}
	c, err := OpenWith(root, nil, Options{Mlock: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	m, err := c.Acquire(context.Background(), importedManifest("sha256:"+hx, size))
	if err != nil {
		fmt.Println("err: " + strings.ReplaceAll(err.Error(), "\n", " "))
		return 0
	}
	m.Close()
	fmt.Println("ok")
	return 0
}

// importBlob writes data to a file and imports it into c.
func importBlob(t *testing.T, c *Cache, data []byte) string {
	t.Helper()
	p := writeFile(t, "import.bin", data)
	d, err := c.Import(t.Context(), p)
	if err != nil {
		t.Fatal(err)
	}
	if want := "sha256:" + sha256Hex(data); d != want {
		t.Fatalf("import returned %s, want %s", d, want)
	}
	return d
}

func openOpts(t *testing.T, root string, src Source, o Options) *Cache {
	t.Helper()
	c, err := OpenWith(root, src, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadModesGiveSameBytes(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(4<<20+123, 11) // not a whole number of pages
	d := importBlob(t, openCache(t, root, nil), data)
	man := importedManifest(d, int64(len(data)))

	for _, tc := range []struct {
		name    string
		opts    Options
		private bool
	}{
		{"mmap", Options{}, false},
		{"mmap willneed", Options{Advice: AdviceWillNeed}, false},
		{"mmap sequential", Options{Advice: AdviceSequential}, false},
		{"mmap random", Options{Advice: AdviceRandom}, false},
		{"mmap populate", Options{Advice: AdvicePopulate}, false},
		{"read", Options{LoadMode: LoadRead}, true},
		{"read populate", Options{LoadMode: LoadRead, Advice: AdvicePopulate}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openOpts(t, root, nil, tc.opts)
			m := acquire(t, c, man)
			b := m.Blobs[0]
			if !bytes.Equal(b.Data, data) {
				t.Fatal("bytes differ from the file's")
			}
			if b.Private() != tc.private {
				t.Fatalf("Private() = %v, want %v", b.Private(), tc.private)
			}
			if tc.private && m.Report.Read == 0 {
				t.Error("read mode reported no Read time")
			}
			if tc.opts.Advice == AdvicePopulate && !tc.private && m.Report.Prefault == 0 {
				t.Error("populate reported no Prefault time")
			}
			if tc.private {
				// A private copy holds no lease: the blob can be evicted
				// while the copy stays valid.
				if ok, err := c.TryEvict(d); err != nil || !ok {
					t.Fatalf("evict under a read-mode model: %v, %v", ok, err)
				}
				if !bytes.Equal(b.Data, data) {
					t.Fatal("private copy changed after eviction")
				}
				importBlob(t, c, data)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if b.Data != nil {
				t.Fatal("Close left Data set")
			}
		})
	}
}

func TestPopulateMakesModelResident(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(8<<20, 12)
	c := openCache(t, root, nil)
	d := importBlob(t, c, data)
	dropPageCache(t, c.blobPath(d[len("sha256:"):]))
	if n, err := c.Residency(d); err != nil || n > int64(len(data))/2 {
		t.Fatalf("after FADV_DONTNEED: residency %d of %d, %v; want mostly cold", n, len(data), err)
	}

	m := acquire(t, openOpts(t, root, nil, Options{Advice: AdvicePopulate}), importedManifest(d, int64(len(data))))
	n, err := m.Blobs[0].Resident()
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(data)) {
		t.Fatalf("after populate: %d of %d bytes resident", n, len(data))
	}
	m.Close()
	// Not mapped by anyone now: Residency maps briefly to ask.
	if n, err := c.Residency(d); err != nil || n != int64(len(data)) {
		t.Fatalf("Residency after close = %d, %v; want %d", n, err, len(data))
	}
	if _, err := c.Residency("sha256:" + strings.Repeat("0", 64)); !errors.Is(err, ErrNotCached) {
		t.Fatalf("Residency of a missing blob: %v, want ErrNotCached", err)
	}
	if _, err := m.Blobs[0].Resident(); err == nil {
		t.Fatal("Resident of a closed blob succeeded")
	}
}

// dropPageCache asks the kernel to drop a file's clean, unmapped pages.
func dropPageCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

func TestMlockErrorNamesLimit(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(4<<20, 13)
	d := importBlob(t, openCache(t, root, nil), data)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), mlockEnv+"="+helperSpec(root, d[len("sha256:"):], int64(len(data))))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v (%s)", err, out)
	}
	line := strings.TrimSpace(string(out))
	switch {
	case strings.HasPrefix(line, "skip: "):
		t.Skipf("cannot drop CAP_IPC_LOCK or lower RLIMIT_MEMLOCK here: %s", line)
	case line == "ok":
		t.Fatal("mlock of 4 MiB succeeded under a 64 KiB RLIMIT_MEMLOCK without CAP_IPC_LOCK")
	}
	for _, want := range []string{"RLIMIT_MEMLOCK", "soft 65536 bytes", "mlock blob " + d} {
		if !strings.Contains(line, want) {
			t.Errorf("mlock error %q does not contain %q", line, want)
		}
	}
}

func TestMlockWithinLimit(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(64<<10, 14)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil || lim.Cur < 1<<20 {
		t.Skipf("RLIMIT_MEMLOCK %d is too small to lock even 64 KiB alongside what is locked already", lim.Cur)
	}
	d := importBlob(t, openCache(t, root, nil), data)
	m := acquire(t, openOpts(t, root, nil, Options{Mlock: true}), importedManifest(d, int64(len(data))))
	if n, err := m.Blobs[0].Resident(); err != nil || n != int64(len(data)) {
		t.Fatalf("locked blob resident %d, %v; want all %d", n, err, len(data))
	}
}

func TestOpenRejectsUnknownOptions(t *testing.T) {
	for _, o := range []Options{{LoadMode: "fast"}, {Advice: "hugepages"}, {Verify: "always"}, {BudgetPercent: 120}, {Budget: -1}} {
		if _, err := OpenWith(t.TempDir(), nil, o); err == nil {
			t.Errorf("OpenWith(%+v) succeeded", o)
		}
	}
}

func TestMetrics(t *testing.T) {
	root := t.TempDir()
	reg := prometheus.NewRegistry()
	c := openOpts(t, root, nil, Options{Metrics: reg})
	// A second Cache on the same registry shares the collectors.
	openOpts(t, root, nil, Options{Metrics: reg})
	data := randomBytes(1<<20, 15)
	d := importBlob(t, c, data)
	acquire(t, c, importedManifest(d, int64(len(data))))

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				got[key] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"genfleet_cache_acquires_total{result=hit}":       1,
		"genfleet_cache_bytes{state=in_use}":              float64(len(data)),
		"genfleet_cache_bytes{state=idle}":                0,
		"genfleet_cache_load_phase_seconds{phase=map}":    1,
		"genfleet_cache_resident_bytes{digest=" + d + "}": float64(len(data)),
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	if got["genfleet_process_page_faults_total{kind=minor}"] == 0 {
		t.Error("no minor page faults reported")
	}
}
