package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
)

const modelsUsage = `Usage: genfleet models COMMAND

Commands:
  make --size 64MiB [--seed N] --out FILE   write a reference model (safetensors)
  push FILE s3://bucket/key [--name NAME]   upload a model and register NAME
  inspect FILE                              summarise a safetensors or GGUF header
  ls                                        list registered models
`

func cmdModels(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, modelsUsage)
		return errUsage
	}
	switch args[0] {
	case "make":
		return cmdModelsMake(args[1:], stdout, stderr)
	case "push":
		return cmdModelsPush(ctx, args[1:], stdout, stderr)
	case "inspect":
		return cmdModelsInspect(args[1:], stdout, stderr)
	case "ls", "list":
		return cmdModelsList(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stderr, modelsUsage)
		return nil
	}
	fmt.Fprintf(stderr, "unknown models command %q\n\n%s", args[0], modelsUsage)
	return errUsage
}

func cmdModelsMake(args []string, stdout, stderr io.Writer) error {
	f := newFlags("models make", stderr)
	size := f.String("size", "64MiB", "file size, e.g. 64MiB or 4GiB")
	seed := f.Uint64("seed", 1, "weights seed; same size and seed give the same file")
	out := f.String("out", "", "output file (required)")
	if err := f.parse(args, 0); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(stderr, "--out is required")
		return errUsage
	}
	n, err := parseSize(*size)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	start := time.Now()
	if err := writeModel(*out, n, *seed); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes, seed %d) in %v\n", *out, n, *seed, time.Since(start).Round(time.Millisecond))
	return nil
}

// writeModel writes a reference model to path through a temp file and a
// rename, so an interrupted make never leaves a truncated model behind.
func writeModel(path string, size int64, seed uint64) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 4<<20)
	if err := refgen.Make(bw, size, seed); err != nil {
		tmp.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func cmdModelsPush(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("models push", stderr)
	c := addCommon(f)
	name := f.String("name", "", "registry name (default: the file name without extension)")
	// Allow flags after the positional arguments too.
	pos, rest := splitPositional(args, 2)
	if err := f.parse(rest, 0); err != nil {
		return err
	}
	if len(pos) != 2 {
		fmt.Fprintln(stderr, "usage: genfleet models push FILE s3://bucket/key [--name NAME]")
		return errUsage
	}
	file, dest := pos[0], pos[1]
	u, err := s3x.ParseURL(dest)
	if err != nil {
		return err
	}
	if u.Key == "" || strings.HasSuffix(u.Key, "/") {
		u.Key += filepath.Base(file)
	}
	n := *name
	if n == "" {
		n = strings.ToLower(strings.TrimSuffix(filepath.Base(file), filepath.Ext(file)))
	}
	if err := modelcache.ValidName(n); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	if _, err := modelformat.ParseSafetensorsFile(file); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	reg, cl, err := c.openRegistry(ctx)
	if err != nil {
		return err
	}
	for _, b := range []string{reg.Root.Bucket, u.Bucket} {
		if err := s3x.EnsureBucket(ctx, cl, b); err != nil {
			return err
		}
	}
	prog := newProgress(stderr, "push "+n)
	m, err := reg.Push(ctx, file, u, n, prog.update)
	prog.done()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s as %q (%s, %d bytes)\n", m.Files[0].URL, m.Name, m.Files[0].Digest, m.Files[0].Size)
	return nil
}

// splitPositional takes the first n arguments that are not flags out of
// args, so that "push FILE URL --name x" and "push --name x FILE URL" both work.
func splitPositional(args []string, n int) (pos, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(pos) < n && !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		rest = append(rest, a)
		if strings.HasPrefix(a, "-") && !strings.Contains(a, "=") && i+1 < len(args) && !isBoolFlag(a) {
			rest = append(rest, args[i+1])
			i++
		}
	}
	return pos, rest
}

func isBoolFlag(a string) bool {
	a = strings.TrimLeft(a, "-")
	return a == "s3-path-style" || a == "h" || a == "help"
}

func cmdModelsInspect(args []string, stdout, stderr io.Writer) error {
	f := newFlags("models inspect", stderr)
	if err := f.parse(args, 1); err != nil {
		return err
	}
	if f.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: genfleet models inspect FILE")
		return errUsage
	}
	path := f.Arg(0)
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return err
	}
	format, err := modelformat.Detect(fh, st.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	switch format {
	case "gguf":
		g, err := modelformat.ParseGGUFHeader(fh, st.Size())
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		fmt.Fprintf(stdout, "%s: GGUF\n", path)
		g.Summary(stdout)
	default:
		s, err := modelformat.ParseSafetensors(fh, st.Size())
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		fmt.Fprintf(stdout, "%s: safetensors\n", path)
		s.Summary(stdout)
	}
	return nil
}

func cmdModelsList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("models ls", stderr)
	c := addCommon(f)
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, 0); err != nil {
		return err
	}
	reg, _, err := c.openRegistry(ctx)
	if err != nil {
		return err
	}
	models, err := reg.List(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(models)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tFORMAT\tFILES\tBYTES\tDIGEST")
	for _, m := range models {
		var size int64
		digest := ""
		for _, fl := range m.Files {
			size += fl.Size
		}
		if len(m.Files) > 0 {
			digest = m.Files[0].Digest
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", m.Name, m.Format, len(m.Files), size, digest)
	}
	return tw.Flush()
}

// progress prints transfer progress: a rewriting line on a terminal, one
// JSON object per line otherwise (at most every 500ms).
type progress struct {
	w     io.Writer
	label string
	tty   bool
	last  time.Time
	start time.Time
}

func newProgress(w io.Writer, label string) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, label: label, tty: tty, start: time.Now()}
}

func (p *progress) update(done, total int64) {
	if time.Since(p.last) < 500*time.Millisecond && done != total {
		return
	}
	p.last = time.Now()
	secs := time.Since(p.start).Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(done) / secs / 1e6
	}
	if p.tty {
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		fmt.Fprintf(p.w, "\r%s: %5.1f%% %d/%d bytes %.1f MB/s", p.label, pct, done, total, rate)
		return
	}
	b, _ := json.Marshal(map[string]any{"event": "progress", "what": p.label, "done": done, "total": total, "mb_per_s": rate})
	fmt.Fprintln(p.w, string(b))
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}
