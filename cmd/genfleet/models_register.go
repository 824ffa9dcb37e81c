package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/modelcache"
)

const modelsRegisterUsage = `usage: genfleet models register s3://bucket/key [--name NAME] [--engine ENGINE] [--kind model|lora]`

// cmdModelsRegister registers an object already in S3 as a model, without
// uploading it again: it checks the object's header as models push checks
// a file's, takes its sha256 from S3's full-object SHA-256 checksum when
// the object has one and otherwise reads the object once to hash it, then
// writes the manifest.
func cmdModelsRegister(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("models register", stderr)
	c := addCommon(f)
	name := f.String("name", "", "registry name (default: the object's name without extension)")
	engine := f.String("engine", "", "engine that runs the model, e.g. sdcpp; empty means the built-in engine "+modelcache.EngineBuiltin)
	kind := f.String("kind", modelcache.KindModel, "what the object is: "+modelcache.KindModel+" or "+modelcache.KindLoRA)
	pos, rest := splitPositional(args, 1)
	if err := f.parse(rest, 0); err != nil {
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

	digest, how := "sha256:"+obj.SHA256, "from S3's SHA-256 checksum"
	if obj.SHA256 == "" {
		sum, err := hashObject(ctx, reg.Src, u, obj, newProgress(stderr, "hash "+u.String()))
		if err != nil {
			return err
		}
		digest, how = sum, fmt.Sprintf("hashed, %d bytes read", obj.Size)
	}
	spec := modelcache.Spec{Name: n, Engine: eng}
	if k == modelcache.KindLoRA {
		spec.Kind = k
	}
	m, err := reg.RegisterSpec(ctx, spec, []modelcache.File{{Name: file, Role: role, URL: u.String(), Size: obj.Size, Digest: digest}})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "registered %q (engine %s, kind %s): %s (%s, %d bytes; digest %s)\n", m.Name, m.EngineName(), m.KindName(), u, digest, obj.Size, how)
	return nil
}

// hashObject reads the object at u (pinned to obj's ETag, so a replaced
// object fails rather than mixing versions) and returns its
// "sha256:<hex>" digest, reporting progress to prog.
func hashObject(ctx context.Context, src modelcache.Source, u s3x.URL, obj s3x.Object, prog *progress) (string, error) {
	body, err := src.Get(ctx, u.Bucket, u.Key, obj.ETag)
	if err != nil {
		return "", err
	}
	defer body.Close()
	h := sha256.New()
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
			return "", fmt.Errorf("read %s: %w", u, err)
		}
	}
	prog.done()
	if done != obj.Size {
		return "", fmt.Errorf("read %d bytes of %s, which holds %d", done, u, obj.Size)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
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
