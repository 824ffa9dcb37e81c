package modelcache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Register writes the manifest of model name, run by engine (empty:
// EngineBuiltin), for files already in S3: each File gives its Name, Role,
// URL, Size and Digest. It is how weights uploaded some other way become a
// registered model, without uploading them again.
//
// Before writing it checks the manifest (name, engine, roles, URLs; every
// file needs a digest) and Heads every object: a missing one yields an
// error wrapping ErrModelNotFound, one whose size differs from the File's
// an error naming both sizes, so a name never points at a missing or
// truncated object. An existing manifest of the same name is replaced.
// The digests are the caller's word; the cache checks them on every fetch.
//
// The manifest's Format is the files' common format (by extension), or
// "mixed" when they differ.
func (r *Registry) Register(ctx context.Context, name, engine string, files []File) (*Manifest, error) {
	return r.RegisterSpec(ctx, Spec{Name: name, Engine: engine}, files)
}

// RegisterSpec is Register for a model of any kind (Spec.Kind).
func (r *Registry) RegisterSpec(ctx context.Context, spec Spec, files []File) (*Manifest, error) {
	name, engine := spec.Name, spec.Engine
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("register %s: no files", name)
	}
	m := &Manifest{Schema: ManifestSchema, Name: name, Engine: engine, Kind: spec.Kind, Files: append([]File(nil), files...)}
	m.Format = formatOf(files[0].Name)
	for _, f := range files[1:] {
		if formatOf(f.Name) != m.Format {
			m.Format = "mixed"
		}
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("register %s: %w", name, err)
	}
	for _, f := range m.Files {
		if f.Digest == "" {
			return nil, fmt.Errorf("register %s: file %q has no digest", name, f.Name)
		}
		u, _ := parseObjectURL(f.URL) // Validate checked it
		info, err := r.Src.Head(ctx, u.Bucket, u.Key)
		if errors.Is(err, ErrNotFound) {
			return nil, &kindError{kind: ErrModelNotFound, cause: err,
				msg: fmt.Sprintf("register %s: no object at %s", name, u)}
		}
		if err != nil {
			return nil, fmt.Errorf("register %s: %w", name, err)
		}
		if info.Size != f.Size {
			return nil, fmt.Errorf("register %s: %s holds %d bytes, not %d", name, u, info.Size, f.Size)
		}
	}
	m.Created = time.Now().UTC().Truncate(time.Second)
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", name, err)
	}
	data = append(data, '\n')
	mu := r.ManifestURL(name)
	if err := r.Src.Put(ctx, mu.Bucket, mu.Key, bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, fmt.Errorf("register %s: write manifest: %w", name, err)
	}
	return m, nil
}
