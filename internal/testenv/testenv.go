// Package testenv starts the real servers genfleet's tests and benchmarks
// talk to: a redis-server and an S3 server (versitygw, posix backend), each
// on a free loopback port in its own directory.
//
// The test helpers (Redis, S3Server) stop the server when the test ends.
// When a server binary is missing the test is skipped, unless
// GENFLEET_REQUIRE_SERVICES=1 (set by `make test`), in which case it fails:
// CI must never pass by skipping the integration tests.
//
// StartRedis and StartS3 are the same without testing.TB, for `genfleet
// bench`: the caller stops what they return.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/s3x"
)

// Credentials used for the test S3 server.
const (
	AccessKey = "genfleettest"
	SecretKey = "genfleettestsecret"
)

// FindBinary looks for name on PATH, then in $GOBIN and $GOPATH/bin (where
// `go install` puts versitygw). It returns "" when not found.
func FindBinary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	if gopath := os.Getenv("GOPATH"); gopath != "" {
		for _, d := range filepath.SplitList(gopath) {
			dirs = append(dirs, filepath.Join(d, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// ErrMissing means a server binary is not installed.
var ErrMissing = errors.New("not installed")

func findOrErr(name string) (string, error) {
	if p := FindBinary(name); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("%s %w: not on PATH nor in $GOPATH/bin (`make deps` installs it)", name, ErrMissing)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	return p
}

// waitTCP waits until addr accepts connections or the process exits.
func waitTCP(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("process exited before listening on %s", addr)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing listening on %s after %v", addr, timeout)
}

// Server is a started server process.
type Server struct {
	Addr    string // host:port
	Dir     string // its working directory
	logName string

	mu   sync.Mutex
	stop func()
	// relaunch starts the same command again on Addr (see Restart).
	relaunch func() (func(), error)
}

// Stop kills the server (SIGKILL: nothing is flushed that was not already
// durable) and waits for it. It is safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	stop := s.stop
	s.mu.Unlock()
	stop()
}

// Restart starts the server again with the same arguments, on the same
// address and in the same directory, after Stop (it stops a running one
// first). A Redis started by StartRedisAOF comes back with every write it
// acknowledged before it was stopped. A restart whose port was taken in
// the meantime fails.
func (s *Server) Restart() error {
	s.Stop()
	stop, err := s.relaunch()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.stop = stop
	s.mu.Unlock()
	return nil
}

// LogTail returns the last n bytes of the server's log, for failure messages.
func (s *Server) LogTail(n int) string {
	out, _ := os.ReadFile(s.logName)
	return tail(string(out), n)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// launch starts bin with args in dir, appending its output to logName, and
// waits until it listens on addr. It returns the function that stops it.
func launch(bin string, args, env []string, dir, addr, logName string) (func(), error) {
	logf, err := os.OpenFile(logName, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			select {
			case <-exited:
			default:
				_ = cmd.Process.Kill()
				<-exited
			}
			logf.Close()
		})
	}
	if err := waitTCP(addr, exited, 30*time.Second); err != nil {
		stop()
		out, _ := os.ReadFile(logName)
		return nil, fmt.Errorf("%s: %w\n%s", filepath.Base(bin), err, tail(string(out), 2000))
	}
	return stop, nil
}

// startProc starts bin on a fresh free port (args(addr, port) builds its
// arguments) and waits until it listens, retrying on a port clash.
func startProc(bin string, args func(addr string, port int) []string, env []string, dir string) (*Server, error) {
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		logName := filepath.Join(dir, fmt.Sprintf("server-%d.log", attempt))
		argv := args(addr, port)
		stop, err := launch(bin, argv, env, dir, addr, logName)
		if err != nil {
			out, _ := os.ReadFile(logName)
			if strings.Contains(strings.ToLower(string(out)), "address already in use") {
				continue
			}
			return nil, err
		}
		return &Server{Addr: addr, Dir: dir, stop: stop, logName: logName,
			relaunch: func() (func(), error) { return launch(bin, argv, env, dir, addr, logName) }}, nil
	}
	return nil, fmt.Errorf("could not start %s: ports kept clashing", filepath.Base(bin))
}

// StartRedis starts a redis-server with persistence off, its files in dir.
func StartRedis(dir string) (*Server, error) {
	return startRedis(dir, "--save", "", "--appendonly", "no")
}

// StartRedisAOF starts a redis-server that appends every write to its AOF
// in dir and fsyncs it before answering, so that Stop (SIGKILL) followed by
// Restart loses nothing it acknowledged: for outage tests.
func StartRedisAOF(dir string) (*Server, error) {
	return startRedis(dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always")
}

func startRedis(dir string, persistence ...string) (*Server, error) {
	bin, err := findOrErr("redis-server")
	if err != nil {
		return nil, err
	}
	return startProc(bin, func(_ string, port int) []string {
		return append([]string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", dir}, persistence...)
	}, nil, dir)
}

// S3 is a running S3 server with a client for it.
type S3 struct {
	*Server
	Endpoint string
	Config   s3x.Config
	Client   *s3.Client
}

// StartS3 starts versitygw with its posix backend storing objects under
// dir/data, and creates the given buckets.
func StartS3(ctx context.Context, dir string, buckets ...string) (*S3, error) {
	bin, err := findOrErr("versitygw")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	env := []string{"ROOT_ACCESS_KEY=" + AccessKey, "ROOT_SECRET_KEY=" + SecretKey}
	srv, err := startProc(bin, func(addr string, _ int) []string { return []string{"--port", addr, "posix", data} }, env, dir)
	if err != nil {
		return nil, err
	}
	cfg := s3x.Config{Endpoint: "http://" + srv.Addr, AccessKey: AccessKey, SecretKey: SecretKey, PathStyle: true}
	c, err := s3x.NewClient(ctx, cfg)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	for _, b := range buckets {
		if err := s3x.EnsureBucket(ctx, c, b); err != nil {
			srv.Stop()
			return nil, fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return &S3{Server: srv, Endpoint: cfg.Endpoint, Config: cfg, Client: c}, nil
}

// skipOrFail turns a missing binary into a skip (or a failure under
// GENFLEET_REQUIRE_SERVICES=1) and any other error into a failure.
func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrMissing) && os.Getenv("GENFLEET_REQUIRE_SERVICES") != "1" {
		t.Skip(err)
	}
	t.Fatal(err)
}

// Redis starts a redis-server for the test.
func Redis(t testing.TB) *Server {
	t.Helper()
	s, err := StartRedis(t.TempDir())
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(s.Stop)
	return s
}

// RedisAOF starts a redis-server for the test with an fsynced AOF, so the
// test can Stop and Restart it without losing data (StartRedisAOF).
func RedisAOF(t testing.TB) *Server {
	t.Helper()
	s, err := StartRedisAOF(t.TempDir())
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(s.Stop)
	return s
}

// S3Server starts versitygw for the test and creates the given buckets.
func S3Server(t testing.TB, buckets ...string) *S3 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := StartS3(ctx, t.TempDir(), buckets...)
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(s.Stop)
	return s
}
