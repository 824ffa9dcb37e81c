package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// binDir holds the genfleet binary built for the tests that run worker
// processes.
var binDir string

func TestMain(m *testing.M) {
	ShareChild()  // Share's holder processes are this binary, started again
	SpreadChild() // and so are Spread's hosts
	dir, err := os.MkdirTemp("", "genfleet-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// raceBuild is set when the tests run with the race detector (race_test.go).
var raceBuild bool

var buildOnce struct {
	sync.Once
	path string
	err  error
}

// genfleetBinary builds cmd/genfleet once per test binary, with the race
// detector when the tests have it: Routing and Chaos run it as
// `genfleet worker`.
func genfleetBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		path := filepath.Join(binDir, "genfleet")
		args := []string{"build", "-o", path}
		if raceBuild {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "../cmd/genfleet")...).CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build ./cmd/genfleet: %v\n%s", err, out)
			return
		}
		buildOnce.path = path
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.path
}

// testLog writes a benchmark's progress lines to t.Log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
