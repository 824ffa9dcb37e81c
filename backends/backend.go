// Package backends defines the Backend interface that turns a mapped model
// and a request into an image, and the registry that names backends.
//
// An in-process backend receives the model's files as read-only mappings
// (File.Data) and must never copy or write them, nor keep them after
// Generate returns: the worker unmaps them once the job ends. An
// out-of-process engine gets File.Path instead and maps the file itself,
// which shares the same page cache; the worker holds the cache lease for
// the duration of Generate (Model.Hold extends it).
package backends

import (
	"context"
	"errors"
	"fmt"
	"image"
	"sort"
	"sync"
)

// Model is a model as the worker hands it to a backend.
type Model struct {
	// Name is how the job named the model (a registry name or an s3:// ref).
	Name string
	// Files are the model's files in manifest order: one for the built-in
	// engine, one or more (split components) for others.
	Files []File
	// Hold, when set, takes a further lease on every file of the model that
	// lasts until release is called, beyond the end of Generate: for a
	// backend that keeps an engine process with the files mapped between
	// jobs, so that eviction skips them meanwhile.
	Hold func() (release func(), err error)
}

// Main is the model's first file, the whole model for the built-in
// engine; the zero File when there is none.
func (m Model) Main() File {
	if len(m.Files) == 0 {
		return File{}
	}
	return m.Files[0]
}

// File is one file of a model.
type File struct {
	// Role is the part of a split model this file is ("model",
	// "diffusion_model", "vae", …), from the manifest; may be empty.
	Role string
	Name string
	// Digest is "sha256:<hex>" of the file.
	Digest string
	// Path is the blob's path in the cache, for out-of-process engines.
	Path string
	// Data is the read-only shared mapping of the whole file.
	Data []byte
}

// Params are the generation parameters of a validated request.
type Params struct {
	Prompt         string
	NegativePrompt string
	Width, Height  int
	Steps          int
	Seed           int64
	Guidance       float64
	// SamplingMethod and Scheduler name the engine's sampler and sigma
	// schedule; empty means the engine's default. Only engines that have
	// such choices accept them.
	SamplingMethod string
	Scheduler      string
}

// ProgressFunc is called after each step with the number of steps done.
// It may be nil.
type ProgressFunc func(step, total int)

// Backend generates images.
type Backend interface {
	// Name is the registry name, e.g. "cpu".
	Name() string
	// DeviceClass is the pool this backend serves, e.g. "cpu" or "cuda".
	DeviceClass() string
	// Engines lists the model engines this backend runs, as manifests name
	// them ("refgen" for the built-in family, "sdcpp", …). A worker takes
	// only models whose engine is listed.
	Engines() []string
	// Generate runs the model. It checks ctx between steps and returns
	// ctx's error promptly once ctx is done. A model the backend cannot run
	// yields an error wrapping ErrBadModel.
	Generate(ctx context.Context, m Model, p Params, progress ProgressFunc) (image.Image, error)
}

var (
	// ErrBadModel means the model file is not one this backend can run.
	// Retrying does not help.
	ErrBadModel = errors.New("model not supported by backend")
	// ErrUnavailable means the backend cannot run on this machine (no driver,
	// no device); the error wrapping it says why.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrUnknown means no backend is registered under the name asked for.
	ErrUnknown = errors.New("unknown backend")
	// ErrBadParams means the request asks for something this backend
	// cannot do (a parameter it does not support, a size it cannot make);
	// retrying does not help.
	ErrBadParams = errors.New("parameters not supported by backend")
)

// Factory makes a backend; it returns an error wrapping ErrUnavailable when
// the backend cannot run here.
type Factory func() (Backend, error)

var (
	mu       sync.Mutex
	registry = map[string]Factory{}
)

// Register makes a backend available under name. Backend packages call it
// from init; registering a name twice panics.
func Register(name string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[name]; dup {
		panic("backends: Register called twice for " + name)
	}
	registry[name] = f
}

// New returns the backend registered under name.
func New(name string) (Backend, error) {
	mu.Lock()
	f, ok := registry[name]
	mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (registered: %v)", ErrUnknown, name, Names())
	}
	return f()
}

// Names lists the registered backends, sorted.
func Names() []string {
	mu.Lock()
	defer mu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
