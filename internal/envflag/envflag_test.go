package envflag

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// A flag takes its default from its variable, the command line wins over
// both, and the help names the variable.
func TestEnvDefaults(t *testing.T) {
	t.Setenv("ENVFLAG_TEST_S", "from-env")
	t.Setenv("ENVFLAG_TEST_I", "7")
	t.Setenv("ENVFLAG_TEST_B", "true")
	t.Setenv("ENVFLAG_TEST_F", "0.25")
	t.Setenv("ENVFLAG_TEST_D", "3s")
	f := New("test", io.Discard)
	s := f.EnvString("s", "ENVFLAG_TEST_S", "def", "a string")
	i := f.EnvInt("i", "ENVFLAG_TEST_I", 1, "an int")
	b := f.EnvBool("b", "ENVFLAG_TEST_B", false, "a bool")
	x := f.EnvFloat64("x", "ENVFLAG_TEST_F", 0.5, "a float")
	d := f.EnvDuration("d", "ENVFLAG_TEST_D", time.Second, "a duration")
	u := f.EnvString("u", "ENVFLAG_TEST_UNSET", "def", "unset")
	if err := f.ParseArgs([]string{"-i", "9"}, 0); err != nil {
		t.Fatal(err)
	}
	if *s != "from-env" || *i != 9 || !*b || *x != 0.25 || *d != 3*time.Second || *u != "def" {
		t.Fatalf("got %q %d %v %v %v %q", *s, *i, *b, *x, *d, *u)
	}
	if got := f.Lookup("s").Usage; got != "a string (env ENVFLAG_TEST_S)" {
		t.Fatalf("usage %q", got)
	}
	known := Known()
	for _, env := range []string{"ENVFLAG_TEST_S", "ENVFLAG_TEST_I", "ENVFLAG_TEST_B", "ENVFLAG_TEST_F", "ENVFLAG_TEST_D", "ENVFLAG_TEST_UNSET"} {
		if !known[env] {
			t.Errorf("Known lacks %s", env)
		}
	}
}

// A variable that does not parse is an error naming it, not a default.
func TestBadEnvIsAnError(t *testing.T) {
	tests := []struct {
		name, env, val string
		define         func(*FlagSet)
	}{
		{"int", "ENVFLAG_TEST_BAD_I", "lots", func(f *FlagSet) { f.EnvInt("i", "ENVFLAG_TEST_BAD_I", 1, "") }},
		{"bool", "ENVFLAG_TEST_BAD_B", "maybe", func(f *FlagSet) { f.EnvBool("b", "ENVFLAG_TEST_BAD_B", false, "") }},
		{"float", "ENVFLAG_TEST_BAD_F", "half", func(f *FlagSet) { f.EnvFloat64("x", "ENVFLAG_TEST_BAD_F", 0, "") }},
		{"duration", "ENVFLAG_TEST_BAD_D", "soon", func(f *FlagSet) { f.EnvDuration("d", "ENVFLAG_TEST_BAD_D", 0, "") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.env, tt.val)
			f := New("test", io.Discard)
			tt.define(f)
			err := f.ParseArgs(nil, 0)
			if err == nil || !strings.Contains(err.Error(), tt.env+`="`+tt.val+`"`) {
				t.Fatalf("error %v, want one naming %s=%q", err, tt.env, tt.val)
			}
		})
	}
}

// Positional arguments beyond the allowed are refused, and printed.
func TestParseArgsRefusesStrayArguments(t *testing.T) {
	var out bytes.Buffer
	f := New("test", &out)
	if err := f.ParseArgs([]string{"one", "two"}, 1); !errors.Is(err, ErrUsage) || !strings.Contains(out.String(), `unexpected arguments: ["two"]`) {
		t.Fatalf("error %v, output %q", err, out.String())
	}
	if err := New("test", io.Discard).ParseArgs([]string{"-h"}, 0); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
}

func TestVisited(t *testing.T) {
	f := New("test", io.Discard)
	f.Int("a", 0, "")
	f.Int("b", 0, "")
	if err := f.ParseArgs([]string{"-b", "0"}, 0); err != nil {
		t.Fatal(err)
	}
	if got := f.Visited(); !got["b"] || got["a"] {
		t.Fatalf("visited %v", got)
	}
}

// Positional arguments are found before, between and after flags; a
// boolean flag of the set takes no value.
func TestSplitPositional(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		n         int
		pos, rest []string
	}{
		{"flags after", []string{"FILE", "URL", "--name", "x"}, 2, []string{"FILE", "URL"}, []string{"--name", "x"}},
		{"flags before", []string{"--name", "x", "FILE", "URL"}, 2, []string{"FILE", "URL"}, []string{"--name", "x"}},
		{"flag=value", []string{"--name=x", "FILE", "URL"}, 2, []string{"FILE", "URL"}, []string{"--name=x"}},
		{"a bool flag takes no value", []string{"--tls", "FILE", "URL"}, 2, []string{"FILE", "URL"}, []string{"--tls"}},
		{"-h", []string{"-h", "FILE"}, 1, []string{"FILE"}, []string{"-h"}},
		{"beyond n", []string{"A", "B", "C"}, 2, []string{"A", "B"}, []string{"C"}},
		{"an unknown flag takes a value", []string{"--what", "A", "B"}, 1, []string{"B"}, []string{"--what", "A"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New("test", io.Discard)
			f.String("name", "", "")
			f.EnvBool("tls", "ENVFLAG_TEST_TLS", false, "")
			pos, rest := f.SplitPositional(tt.args, tt.n)
			if !slices.Equal(pos, tt.pos) || !slices.Equal(rest, tt.rest) {
				t.Fatalf("got %q %q, want %q %q", pos, rest, tt.pos, tt.rest)
			}
		})
	}
}
