package sdcpp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/genfleet/genfleet/backends/sdcpp/internal/helptext"
	"github.com/genfleet/genfleet/backends/sdcpp/spec"
)

// errBadArgs marks extra arguments the engine's program does not take.
var errBadArgs = errors.New("extra arguments not taken by the engine")

// findEngine returns the first of names that resolves to a program whose
// --help lists --mmap. It checks the extra arguments against the flags the
// program lists (an unknown one would make every run exit at once with
// "error: unknown argument"), returning an error wrapping errBadArgs, and
// warns when the program lacks a sampling method or scheduler that the
// API accepts (spec's tables come from the help of spec.EngineCommit).
func findEngine(names, args []string, log *slog.Logger) (string, error) {
	var errs []string
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, _ := exec.CommandContext(ctx, p, "--help").CombinedOutput()
		cancel()
		if !bytes.Contains(out, []byte(spec.FlagMmap)) {
			return "", fmt.Errorf("%s does not list %s in its --help; genfleet needs a stable-diffusion.cpp release that has it", p, spec.FlagMmap)
		}
		help, err := helptext.Parse(string(out))
		if err != nil {
			// An older release's help: run it, without these checks.
			log.Warn("cannot read the engine's --help; extra arguments and choices not checked", "program", p, "err", err)
			return p, nil
		}
		if err := checkArgs(p, help, args); err != nil {
			return "", err
		}
		for _, c := range [...]struct {
			flag string
			api  []string
		}{{spec.FlagSamplingMethod, spec.SamplingMethods}, {spec.FlagScheduler, spec.Schedulers}} {
			if got, ok := help.Choices[c.flag]; ok {
				if missing := without(c.api, got); len(missing) > 0 {
					log.Warn("the engine lacks values the API accepts; jobs asking for them will fail",
						"program", p, "flag", c.flag, "missing", strings.Join(missing, ","), "tables_from_commit", spec.EngineCommit)
				}
			}
		}
		return p, nil
	}
	return "", errors.New(strings.Join(errs, "; "))
}

// checkArgs checks that every extra argument that looks like a flag is
// one the program lists. A value that starts with "-" (a negative number)
// is taken for a value.
func checkArgs(prog string, help *helptext.Help, args []string) error {
	for _, a := range args {
		if !strings.HasPrefix(a, "-") || isNumber(a) {
			continue
		}
		if !slices.Contains(help.Flags, a) {
			return fmt.Errorf("sdcpp: extra argument %s is not a flag of %s (see its --help): %w", a, filepath.Base(prog), errBadArgs)
		}
	}
	return nil
}

func isNumber(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return true
}

// without returns the elements of a that are not in b.
func without(a, b []string) []string {
	var out []string
	for _, v := range a {
		if !slices.Contains(b, v) {
			out = append(out, v)
		}
	}
	return out
}
