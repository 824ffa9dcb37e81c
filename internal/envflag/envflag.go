// Package envflag is the command-line flag set of genfleet's commands: a
// flag.FlagSet whose flags take their defaults from GENFLEET_* environment
// variables (named in each flag's help), where a variable that does not
// parse is an error rather than a silent default, every variable a flag
// reads is recorded (Known: deployment files are checked against it), and
// parsing refuses stray positional arguments.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrUsage marks a command-line mistake whose message has already been
// printed to the flag set's output.
var ErrUsage = errors.New("usage")

// FlagSet is a flag.FlagSet (ContinueOnError) whose Env* flags default to
// environment variables.
type FlagSet struct {
	*flag.FlagSet
	// envErrs collects environment values that do not parse; Parse
	// reports them, so GENFLEET_CONCURRENCY=lots is an error, not a default.
	envErrs []error
}

// New returns an empty flag set named name (as usage messages show it,
// e.g. "genfleet worker") that prints its messages to out.
func New(name string, out io.Writer) *FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return &FlagSet{FlagSet: fs}
}

// known records every environment variable a flag reads.
var (
	knownMu sync.Mutex
	known   = map[string]bool{}
)

// Known returns the environment variables the flags of every flag set
// built so far in this process read.
func Known() map[string]bool {
	knownMu.Lock()
	defer knownMu.Unlock()
	return maps.Clone(known)
}

// Lookup records env as read by a flag and returns its value and whether
// it is set.
func Lookup(env string) (string, bool) {
	knownMu.Lock()
	known[env] = true
	knownMu.Unlock()
	return os.LookupEnv(env)
}

// Or records env as read by a flag and returns its value, or def when it
// is not set.
func Or(env, def string) string {
	if v, ok := Lookup(env); ok {
		return v
	}
	return def
}

// BadEnv records that env's value val did not parse; Parse returns it.
func (f *FlagSet) BadEnv(env, val string, err error) {
	f.envErrs = append(f.envErrs, fmt.Errorf("%s=%q: %w", env, val, err))
}

// help is a flag's usage with the variable it reads.
func help(usage, env string) string { return usage + " (env " + env + ")" }

// EnvString defines a string flag whose default is env's value, else def.
func (f *FlagSet) EnvString(name, env, def, usage string) *string {
	return f.String(name, Or(env, def), help(usage, env))
}

// envValue parses env's value with parse when it is set; a value that
// does not parse is recorded (BadEnv) and def kept.
func envValue[T any](f *FlagSet, env string, def T, parse func(string) (T, error)) T {
	s, ok := Lookup(env)
	if !ok {
		return def
	}
	v, err := parse(s)
	if err != nil {
		f.BadEnv(env, s, err)
		return def
	}
	return v
}

// EnvInt defines an int flag whose default is env's value, else def.
func (f *FlagSet) EnvInt(name, env string, def int, usage string) *int {
	return f.Int(name, envValue(f, env, def, strconv.Atoi), help(usage, env))
}

// EnvBool defines a bool flag whose default is env's value, else def.
func (f *FlagSet) EnvBool(name, env string, def bool, usage string) *bool {
	return f.Bool(name, envValue(f, env, def, strconv.ParseBool), help(usage, env))
}

// EnvFloat64 defines a float64 flag whose default is env's value, else def.
func (f *FlagSet) EnvFloat64(name, env string, def float64, usage string) *float64 {
	parse := func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }
	return f.Float64(name, envValue(f, env, def, parse), help(usage, env))
}

// EnvDuration defines a duration flag whose default is env's value, else def.
func (f *FlagSet) EnvDuration(name, env string, def time.Duration, usage string) *time.Duration {
	return f.Duration(name, envValue(f, env, def, time.ParseDuration), help(usage, env))
}

// ParseArgs parses args, then returns the environment values that did not
// parse, and refuses more than maxArgs positional arguments (printing
// them and returning ErrUsage). -h gets flag.ErrHelp, after the usage.
func (f *FlagSet) ParseArgs(args []string, maxArgs int) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if len(f.envErrs) > 0 {
		return errors.Join(f.envErrs...)
	}
	if f.NArg() > maxArgs {
		fmt.Fprintf(f.Output(), "unexpected arguments: %q\n", f.Args()[maxArgs:])
		return ErrUsage
	}
	return nil
}

// Visited returns the names of the flags the command line set.
func (f *FlagSet) Visited() map[string]bool {
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	return set
}

// SplitPositional takes the first n arguments that are not flags out of
// args, so that "push FILE URL --name x" and "push --name x FILE URL" both
// work: an argument after a flag is that flag's value unless the flag is
// a boolean one of f (or -h), or was given as -flag=value. Call it after
// every flag is defined.
func (f *FlagSet) SplitPositional(args []string, n int) (pos, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(pos) < n && !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		rest = append(rest, a)
		if strings.HasPrefix(a, "-") && !strings.Contains(a, "=") && i+1 < len(args) && !f.isBool(a) {
			rest = append(rest, args[i+1])
			i++
		}
	}
	return pos, rest
}

// isBool reports whether the flag argument a ("-name", "--name") takes no
// value.
func (f *FlagSet) isBool(a string) bool {
	name := strings.TrimLeft(a, "-")
	if name == "h" || name == "help" {
		return true
	}
	fl := f.Lookup(name)
	if fl == nil {
		return false
	}
	b, ok := fl.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
