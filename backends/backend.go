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
	"slices"
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
	// LoRAs are the job's LoRAs in the job's order: each a one-file model
	// of kind lora, mapped and leased like the model's own files.
	LoRAs []LoRA
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

// LoRA is a low-rank adaptation of a job's model, with its weight.
type LoRA struct {
	// Name is how the job named the LoRA.
	Name   string
	Weight float64
	// File is the LoRA's file: Data for an in-process backend, Path for an
	// engine out of process.
	File File
}

// Image is an input image of a job (its init image or mask), checked to be
// a PNG or JPEG of the job's size before the backend sees it.
type Image struct {
	// Data is the file's bytes as uploaded; Format is "png" or "jpeg".
	Data   []byte
	Format string
	// Digest is "sha256:<hex>" of Data.
	Digest string
	// Image is Data decoded.
	Image image.Image
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
	// N is how many images the job makes (0 means 1); image k has seed
	// Seed+k. Generate makes one image, for Seed; GenerateAll makes N.
	N int
	// InitImage, when set, makes the job image-to-image; Mask, when set
	// too, limits the change to the mask's light parts. Strength (0..1) is
	// how far the init image is moved. Only backends whose Features list
	// FeatureInitImage (FeatureMask) take them.
	InitImage *Image
	Mask      *Image
	Strength  float64
	// Options are the engine options of the job, checked against the
	// engine's option table by the scheduler and again by the backend.
	Options map[string]any
}

// Features a backend may support beyond one text-to-image picture, named
// as the job field that asks for each. Several images per job (n) need no
// feature: every backend makes them, one Generate per image or, for a
// Batcher, in one run.
const (
	FeatureInitImage = "init_image"
	FeatureMask      = "mask"
	FeatureLoRAs     = "loras"
)

// Batcher is a Backend that makes a job's N images in one run (an engine's
// batch count) instead of one Generate per image. Image k must be the image
// Generate makes for seed Seed+k alone. progress counts the steps of all
// images together.
type Batcher interface {
	GenerateBatch(ctx context.Context, m Model, p Params, progress ProgressFunc) ([]image.Image, error)
}

// GenerateAll makes the job's images, max(p.N, 1) of them, image k with
// seed p.Seed+k: in one run when b is a Batcher, else with one Generate
// per image, progress counting the steps of all images together.
func GenerateAll(ctx context.Context, b Backend, m Model, p Params, progress ProgressFunc) ([]image.Image, error) {
	n := max(p.N, 1)
	if bb, ok := b.(Batcher); ok && n > 1 {
		imgs, err := bb.GenerateBatch(ctx, m, p, progress)
		if err == nil && len(imgs) != n {
			return nil, fmt.Errorf("%s made %d images, the job asked for %d", b.Name(), len(imgs), n)
		}
		return imgs, err
	}
	imgs := make([]image.Image, 0, n)
	for k := range n {
		q := p
		q.N, q.Seed = 1, p.Seed+int64(k)
		var prog ProgressFunc
		if progress != nil {
			prog = func(step, total int) { progress(k*total+step, n*total) }
		}
		img, err := b.Generate(ctx, m, q, prog)
		if err != nil {
			if n > 1 {
				return nil, fmt.Errorf("image %d of %d (seed %d): %w", k+1, n, q.Seed, err)
			}
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

// Supports reports whether b's Features list feature.
func Supports(b Backend, feature string) bool { return slices.Contains(b.Features(), feature) }

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
	// Features lists what the backend does beyond one text-to-image
	// picture (FeatureInitImage, FeatureMask, FeatureLoRAs); the worker
	// refuses a job that asks for another.
	Features() []string
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
