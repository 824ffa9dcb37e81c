package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/backends/sdcpp"
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
		return errUsage
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
	return errUsage
}

// checkRoles checks the roles of a model's files for engine (empty: the
// built-in one): no two files may share a role. The built-in engine takes
// one full checkpoint; sdcpp takes the roles of its flag table, among them a
// model or a diffusion_model; other engines' backends check their own roles.
func checkRoles(engine string, files []modelcache.PushFile) error {
	seen := map[string]string{}
	for _, pf := range files {
		if other, dup := seen[pf.Role]; dup && pf.Role != "" {
			return fmt.Errorf("%s and %s both have role %q", other, pf.Path, pf.Role)
		}
		seen[pf.Role] = pf.Path
	}
	switch engine {
	case "":
		if len(files) != 1 || (files[0].Role != "" && files[0].Role != "model") {
			return fmt.Errorf("engine %s takes one file with role model", modelcache.EngineBuiltin)
		}
	case sdcpp.Engine:
		// The backend's own flag table decides which roles it takes.
		roles := make([]string, len(files))
		for i, pf := range files {
			roles[i] = pf.Role
		}
		if err := sdcpp.CheckRoles(roles); err != nil {
			return err
		}
	}
	return nil
}

// checkModelFile checks, before anything is uploaded, that the file at
// path is a model file engine can load (see checkModel).
func checkModelFile(path, engine string) error {
	fh, size, err := openModelFile(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	return checkModel(fh, size, path, engine)
}

// checkModel checks that the size bytes read through r, named name in
// errors (a path or an s3:// URL), are a model file engine can load:
// safetensors for the built-in engine; safetensors, GGUF or a PyTorch
// .ckpt (a zip) for the others.
func checkModel(r io.ReaderAt, size int64, name, engine string) error {
	if engine == "" {
		if _, err := modelformat.ParseSafetensors(r, size); err != nil {
			return fmt.Errorf("%s: engine %s takes safetensors: %w", name, modelcache.EngineBuiltin, err)
		}
		return nil
	}
	want := fmt.Sprintf("engine %s takes safetensors, GGUF or a PyTorch .ckpt (zip) file", engine)
	magic := make([]byte, 4)
	if n, _ := r.ReadAt(magic, 0); n == 4 && string(magic) == "PK\x03\x04" {
		if strings.EqualFold(filepath.Ext(name), ".ckpt") {
			return nil
		}
		return fmt.Errorf("%s is a zip file but not named *.ckpt; %s", name, want)
	}
	_, _, err := parseModel(r, size, name)
	if errors.Is(err, modelformat.ErrUnknownFormat) {
		return fmt.Errorf("%w; %s", err, want)
	}
	return err
}

// openModelFile opens the regular file at path and returns its size.
func openModelFile(path string) (*os.File, int64, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		fh.Close()
		return nil, 0, fmt.Errorf("%s is not a regular file", path)
	}
	return fh, st.Size(), nil
}

// parseModelFile parses the header of the safetensors or GGUF file at
// path (see parseModel).
func parseModelFile(path string) (string, interface{ Summary(io.Writer) }, error) {
	fh, size, err := openModelFile(path)
	if err != nil {
		return "", nil, err
	}
	defer fh.Close()
	return parseModel(fh, size, path)
}

// parseModel parses the header of the safetensors or GGUF file of size
// bytes read through r; it returns the format and the parsed header, which
// summarises itself. Errors name the file as name.
func parseModel(r io.ReaderAt, size int64, name string) (string, interface{ Summary(io.Writer) }, error) {
	format, err := modelformat.Detect(r, size)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, err)
	}
	if format == modelformat.FormatGGUF {
		g, err := modelformat.ParseGGUFHeader(r, size)
		if err != nil {
			return "", nil, fmt.Errorf("%s: %w", name, err)
		}
		return format, g, nil
	}
	s, err := modelformat.ParseSafetensors(r, size)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, err)
	}
	return format, s, nil
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
	f := newFlags("models push", stderr)
	c := addCommon(f)
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
			return errUsage
		}
	case len(files) > 0 && len(pos) == 2:
		fmt.Fprintf(stderr, "give either FILE and a destination, or --file ROLE=PATH flags and a destination prefix, not both\n%s\n", modelsPushUsage)
		return errUsage
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
		return errUsage
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
	k, err := checkKind(*kind, eng, files)
	if err != nil {
		return err
	}
	if k == modelcache.KindModel {
		if err := checkRoles(eng, files); err != nil {
			return err
		}
	}
	for i := range files {
		files[i].Dest = u
		if err := checkModelFile(files[i].Path, eng); err != nil {
			return err
		}
		if k == modelcache.KindLoRA {
			if err := checkLoRAFile(files[i].Path, eng); err != nil {
				return err
			}
		}
	}
	if eng == sdcpp.Engine && k == modelcache.KindModel {
		byRole := map[string]string{}
		for _, pf := range files {
			byRole[pf.Role] = pf.Path
		}
		if err := sdcpp.CheckFamily(byRole); err != nil {
			return err
		}
	}
	reg, cl, err := c.openRegistry(ctx)
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
	var prog *progress
	var current string
	spec := modelcache.Spec{Name: n, Engine: eng}
	if k == modelcache.KindLoRA {
		spec.Kind = k
	}
	m, err := reg.PushSpec(ctx, spec, files, func(file string, done, total int64) {
		if prog == nil || file != current {
			if prog != nil {
				prog.done()
			}
			prog, current = newProgress(stderr, "push "+n+" "+filepath.Base(file)), file
		}
		prog.update(done, total)
	})
	if prog != nil {
		prog.done()
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

// checkKind checks --kind: a model, or a LoRA of one file (roles mean
// nothing for a LoRA). It returns the kind.
func checkKind(kind, engine string, files []modelcache.PushFile) (string, error) {
	switch kind {
	case "", modelcache.KindModel:
		return modelcache.KindModel, nil
	case modelcache.KindLoRA:
		if len(files) != 1 {
			return "", fmt.Errorf("--kind %s: a LoRA is one file, got %d", kind, len(files))
		}
		if files[0].Role != "" {
			return "", fmt.Errorf("--kind %s: a LoRA's file has no role; give FILE and a destination, not --file", kind)
		}
		return kind, nil
	}
	return "", fmt.Errorf("--kind %q: want %s or %s", kind, modelcache.KindModel, modelcache.KindLoRA)
}

// checkLoRAFile checks, before anything is uploaded, that the file at path
// is a LoRA engine can apply: for the built-in engine, a reference LoRA
// (refgen.OpenLoRA); for the others checkModelFile's check is all.
func checkLoRAFile(path, engine string) error {
	if engine != "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if _, err := refgen.OpenLoRA(data); err != nil {
		return fmt.Errorf("%s: engine %s takes LoRAs made by `genfleet models make --arch %s`: %w", path, modelcache.EngineBuiltin, archRefgenLoRA, err)
	}
	return nil
}

// partSizeFlag adds --part-size, the part size of the part digests that
// models push and models register record.
func partSizeFlag(f flags) *string {
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
	n, err := parseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--part-size: %w", err)
	}
	if n < modelcache.MinManifestPartSize {
		return 0, fmt.Errorf("--part-size %s: want at least %d bytes (64KiB), auto or none", s, modelcache.MinManifestPartSize)
	}
	return n, nil
}

func cmdModelsInspect(args []string, stdout, stderr io.Writer) error {
	f := newFlags("models inspect", stderr)
	if err := f.ParseArgs(args, 1); err != nil {
		return err
	}
	if f.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: genfleet models inspect FILE")
		return errUsage
	}
	path := f.Arg(0)
	format, header, err := parseModelFile(path)
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
	f := newFlags("models ls", stderr)
	c := addCommon(f)
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	reg, _, err := c.openRegistry(ctx)
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
