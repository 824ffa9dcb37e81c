// Package testenv starts the real servers genfleet's tests talk to: a
// redis-server and an S3 server (versitygw, posix backend), each on a free
// loopback port in a temporary directory, stopped when the test ends.
//
// When a server binary is missing the test is skipped, unless
// GENFLEET_REQUIRE_SERVICES=1 (set by `make test`), in which case it fails:
// CI must never pass by skipping the integration tests.
package testenv

import (
	"context"
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

func need(t testing.TB, name string) string {
	t.Helper()
	p := FindBinary(name)
	if p == "" {
		msg := fmt.Sprintf("%s not found on PATH or in $GOPATH/bin (run `make test`, which installs it)", name)
		if os.Getenv("GENFLEET_REQUIRE_SERVICES") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
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
	stop    func()
	logName string
}

// Stop kills the server and waits for it. It is safe to call more than once;
// the test's cleanup calls it too.
func (s *Server) Stop() { s.stop() }

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Redis starts a redis-server with persistence off and returns it.
func Redis(t testing.TB) *Server {
	t.Helper()
	bin := need(t, "redis-server")
	dir := t.TempDir()
	for attempt := 0; ; attempt++ {
		port := FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		args := []string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}
		s := tryStart(t, bin, args, nil, addr, dir, attempt)
		if s != nil {
			return s
		}
	}
}

// S3 is a running S3 server with a client for it.
type S3 struct {
	*Server
	Endpoint string
	Config   s3x.Config
	Client   *s3.Client
}

// S3Server starts versitygw with its posix backend in a temp directory and
// creates the given buckets.
func S3Server(t testing.TB, buckets ...string) *S3 {
	t.Helper()
	bin := need(t, "versitygw")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	var srv *Server
	for attempt := 0; srv == nil; attempt++ {
		port := FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		env := []string{"ROOT_ACCESS_KEY=" + AccessKey, "ROOT_SECRET_KEY=" + SecretKey}
		srv = tryStart(t, bin, []string{"--port", addr, "posix", data}, env, addr, dir, attempt)
	}
	cfg := s3x.Config{Endpoint: "http://" + srv.Addr, AccessKey: AccessKey, SecretKey: SecretKey, PathStyle: true}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := s3x.NewClient(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range buckets {
		if err := s3x.EnsureBucket(ctx, c, b); err != nil {
			t.Fatalf("create bucket %s: %v", b, err)
		}
	}
	return &S3{Server: srv, Endpoint: cfg.Endpoint, Config: cfg, Client: c}
}

// tryStart starts a server; on a port clash (another process took the port
// between FreePort and the bind) it returns nil so the caller can retry.
func tryStart(t testing.TB, bin string, args, env []string, addr, dir string, attempt int) *Server {
	t.Helper()
	if attempt >= 5 {
		t.Fatalf("could not start %s after %d attempts", filepath.Base(bin), attempt)
	}
	logName := filepath.Join(dir, fmt.Sprintf("server-%d.log", attempt))
	logf, err := os.Create(logName)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", bin, err)
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
		if strings.Contains(strings.ToLower(string(out)), "address already in use") {
			return nil
		}
		t.Fatalf("%s: %v\n%s", filepath.Base(bin), err, tail(string(out), 2000))
	}
	t.Cleanup(stop)
	return &Server{Addr: addr, Dir: dir, stop: stop, logName: logName}
}

// LogTail returns the last n bytes of the server's log, for failure messages.
func (s *Server) LogTail(n int) string {
	out, _ := os.ReadFile(s.logName)
	return tail(string(out), n)
}
