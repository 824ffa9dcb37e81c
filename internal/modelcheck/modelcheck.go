// Package modelcheck says what may be registered as a model, or a LoRA, of
// an engine: its kind, the roles of its files, and each file's format,
// read from its header before anything is uploaded or registered (the
// checks of `genfleet models push` and `models register`). The engine ""
// is the built-in one (modelcache.EngineBuiltin); the backends of other
// engines check the rest of what they take when they load a model.
package modelcheck

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/backends/sdcpp"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
)

// Files checks the local files of a push of kind (--kind: model, lora or
// empty for model) for engine: the kind and the files' roles (Kind,
// Roles), each file's header (File), a LoRA's contents for the built-in
// engine, and, for stable-diffusion.cpp, that the files are of one model
// family. It returns the kind.
func Files(kind, engine string, files []modelcache.PushFile) (string, error) {
	k, err := Kind(kind, engine, files)
	if err != nil {
		return "", err
	}
	if k == modelcache.KindModel {
		if err := Roles(engine, files); err != nil {
			return "", err
		}
	}
	for _, pf := range files {
		if err := File(pf.Path, engine); err != nil {
			return "", err
		}
		if k == modelcache.KindLoRA {
			if err := loraFile(pf.Path, engine); err != nil {
				return "", err
			}
		}
	}
	if engine == sdcpp.Engine && k == modelcache.KindModel {
		byRole := map[string]string{}
		for _, pf := range files {
			byRole[pf.Role] = pf.Path
		}
		if err := sdcpp.CheckFamily(byRole); err != nil {
			return "", err
		}
	}
	return k, nil
}

// Kind checks --kind: a model, or a LoRA of one file (roles mean nothing
// for a LoRA). It returns the kind, modelcache.KindModel for "".
func Kind(kind, engine string, files []modelcache.PushFile) (string, error) {
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

// Roles checks the roles of a model's files for engine: no two files may
// share a role. The built-in engine takes one full checkpoint; sdcpp takes
// the roles of its flag table, among them a model or a diffusion_model;
// other engines' backends check their own roles.
func Roles(engine string, files []modelcache.PushFile) error {
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

// File checks that the file at path is a model file engine can load (see
// Check).
func File(path, engine string) error {
	fh, size, err := open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	return Check(fh, size, path, engine)
}

// Check checks that the size bytes read through r, named name in errors (a
// path or an s3:// URL, whose extension counts for a .ckpt), are a model
// file engine can load: safetensors for the built-in engine; safetensors,
// GGUF or a PyTorch .ckpt (a zip) for the others.
func Check(r io.ReaderAt, size int64, name, engine string) error {
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
	_, _, err := parseHeader(r, size, name)
	if errors.Is(err, modelformat.ErrUnknownFormat) {
		return fmt.Errorf("%w; %s", err, want)
	}
	return err
}

// ParseFile parses the header of the safetensors or GGUF file at path
// (modelformat.ParseHeader); errors name the file.
func ParseFile(path string) (string, modelformat.Header, error) {
	fh, size, err := open(path)
	if err != nil {
		return "", nil, err
	}
	defer fh.Close()
	return parseHeader(fh, size, path)
}

func parseHeader(r io.ReaderAt, size int64, name string) (string, modelformat.Header, error) {
	format, h, err := modelformat.ParseHeader(r, size)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, err)
	}
	return format, h, nil
}

// loraFile checks that the file at path is a LoRA engine can apply: for
// the built-in engine, a reference LoRA (refgen.OpenLoRA); for the others
// File's check is all.
func loraFile(path, engine string) error {
	if engine != "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if _, err := refgen.OpenLoRA(data); err != nil {
		return fmt.Errorf("%s: engine %s takes LoRAs made by `genfleet models make --arch refgen-lora`: %w", path, modelcache.EngineBuiltin, err)
	}
	return nil
}

// open opens the regular file at path and returns its size.
func open(path string) (*os.File, int64, error) {
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
