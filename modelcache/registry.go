package modelcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/genfleet/genfleet/internal/s3x"
)

// ManifestSchema is the manifest schema version this package writes and reads.
const ManifestSchema = 1

// maxManifestBytes bounds how much of a manifest object is read; real ones
// are a few hundred bytes.
const maxManifestBytes = 1 << 20

// Manifest describes a model: the files that make it up and how to check them.
type Manifest struct {
	Schema int `json:"schema"` // ManifestSchema
	// Name is the registered name; empty for a raw s3:// ref.
	Name string `json:"name,omitempty"`
	// Format of the files, e.g. "safetensors" or "gguf"; empty when unknown.
	Format string `json:"format"`
	// Engine names the engine that runs the model, e.g. "sdcpp"; empty
	// means the built-in engine (EngineBuiltin). Workers take only models
	// whose engine one of their backends runs; the scheduler queues a job
	// on the pool that serves its model's engine.
	Engine string `json:"engine,omitempty"`
	// Kind is what the model is: KindModel (empty means it), one a job
	// runs, or KindLoRA, one file a job applies to a model of the same
	// engine ("loras"). A job's model must be a model and each of its
	// LoRAs a LoRA.
	Kind string `json:"kind,omitempty"`
	// Files are the model's files (shards or components); at least one.
	Files   []File    `json:"files"`
	Created time.Time `json:"created,omitzero"`
}

// File is one file of a model.
type File struct {
	Name string `json:"name"`
	// Role is the part of the model this file is, for engines that take
	// split models: "model" (a full checkpoint), "diffusion_model", "vae",
	// "clip_l", "clip_g", "t5xxl", … Empty for the first file means
	// "model". The engine's backend decides which roles it accepts.
	Role string `json:"role,omitempty"`
	// URL is where the file lives, "s3://bucket/key".
	URL  string `json:"url"`
	Size int64  `json:"size"`
	// Digest is "sha256:<hex>"; empty when unknown (a raw s3:// ref, whose
	// digest the cache computes on fetch).
	Digest string `json:"digest,omitempty"`
	// PartSize and Parts are the part digests (see parts.go): Parts[i] is
	// the "sha256:<hex>" of bytes [i·PartSize, (i+1)·PartSize) of the file.
	// Both are empty in manifests written without them; such a file is
	// fetched from S3 only.
	PartSize int64    `json:"part_size,omitempty"`
	Parts    []string `json:"parts,omitempty"`
}

// EngineBuiltin is the engine of a manifest that names none: genfleet's
// reference model family (package backends/refgen).
const EngineBuiltin = "refgen"

// Kinds of registered model (Manifest.Kind).
const (
	KindModel = "model"
	KindLoRA  = "lora"
)

// KindName is m.Kind, or KindModel when that is empty.
func (m *Manifest) KindName() string {
	if m.Kind == "" {
		return KindModel
	}
	return m.Kind
}

// EngineName is m.Engine, or EngineBuiltin when that is empty.
func (m *Manifest) EngineName() string {
	if m.Engine == "" {
		return EngineBuiltin
	}
	return m.Engine
}

var tokenRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// Ref is how messages name the model: its registered name, or the URL of its
// first file for a raw ref.
func (m *Manifest) Ref() string {
	if m.Name != "" {
		return m.Name
	}
	if len(m.Files) > 0 {
		return m.Files[0].URL
	}
	return "(unnamed)"
}

// ErrBadManifest means a model's manifest cannot be used: it is not valid
// JSON, breaks a rule Validate checks (a file URL that is not s3://, a
// malformed digest, no files, …), is too large, or names another model.
// Fetching it again does not help; the model must be pushed again.
var ErrBadManifest = errors.New("invalid model manifest")

// badManifest wraps err as an ErrBadManifest with err's own message.
func badManifest(err error) error {
	return &kindError{kind: ErrBadManifest, cause: err, msg: err.Error()}
}

// Validate checks what the cache relies on: schema, name, at least one file,
// and for each file a name, an s3:// URL naming an object, a non-negative
// size, a well-formed digest if there is one, and part digests, if any,
// that match the size (one per part, beside a whole-file digest). The
// error wraps ErrBadManifest.
func (m *Manifest) Validate() error {
	if err := m.validate(); err != nil {
		return badManifest(err)
	}
	return nil
}

func (m *Manifest) validate() error {
	if m.Schema != ManifestSchema {
		return fmt.Errorf("manifest schema %d not supported (want %d)", m.Schema, ManifestSchema)
	}
	if m.Name != "" {
		if err := ValidName(m.Name); err != nil {
			return err
		}
	}
	if m.Engine != "" && !tokenRE.MatchString(m.Engine) {
		return fmt.Errorf("manifest engine %q: use 1 to 64 characters from a-z, 0-9, '.', '_' and '-'", m.Engine)
	}
	if len(m.Files) == 0 {
		return errors.New("manifest lists no files")
	}
	switch m.Kind {
	case "", KindModel:
	case KindLoRA:
		if len(m.Files) != 1 {
			return fmt.Errorf("manifest of a %s lists %d files; a LoRA is one file", KindLoRA, len(m.Files))
		}
	default:
		return fmt.Errorf("manifest kind %q: want %q or %q", m.Kind, KindModel, KindLoRA)
	}
	roles := map[string]string{}
	for i, f := range m.Files {
		if f.Name == "" {
			return fmt.Errorf("manifest file %d has no name", i)
		}
		if f.Role != "" {
			if !tokenRE.MatchString(f.Role) {
				return fmt.Errorf("manifest file %q: role %q: use 1 to 64 characters from a-z, 0-9, '.', '_' and '-'", f.Name, f.Role)
			}
			if other, dup := roles[f.Role]; dup {
				return fmt.Errorf("manifest files %q and %q both have role %q", other, f.Name, f.Role)
			}
			roles[f.Role] = f.Name
		}
		if _, err := parseObjectURL(f.URL); err != nil {
			return fmt.Errorf("manifest file %q: %w", f.Name, err)
		}
		if f.Size < 0 {
			return fmt.Errorf("manifest file %q: negative size %d", f.Name, f.Size)
		}
		if f.Digest != "" {
			if _, err := parseDigest(f.Digest); err != nil {
				return fmt.Errorf("manifest file %q: %w", f.Name, err)
			}
		}
		if err := f.validateParts(); err != nil {
			return err
		}
	}
	return nil
}

// ParseManifest decodes and validates a manifest's JSON. Unknown fields are
// ignored so that older readers accept manifests with additions that do not
// change the schema number. Errors wrap ErrBadManifest.
func ParseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, badManifest(fmt.Errorf("decode manifest: %w", err))
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

// ValidName reports whether name can be a registered model name: 1 to 128
// characters from a-z, 0-9, '.', '_' and '-', starting with a letter or
// digit. The error wraps ErrInvalidRef.
func ValidName(name string) error {
	if nameRE.MatchString(name) {
		return nil
	}
	shown := name
	if len(shown) > 64 {
		shown = shown[:64] + "..."
	}
	return &kindError{kind: ErrInvalidRef, msg: fmt.Sprintf(
		"invalid model name %q: use 1 to 128 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit", shown)}
}

// parseDigest returns the hex of a "sha256:<64 lowercase hex>" digest.
func parseDigest(d string) (string, error) {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != sha256.Size*2 || !isLowerHex(h) {
		return "", fmt.Errorf("invalid digest %q: want sha256:<64 lowercase hex digits>", d)
	}
	return h, nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// parseObjectURL parses an s3:// URL that must name an object, not a prefix.
func parseObjectURL(s string) (s3x.URL, error) {
	u, err := s3x.ParseURL(s)
	if err != nil {
		return s3x.URL{}, err
	}
	if u.Key == "" || strings.HasSuffix(u.Key, "/") {
		return s3x.URL{}, fmt.Errorf("%q names a prefix, not an object", s)
	}
	return u, nil
}

// formatOf guesses a file's format from its name; "" when unknown.
func formatOf(name string) string {
	switch strings.ToLower(path.Ext(name)) {
	case ".safetensors":
		return "safetensors"
	case ".gguf":
		return "gguf"
	case ".ckpt":
		return "ckpt"
	}
	return ""
}

// Registry maps model names to manifests stored in S3 beside the weights, at
// <Root.Bucket>/<Root.Key>manifests/<name>.json. A Root.Key that does not
// end in "/" is treated as if it did.
type Registry struct {
	Src  Source
	Root s3x.URL
	// PartSize is the part size of the part digests Push and PushModel
	// record (see File.Parts): 0 means PartSizeFor(the file's size), a
	// negative value records none.
	PartSize int64
}

// partSizeFor is the part size a push records for a file of size bytes; 0
// for none.
func (r *Registry) partSizeFor(size int64) int64 {
	switch {
	case r.PartSize < 0:
		return 0
	case r.PartSize == 0:
		return PartSizeFor(size)
	}
	return r.PartSize
}

func (r *Registry) prefix() string {
	p := r.Root.Key
	if p != "" && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p + "manifests/"
}

// ManifestURL is where the manifest of name lives.
func (r *Registry) ManifestURL(name string) s3x.URL {
	return s3x.URL{Bucket: r.Root.Bucket, Key: r.prefix() + name + ".json"}
}

func (r *Registry) check() error {
	if r.Src == nil {
		return errors.New("registry has no source")
	}
	if !s3x.ValidBucket(r.Root.Bucket) {
		return fmt.Errorf("registry root %s: invalid bucket name %q", r.Root, r.Root.Bucket)
	}
	return nil
}

// Resolve turns a reference into a manifest. ref is a registered name, or an
// "s3://bucket/key" URL, which is resolved with a Head into a one-file
// manifest with an empty Digest.
//
// A name or URL that is malformed yields an error wrapping ErrInvalidRef; a
// missing manifest or object one wrapping ErrModelNotFound whose message
// says where it looked; a manifest that cannot be used one wrapping
// ErrBadManifest.
func (r *Registry) Resolve(ctx context.Context, ref string) (*Manifest, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	if strings.HasPrefix(ref, "s3://") {
		return r.resolveURL(ctx, ref)
	}
	if err := ValidName(ref); err != nil {
		return nil, err
	}
	u := r.ManifestURL(ref)
	m, err := r.readManifest(ctx, u)
	if errors.Is(err, ErrNotFound) {
		return nil, &kindError{kind: ErrModelNotFound, cause: err,
			msg: fmt.Sprintf("model %q not found (no manifest at %s)", ref, u)}
	}
	if err != nil {
		return nil, fmt.Errorf("model %q: %w", ref, err)
	}
	if m.Name != ref {
		return nil, badManifest(fmt.Errorf("model %q: manifest %s names model %q", ref, u, m.Name))
	}
	return m, nil
}

func (r *Registry) resolveURL(ctx context.Context, ref string) (*Manifest, error) {
	u, err := parseObjectURL(ref)
	if err != nil {
		return nil, &kindError{kind: ErrInvalidRef, cause: err,
			msg: fmt.Sprintf("invalid model reference: %v", err)}
	}
	info, err := r.Src.Head(ctx, u.Bucket, u.Key)
	if errors.Is(err, ErrNotFound) {
		return nil, &kindError{kind: ErrModelNotFound, cause: err,
			msg: fmt.Sprintf("model %q not found (no object at %s)", ref, u)}
	}
	if err != nil {
		return nil, fmt.Errorf("model %q: %w", ref, err)
	}
	name := path.Base(u.Key)
	return &Manifest{
		Schema: ManifestSchema,
		Format: formatOf(name),
		Files:  []File{{Name: name, URL: u.String(), Size: info.Size}},
	}, nil
}

// readManifest reads and parses the manifest at u. A missing object yields
// the Source's error, which wraps ErrNotFound.
func (r *Registry) readManifest(ctx context.Context, u s3x.URL) (*Manifest, error) {
	body, err := r.Src.Get(ctx, u.Bucket, u.Key, "")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	data, err := io.ReadAll(io.LimitReader(body, maxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", u, err)
	}
	if len(data) > maxManifestBytes {
		return nil, badManifest(fmt.Errorf("manifest %s is larger than %d bytes", u, maxManifestBytes))
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", u, err)
	}
	return m, nil
}

// Push registers the file at localPath as model name: it hashes the file,
// uploads it to dest (to dest + the file's base name when dest.Key is empty
// or ends in "/"), checks the upload with a Head and only then writes the
// manifest, so a name never points at a missing or partial blob. An existing
// manifest of the same name is replaced. It is PushModel with one file, no
// role and the built-in engine.
//
// progress, if not nil, is called with the bytes of the file read by the
// upload so far; done can go back to 0 when the S3 client rereads the body
// (to sign it) before sending it.
func (r *Registry) Push(ctx context.Context, localPath string, dest s3x.URL, name string, progress func(done, total int64)) (*Manifest, error) {
	var fn func(string, int64, int64)
	if progress != nil {
		fn = func(_ string, done, total int64) { progress(done, total) }
	}
	return r.PushModel(ctx, name, "", []PushFile{{Path: localPath, Dest: dest}}, fn)
}

// PushFile is one local file of a model to push.
type PushFile struct {
	// Path is the local file.
	Path string
	// Role is the part of the model the file is (see File.Role); may be
	// empty.
	Role string
	// Dest is the object to upload to; when Dest.Key is empty or ends in
	// "/", the file's base name is appended to it.
	Dest s3x.URL
}

// PushModel registers the local files as model name run by engine (empty:
// EngineBuiltin). Before uploading anything it checks the name, the
// destinations, the manifest the push would write (engine and role names,
// duplicate roles) and that every file is a regular, non-empty file. Then,
// file by file, it hashes the file, uploads it, checks that the file did
// not change during the upload and that the object has the file's size.
// Only after every file is uploaded does it write the manifest, so a failed
// push leaves the previous manifest of name, or none, in place; objects
// already uploaded stay.
//
// The manifest's Format is the files' common format (see formatOf), or
// "mixed" when they differ. Every file is uploaded, even when an object of
// the same size is already there: S3 cannot tell its sha256 cheaply.
//
// progress, if not nil, is called with the file's Path and the bytes of it
// read by the upload so far; done can go back to 0 when the S3 client
// rereads the body (to sign it) before sending it.
func (r *Registry) PushModel(ctx context.Context, name, engine string, files []PushFile, progress func(file string, done, total int64)) (*Manifest, error) {
	return r.PushSpec(ctx, Spec{Name: name, Engine: engine}, files, progress)
}

// Spec is what a manifest registers besides its files: the model's name,
// its engine (empty: EngineBuiltin) and its kind (empty: KindModel).
type Spec struct {
	Name, Engine, Kind string
}

// PushSpec is PushModel for a model of any kind: a LoRA is pushed with
// Spec.Kind KindLoRA.
func (r *Registry) PushSpec(ctx context.Context, spec Spec, files []PushFile, progress func(file string, done, total int64)) (*Manifest, error) {
	name, engine := spec.Name, spec.Engine
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("push %s: no files", name)
	}
	m := &Manifest{Schema: ManifestSchema, Name: name, Engine: engine, Kind: spec.Kind, Files: make([]File, len(files))}
	dests := make([]s3x.URL, len(files))
	seen := map[string]string{}
	for i, pf := range files {
		dest := pf.Dest
		if dest.Key == "" || strings.HasSuffix(dest.Key, "/") {
			dest.Key += filepath.Base(pf.Path)
		}
		if _, err := parseObjectURL(dest.String()); err != nil {
			return nil, &kindError{kind: ErrInvalidRef, cause: err,
				msg: fmt.Sprintf("push %s: invalid destination for %s: %v", name, pf.Path, err)}
		}
		if other, dup := seen[dest.String()]; dup {
			return nil, fmt.Errorf("push %s: %s and %s would both be uploaded to %s", name, other, pf.Path, dest)
		}
		seen[dest.String()] = pf.Path
		dests[i] = dest
		m.Files[i] = File{Name: filepath.Base(pf.Path), Role: pf.Role, URL: dest.String()}
	}
	m.Format = commonFormat(files)
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("push %s: %w", name, err)
	}
	for _, pf := range files {
		st, err := os.Stat(pf.Path)
		if err != nil {
			return nil, fmt.Errorf("push %s: %w", name, err)
		}
		if err := checkPushable(pf.Path, st); err != nil {
			return nil, fmt.Errorf("push %s: %w", name, err)
		}
	}

	for i, pf := range files {
		var fn func(done, total int64)
		if progress != nil {
			fn = func(done, total int64) { progress(pf.Path, done, total) }
		}
		sum, err := r.upload(ctx, pf.Path, dests[i], fn)
		if err != nil {
			return nil, fmt.Errorf("push %s: %w", name, err)
		}
		m.Files[i].Size, m.Files[i].Digest = sum.size, sum.digest
		m.Files[i].PartSize, m.Files[i].Parts = sum.partSize, sum.parts
	}

	m.Created = time.Now().UTC().Truncate(time.Second)
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("push %s: %w", name, err)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", name, err)
	}
	data = append(data, '\n')
	mu := r.ManifestURL(name)
	if err := r.Src.Put(ctx, mu.Bucket, mu.Key, bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, fmt.Errorf("push %s: write manifest: %w", name, err)
	}
	return m, nil
}

// commonFormat is the format the files agree on (see formatOf), or "mixed".
func commonFormat(files []PushFile) string {
	format := formatOf(files[0].Path)
	for _, pf := range files[1:] {
		if formatOf(pf.Path) != format {
			return "mixed"
		}
	}
	return format
}

// checkPushable reports why the file at localPath, described by st, cannot
// be pushed: it is not a regular file, or it is empty.
func checkPushable(localPath string, st os.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", localPath)
	}
	if st.Size() == 0 {
		return fmt.Errorf("%s is empty; an empty file cannot be mapped", localPath)
	}
	return nil
}

// fileSum is what upload learnt of a file: its size, digest and part
// digests.
type fileSum struct {
	size     int64
	digest   string
	partSize int64
	parts    []string
}

// upload hashes the file at localPath (whole, and in parts as
// r.partSizeFor says), uploads it to dest and checks the upload: the file
// must not have changed meanwhile and the object must have its size.
func (r *Registry) upload(ctx context.Context, localPath string, dest s3x.URL, progress func(done, total int64)) (fileSum, error) {
	f, err := os.Open(localPath)
	if err != nil {
		return fileSum{}, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return fileSum{}, err
	}
	if err := checkPushable(localPath, before); err != nil {
		return fileSum{}, err
	}
	size := before.Size()
	h := NewPartHasher(r.partSizeFor(size))
	if _, err := io.Copy(h, f); err != nil {
		return fileSum{}, fmt.Errorf("hash %s: %w", localPath, err)
	}
	sum := fileSum{size: size}
	sum.digest, sum.partSize, sum.parts = h.Sum()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fileSum{}, err
	}
	body := &progressReader{r: f, total: size, fn: progress}
	if err := r.Src.Put(ctx, dest.Bucket, dest.Key, body, size); err != nil {
		return fileSum{}, fmt.Errorf("upload %s: %w", localPath, err)
	}
	if after, err := f.Stat(); err != nil || after.Size() != size || !after.ModTime().Equal(before.ModTime()) {
		return fileSum{}, fmt.Errorf("%s changed while it was pushed; push it again", localPath)
	}
	info, err := r.Src.Head(ctx, dest.Bucket, dest.Key)
	if err != nil {
		return fileSum{}, fmt.Errorf("check upload of %s: %w", localPath, err)
	}
	if info.Size != size {
		return fileSum{}, fmt.Errorf("%s holds %d bytes after upload, want %d", dest, info.Size, size)
	}
	return sum, nil
}

// ManifestError is a registered model whose manifest List could not use.
type ManifestError struct {
	// Name is the model's name (from the manifest object's key).
	Name string
	// Err says what is wrong; it wraps ErrBadManifest when the manifest
	// was read and is unusable, and the Source's error when it could not
	// be read.
	Err error
}

func (e ManifestError) Error() string { return fmt.Sprintf("model %q: %v", e.Name, e.Err) }
func (e ManifestError) Unwrap() error { return e.Err }

// ManifestErrors is List's error when some manifests could not be used
// and the rest were listed. Find it with errors.As.
type ManifestErrors []ManifestError

func (es ManifestErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return fmt.Sprintf("%d model manifest(s) unusable: %s", len(es), strings.Join(msgs, "; "))
}

// List returns every registered model's manifest, sorted by name. Keys under
// the manifests prefix that are not <valid name>.json are ignored. A manifest
// that cannot be read or used is left out and reported, by model name, in a
// ManifestErrors error; the others are still returned. Any other error
// (the registry cannot be listed at all) comes with no manifests.
func (r *Registry) List(ctx context.Context) ([]Manifest, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	prefix := r.prefix()
	keys, err := r.Src.List(ctx, r.Root.Bucket, prefix)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	out := []Manifest{}
	var bad ManifestErrors
	for _, key := range keys {
		name, ok := strings.CutSuffix(strings.TrimPrefix(key, prefix), ".json")
		if !ok || ValidName(name) != nil {
			continue
		}
		m, err := r.readManifest(ctx, s3x.URL{Bucket: r.Root.Bucket, Key: key})
		if err == nil && m.Name != name {
			err = badManifest(fmt.Errorf("manifest s3://%s/%s names model %q", r.Root.Bucket, key, m.Name))
		}
		if err != nil {
			bad = append(bad, ManifestError{Name: name, Err: err})
			continue
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	sort.Slice(bad, func(i, j int) bool { return bad[i].Name < bad[j].Name })
	if len(bad) > 0 {
		return out, bad
	}
	return out, nil
}

// progressReader reports the read position of an upload body.
type progressReader struct {
	r     io.ReadSeeker
	pos   int64
	total int64
	fn    func(done, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.pos += int64(n)
		if p.fn != nil {
			p.fn(p.pos, p.total)
		}
	}
	return n, err
}

func (p *progressReader) Seek(off int64, whence int) (int64, error) {
	pos, err := p.r.Seek(off, whence)
	if err == nil {
		p.pos = pos
	}
	return pos, err
}
