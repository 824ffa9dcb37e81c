package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/internal/modelcheck"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/modelcache"
)

const modelsRegisterUsage = `usage: genfleet models register s3://bucket/key [--name NAME] [--engine ENGINE] [--kind model|lora] [--part-size auto|SIZE|none]`

// cmdModelsRegister registers an object already in S3 as a model, without
// uploading it again: it checks the object's header as models push checks
// a file's, reads the object once to compute its sha256 and its part
// digests (checking the sha256 against S3's full-object SHA-256 checksum
// when the object has one), then writes the manifest. With --part-size
// none and a checksum in S3 it reads nothing and records no part digests.
func cmdModelsRegister(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("models register", stderr)
	c := cli.AddCommon(f)
	name := f.String("name", "", "registry name (default: the object's name without extension)")
	engine := f.String("engine", "", "engine that runs the model, e.g. sdcpp; empty means the built-in engine "+modelcache.EngineBuiltin)
	kind := f.String("kind", modelcache.KindModel, "what the object is: "+modelcache.KindModel+" or "+modelcache.KindLoRA)
	partSizeArg := partSizeFlag(f)
	pos, rest := f.SplitPositional(args, 1)
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	partSize, err := parsePartSize(*partSizeArg)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, modelsRegisterUsage)
		return cli.ErrUsage
	}
	u, err := s3x.ParseURL(pos[0])
	if err != nil {
		return err
	}
	if u.Key == "" || strings.HasSuffix(u.Key, "/") {
		return fmt.Errorf("%s names a prefix; give the object's key: %s", u, modelsRegisterUsage)
	}
	eng := *engine
	if eng == modelcache.EngineBuiltin {
		eng = ""
	}
	n := *name
	if n == "" {
		file := path.Base(u.Key)
		n = strings.ToLower(strings.TrimSuffix(file, path.Ext(file)))
	}
	if err := modelcache.ValidName(n); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	role := ""
	if eng != "" && *kind != modelcache.KindLoRA {
		role = "model"
	}
	files := []modelcache.PushFile{{Path: u.String(), Role: role}}
	k, err := modelcheck.Kind(*kind, eng, files)
	if err != nil {
		return err
	}
	if k == modelcache.KindModel {
		if err := modelcheck.Roles(eng, files); err != nil {
			return err
		}
	}

	reg, cl, err := c.OpenRegistry(ctx)
	if err != nil {
		return err
	}
	obj, err := s3x.Head(ctx, cl, u)
	if s3x.IsNotFound(err) {
		return fmt.Errorf("no object at %s: check the bucket and key (models register names an object already in S3; models push uploads a local file)", u)
	}
	if err != nil {
		return err
	}
	if obj.Size == 0 {
		return fmt.Errorf("%s is empty; an empty file cannot be mapped", u)
	}
	// The same header checks as models push, on the object's first bytes.
	ra := modelcache.NewObjectReaderAt(ctx, reg.Src, u, obj.ETag, obj.Size)
	if err := modelcheck.Check(ra, obj.Size, u.String(), eng); err != nil {
		return err
	}
	prog := cli.NewProgress(stderr, "hash "+u.String())
	mf, read, err := reg.HashObject(ctx, u, obj, partSize, prog.Update)
	prog.Done()
	if err != nil {
		return err
	}
	mf.Role = role
	how := "from S3's SHA-256 checksum"
	if read {
		how = fmt.Sprintf("hashed, %d bytes read", obj.Size)
		if obj.SHA256 != "" {
			how += "; matches S3's SHA-256 checksum"
		}
		if len(mf.Parts) > 0 {
			how += fmt.Sprintf("; %d part digests", len(mf.Parts))
		}
	}
	spec := modelcache.Spec{Name: n, Engine: eng}
	if k == modelcache.KindLoRA {
		spec.Kind = k
	}
	m, err := reg.RegisterSpec(ctx, spec, []modelcache.File{mf})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "registered %q (engine %s, kind %s): %s (%s, %d bytes; digest %s)\n", m.Name, m.EngineName(), m.KindName(), u, mf.Digest, obj.Size, how)
	return nil
}
