package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/internal/modelcheck"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
)

const modelsUsage = `Usage: genfleet models COMMAND

Commands:
  make --size 64MiB [--seed N] --out FILE   write a reference model (safetensors)
  make --arch sd1 [--split] [--dtype f16|q8_0|q4_0] [--seed N] --out FILE|DIR
                                            write a random-weight SD 1.x checkpoint for sdcpp
  make --arch refgen-lora [--seed N] [--rank R] --out FILE
                                            write a LoRA for the built-in engine
  push FILE s3://bucket/key [--name NAME] [--engine ENGINE] [--kind lora] [--part-size auto]
                                            upload a model (or a LoRA) and register NAME
  push --name NAME --engine ENGINE --file ROLE=PATH... s3://bucket/prefix/
                                            upload a split model's files (one
                                            --file per file, e.g. vae=ae.safetensors)
                                            and register NAME
  register s3://bucket/key [--name NAME] [--engine ENGINE] [--kind lora] [--part-size auto]
                                            register an object already in S3
                                            as NAME, without uploading it
  inspect FILE                              summarise a safetensors or GGUF header
  ls [--json]                               list registered models; a model whose
                                            manifest cannot be used is named on
                                            stderr with its error and the others
                                            are listed (exit 0); exit 1 when the
                                            registry cannot be listed, or when
                                            every manifest in it is unusable
`

func cmdModels(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, modelsUsage)
		return cli.ErrUsage
	}
	switch args[0] {
	case "make":
		return cmdModelsMake(args[1:], stdout, stderr)
	case "push":
		return cmdModelsPush(ctx, args[1:], stdout, stderr)
	case "register":
		return cmdModelsRegister(ctx, args[1:], stdout, stderr)
	case "inspect":
		return cmdModelsInspect(args[1:], stdout, stderr)
	case "ls", "list":
		return cmdModelsList(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stderr, modelsUsage)
		return nil
	}
	fmt.Fprintf(stderr, "unknown models command %q\n\n%s", args[0], modelsUsage)
	return cli.ErrUsage
}

// fileFlags collects repeated --file ROLE=PATH flags.
type fileFlags []modelcache.PushFile

func (f *fileFlags) String() string {
	var parts []string
	for _, pf := range *f {
		parts = append(parts, pf.Role+"="+pf.Path)
	}
	return strings.Join(parts, ",")
}

func (f *fileFlags) Set(v string) error {
	role, path, ok := strings.Cut(v, "=")
	if !ok || role == "" || path == "" {
		return fmt.Errorf("%q: want ROLE=PATH, e.g. vae=ae.safetensors", v)
	}
	*f = append(*f, modelcache.PushFile{Path: path, Role: role})
	return nil
}

const modelsPushUsage = `usage: genfleet models push FILE s3://bucket/key [--name NAME] [--engine ENGINE] [--kind model|lora]
       genfleet models push --name NAME --engine ENGINE --file ROLE=PATH [--file ROLE=PATH ...] s3://bucket/prefix/`

func cmdModelsPush(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("models push", stderr)
	c := cli.AddCommon(f)
	name := f.String("name", "", "registry name (default: the file name without extension; required with --file)")
	engine := f.String("engine", "", "engine that runs the model, e.g. sdcpp; empty means the built-in engine "+modelcache.EngineBuiltin)
	kind := f.String("kind", modelcache.KindModel, "what the file is: "+modelcache.KindModel+" (a model jobs run) or "+modelcache.KindLoRA+" (a LoRA jobs apply to a model of the same engine, \"loras\")")
	partSize := partSizeFlag(f)
	var files fileFlags
	f.Var(&files, "file", "a split model's file as `ROLE=PATH`, e.g. vae=ae.safetensors; repeat for each file and give a destination prefix instead of FILE and key")
	// Allow flags after the positional arguments too.
	pos, rest := f.SplitPositional(args, 2)
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	eng := *engine
	if eng == modelcache.EngineBuiltin {
		eng = ""
	}
	n := *name
	var dest string
	switch {
	case len(files) > 0 && len(pos) == 1:
		dest = pos[0]
		if n == "" {
			fmt.Fprintln(stderr, "--name is required with --file")
			return cli.ErrUsage
		}
	case len(files) > 0 && len(pos) == 2:
		fmt.Fprintf(stderr, "give either FILE and a destination, or --file ROLE=PATH flags and a destination prefix, not both\n%s\n", modelsPushUsage)
		return cli.ErrUsage
	case len(files) == 0 && len(pos) == 2:
		role := ""
		if eng != "" && *kind != modelcache.KindLoRA {
			role = "model"
		}
		files = fileFlags{{Path: pos[0], Role: role}}
		dest = pos[1]
		if n == "" {
			n = strings.ToLower(strings.TrimSuffix(filepath.Base(pos[0]), filepath.Ext(pos[0])))
		}
	default:
		fmt.Fprintln(stderr, modelsPushUsage)
		return cli.ErrUsage
	}
	if err := modelcache.ValidName(n); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	u, err := s3x.ParseURL(dest)
	if err != nil {
		return err
	}
	if len(pos) == 1 && u.Key != "" && !strings.HasSuffix(u.Key, "/") {
		u.Key += "/" // --file: the destination is a prefix
	}
	for i := range files {
		files[i].Dest = u
	}
	k, err := modelcheck.Files(*kind, eng, files)
	if err != nil {
		return err
	}
	reg, cl, err := c.OpenRegistry(ctx)
	if err != nil {
		return err
	}
	if reg.PartSize, err = parsePartSize(*partSize); err != nil {
		return err
	}
	for _, b := range []string{reg.Root.Bucket, u.Bucket} {
		if err := s3x.EnsureBucket(ctx, cl, b); err != nil {
			return err
		}
	}
	var prog *cli.Progress
	var current string
	spec := modelcache.Spec{Name: n, Engine: eng}
	if k == modelcache.KindLoRA {
		spec.Kind = k
	}
	m, err := reg.PushSpec(ctx, spec, files, func(file string, done, total int64) {
		if prog == nil || file != current {
			if prog != nil {
				prog.Done()
			}
			prog, current = cli.NewProgress(stderr, "push "+n+" "+filepath.Base(file)), file
		}
		prog.Update(done, total)
	})
	if prog != nil {
		prog.Done()
	}
	if err != nil {
		return err
	}
	for _, fl := range m.Files {
		role := ""
		if fl.Role != "" {
			role = fl.Role + ", "
		}
		fmt.Fprintf(stdout, "pushed %s (%s%s, %d bytes)\n", fl.URL, role, fl.Digest, fl.Size)
	}
	what := ""
	if m.KindName() != modelcache.KindModel {
		what = ", kind " + m.KindName()
	}
	fmt.Fprintf(stdout, "registered %q (engine %s%s, %d file(s))\n", m.Name, m.EngineName(), what, len(m.Files))
	return nil
}

// partSizeFlag adds --part-size, the part size of the part digests that
// models push and models register record.
func partSizeFlag(f cli.Flags) *string {
	return f.String("part-size", "auto", "size of the parts whose sha256 the manifest records, so that hosts can verify each part as it lands from S3 or a peer (docs/fleet.md): auto (16MiB, larger for files over 64GiB), a size of at least 64KiB, or none")
}

// parsePartSize turns --part-size into modelcache.Registry.PartSize: 0 for
// auto, -1 for none.
func parsePartSize(s string) (int64, error) {
	switch s {
	case "auto", "":
		return 0, nil
	case "none", "0":
		return -1, nil
	}
	n, err := cli.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--part-size: %w", err)
	}
	if n < modelcache.MinManifestPartSize {
		return 0, fmt.Errorf("--part-size %s: want at least %d bytes (64KiB), auto or none", s, modelcache.MinManifestPartSize)
	}
	return n, nil
}

func cmdModelsInspect(args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("models inspect", stderr)
	if err := f.ParseArgs(args, 1); err != nil {
		return err
	}
	if f.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: genfleet models inspect FILE")
		return cli.ErrUsage
	}
	path := f.Arg(0)
	format, header, err := modelcheck.ParseFile(path)
	if err != nil {
		return err
	}
	name := "safetensors"
	if format == modelformat.FormatGGUF {
		name = "GGUF"
	}
	fmt.Fprintf(stdout, "%s: %s\n", path, name)
	header.Summary(stdout)
	return nil
}

func cmdModelsList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("models ls", stderr)
	c := cli.AddCommon(f)
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	reg, _, err := c.OpenRegistry(ctx)
	if err != nil {
		return err
	}
	models, err := reg.List(ctx)
	var bad modelcache.ManifestErrors
	if err != nil && !errors.As(err, &bad) {
		return err
	}
	for _, e := range bad {
		fmt.Fprintf(stderr, "genfleet models ls: skipped %v\n", e)
	}
	if len(bad) > 0 && len(models) == 0 {
		return fmt.Errorf("no usable model manifest: all %d are unusable", len(bad))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(models)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tENGINE\tKIND\tFORMAT\tFILES\tBYTES\tDIGEST")
	for _, m := range models {
		var size int64
		digest := ""
		for _, fl := range m.Files {
			size += fl.Size
		}
		if len(m.Files) > 0 {
			digest = m.Files[0].Digest
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", m.Name, m.EngineName(), m.KindName(), m.Format, len(m.Files), size, digest)
	}
	return tw.Flush()
}
