package defaults

import (
	"log/slog"
	"testing"
	"time"
)

func TestPositive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in, def time.Duration
		want    time.Duration
	}{
		{"zero takes the default", 0, time.Second, time.Second},
		{"negative takes the default", -5, time.Second, time.Second},
		{"a set value stays", 3 * time.Millisecond, time.Second, 3 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.in
			Positive(&v, tc.def)
			if v != tc.want {
				t.Fatalf("Positive(%v, %v) = %v, want %v", tc.in, tc.def, v, tc.want)
			}
		})
	}
	n := 0.0
	Positive(&n, 0.5)
	if n != 0.5 {
		t.Fatalf("float: got %v", n)
	}
}

func TestZero(t *testing.T) {
	s := ""
	Zero(&s, "cpu")
	if s != "cpu" {
		t.Fatalf("empty string: got %q", s)
	}
	s = "cuda"
	Zero(&s, "cpu")
	if s != "cuda" {
		t.Fatalf("set string: got %q", s)
	}
	var l *slog.Logger
	Zero(&l, slog.Default())
	if l != slog.Default() {
		t.Fatal("nil logger not defaulted")
	}
	own := slog.New(slog.DiscardHandler)
	l = own
	Zero(&l, slog.Default())
	if l != own {
		t.Fatal("a set logger was replaced")
	}
}
