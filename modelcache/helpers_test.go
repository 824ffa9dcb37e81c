package modelcache

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
)

// The test binary doubles as a helper process that holds a fetch lock until
// it is killed; see startLockHolder.
const helperEnv = "GENFLEET_MODELCACHE_TEST_HOLD_LOCK"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		holdLock(spec)
		return
	}
	if spec := os.Getenv(fetchHelperEnv); spec != "" {
		fetchHelper(spec)
		return
	}
	os.Exit(m.Run())
}

// holdLock is the helper process: spec is "<root>\n<key>".
func holdLock(spec string) {
	var root, key string
	if _, err := fmt.Sscanf(spec, "%s\n%s", &root, &key); err != nil {
		fmt.Fprintln(os.Stderr, "bad spec:", err)
		os.Exit(2)
	}
	c, err := Open(root, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if _, _, err := c.lock(context.Background(), key); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("locked")
	time.Sleep(time.Hour) // until killed
}

// startLockHolder starts a process that holds key's fetch lock in the cache
// at root, and returns a function that kills it (SIGKILL: no cleanup runs,
// as in a crash).
func startLockHolder(t *testing.T, root, key string) (kill func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+root+"\n"+key)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	kill = func() {
		if !killed {
			killed = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(kill)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("lock holder said %q, %v", line, err)
	}
	return kill
}

// env is an S3 server with a bucket "models", a Source and a Registry.
type env struct {
	s3  *testenv.S3
	src Source
	reg *Registry
}

// newEnv's registry pushes manifests without part digests (PartSize -1),
// so that the tests of the plain S3 path control the fetch's part size
// with Options.PartSize; tests of part digests set reg.PartSize or use
// pushParts.
func newEnv(t *testing.T) *env {
	t.Helper()
	s := testenv.S3Server(t, "models")
	src := NewS3Source(s.Client)
	return &env{s3: s, src: src, reg: &Registry{Src: src, Root: s3x.URL{Bucket: "models"}, PartSize: -1}}
}

// pushParts is push with part digests of partSize bytes.
func (e *env) pushParts(t *testing.T, name string, size int, partSize int64) (*Manifest, []byte) {
	t.Helper()
	saved := e.reg.PartSize
	e.reg.PartSize = partSize
	defer func() { e.reg.PartSize = saved }()
	return e.push(t, name, size)
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// push registers a model of size random bytes and returns its manifest and
// content.
func (e *env) push(t *testing.T, name string, size int) (*Manifest, []byte) {
	t.Helper()
	data := randomBytes(size, uint64(len(name))*7919+uint64(size))
	p := writeFile(t, name+".safetensors", data)
	m, err := e.reg.Push(t.Context(), p, s3x.URL{Bucket: "models", Key: "weights/"}, name, nil)
	if err != nil {
		t.Fatalf("push %s: %v", name, err)
	}
	return m, data
}

// putObject stores data at s3://models/key directly.
func (e *env) putObject(t *testing.T, key string, data []byte) {
	t.Helper()
	if err := e.src.Put(t.Context(), "models", key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

// testSource wraps the real Source to count calls and inject faults.
type testSource struct {
	Source
	heads, gets atomic.Int64
	ranged      atomic.Int64
	// beforeGet, if set, runs before the n-th (1-based) Get is passed on;
	// an error it returns is the Get's error.
	beforeGet func(ctx context.Context, n int64) error
	// wrapBody, if set, wraps the body of the n-th Get.
	wrapBody func(rc io.ReadCloser, n int64) io.ReadCloser
}

func (s *testSource) Head(ctx context.Context, bucket, key string) (ObjectInfo, error) {
	s.heads.Add(1)
	return s.Source.Head(ctx, bucket, key)
}

func (s *testSource) Get(ctx context.Context, bucket, key, etag string) (io.ReadCloser, error) {
	n := s.gets.Add(1)
	if s.beforeGet != nil {
		if err := s.beforeGet(ctx, n); err != nil {
			return nil, err
		}
	}
	rc, err := s.Source.Get(ctx, bucket, key, etag)
	if err == nil && s.wrapBody != nil {
		rc = s.wrapBody(rc, n)
	}
	return rc, err
}

// GetRange counts as a Get (gets counts every GET request) and goes through
// the same hooks; ranged counts the ranged ones alone.
func (s *testSource) GetRange(ctx context.Context, bucket, key, etag string, off, n int64) (io.ReadCloser, error) {
	s.ranged.Add(1)
	g := s.gets.Add(1)
	if s.beforeGet != nil {
		if err := s.beforeGet(ctx, g); err != nil {
			return nil, err
		}
	}
	rc, err := s.Source.GetRange(ctx, bucket, key, etag, off, n)
	if err == nil && s.wrapBody != nil {
		rc = s.wrapBody(rc, g)
	}
	return rc, err
}

var errInjected = errors.New("injected fault: connection reset")

// breakingBody fails after passing on left bytes.
type breakingBody struct {
	io.ReadCloser
	left int64
}

func (b *breakingBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errInjected
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func openCache(t *testing.T, root string, src Source) *Cache {
	t.Helper()
	c, err := Open(root, src)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func acquire(t *testing.T, c *Cache, m *Manifest) *Model {
	t.Helper()
	mod, err := c.Acquire(t.Context(), m)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	t.Cleanup(func() { mod.Close() })
	return mod
}
