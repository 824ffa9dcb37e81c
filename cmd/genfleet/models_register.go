package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

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
	f := newFlags("models register", stderr)
	c := addCommon(f)
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
		return errUsage
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
	file := path.Base(u.Key)
	n := *name
	if n == "" {
		n = strings.ToLower(strings.TrimSuffix(file, path.Ext(file)))
	}
	if err := modelcache.ValidName(n); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	role := ""
	if eng != "" && *kind != modelcache.KindLoRA {
		role = "model"
	}
	k, err := checkKind(*kind, eng, []modelcache.PushFile{{Path: u.String(), Role: role}})
	if err != nil {
		return err
	}
	if k == modelcache.KindModel {
		if err := checkRoles(eng, []modelcache.PushFile{{Path: u.String(), Role: role}}); err != nil {
			return err
		}
	}

	reg, cl, err := c.openRegistry(ctx)
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
	ra := &objectReaderAt{ctx: ctx, src: reg.Src, u: u, etag: obj.ETag, size: obj.Size}
	if err := checkModel(ra, obj.Size, u.String(), eng); err != nil {
		return err
	}

	mf := modelcache.File{Name: file, Role: role, URL: u.String(), Size: obj.Size, Digest: "sha256:" + obj.SHA256}
	how := "from S3's SHA-256 checksum"
	if obj.SHA256 == "" || partSize >= 0 {
		ps := partSize
		if ps == 0 {
			ps = modelcache.PartSizeFor(obj.Size)
		}
		h := modelcache.NewPartHasher(max(ps, 0))
		if err := hashObject(ctx, reg.Src, u, obj, h, newProgress(stderr, "hash "+u.String())); err != nil {
			return err
		}
		digest, ps, parts := h.Sum()
		if obj.SHA256 != "" && digest != mf.Digest {
			return fmt.Errorf("%s hashes to %s, but S3's SHA-256 checksum of it says %s: the object or its checksum is damaged; nothing was registered", u, digest, mf.Digest)
		}
		mf.Digest, mf.PartSize, mf.Parts = digest, ps, parts
		how = fmt.Sprintf("hashed, %d bytes read", obj.Size)
		if obj.SHA256 != "" {
			how += "; matches S3's SHA-256 checksum"
		}
		if len(parts) > 0 {
			how += fmt.Sprintf("; %d part digests", len(parts))
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

// hashObject reads the object at u (pinned to obj's ETag, so a replaced
// object fails rather than mixing versions) into h, reporting progress to
// prog.
func hashObject(ctx context.Context, src modelcache.Source, u s3x.URL, obj s3x.Object, h io.Writer, prog *progress) error {
	body, err := src.Get(ctx, u.Bucket, u.Key, obj.ETag)
	if err != nil {
		return err
	}
	defer body.Close()
	var done int64
	buf := make([]byte, 4<<20)
	for {
		n, err := body.Read(buf)
		h.Write(buf[:n])
		done += int64(n)
		if n > 0 {
			prog.update(done, obj.Size)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			prog.done()
			return fmt.Errorf("read %s: %w", u, err)
		}
	}
	prog.done()
	if done != obj.Size {
		return fmt.Errorf("read %d bytes of %s, which holds %d", done, u, obj.Size)
	}
	return nil
}

// objectReaderAt reads an object version through ranged GETs, for header
// parsers. It reads at least readAhead bytes at a time and keeps the last
// block, since parsers read a few bytes, then what follows them.
type objectReaderAt struct {
	ctx  context.Context
	src  modelcache.Source
	u    s3x.URL
	etag string
	size int64

	off   int64 // of block
	block []byte
}

const readAhead = 1 << 20

func (r *objectReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: negative offset", r.u, off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), r.size-off)
	if off < r.off || off+want > r.off+int64(len(r.block)) {
		n := min(max(want, readAhead), r.size-off)
		body, err := r.src.GetRange(r.ctx, r.u.Bucket, r.u.Key, r.etag, off, n)
		if err != nil {
			return 0, err
		}
		block := make([]byte, n)
		_, err = io.ReadFull(body, block)
		body.Close()
		if err != nil {
			return 0, fmt.Errorf("read %s at %d: %w", r.u, off, err)
		}
		r.off, r.block = off, block
	}
	n := copy(p[:want], r.block[off-r.off:])
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}
