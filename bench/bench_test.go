package bench

import (
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	ShareChild() // Share's holder processes are this binary, started again
	os.Exit(m.Run())
}

// testLog writes a benchmark's progress lines to t.Log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
