// Package job is the contract shared by producers, the scheduler and
// workers: the generation request and its validation, the asynq task type
// and versioned payload, job statuses and the result a worker records.
//
// A producer in any language that speaks asynq can enqueue a job directly
// into Redis: task type TaskType, payload the JSON of Payload, queue
// PoolQueue(class), task id = job id. See docs/jobs.md.
package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// TaskType is the asynq task type of a generation job.
const TaskType = "genfleet:generate"

// PayloadVersion is the version of the Payload JSON this package writes.
// Workers accept versions 1..PayloadVersion.
const PayloadVersion = 1

// Limits on a Request. They are part of the contract: the scheduler and the
// worker both enforce them.
const (
	MinSize          = 64
	MaxSize          = 2048
	SizeMultiple     = 8
	MinSteps         = 1
	MaxSteps         = 200
	MaxPromptBytes   = 4096
	MaxModelRefBytes = 1024
	MinGuidance      = 0.0
	MaxGuidance      = 30.0
	DefaultWidth     = 512
	DefaultHeight    = 512
	DefaultSteps     = 20
	DefaultGuidance  = 7.5
	FormatPNG        = "png"
)

// Request is what a client asks for.
type Request struct {
	// Model is a registered model name ("demo") or an "s3://bucket/key" ref.
	Model          string  `json:"model"`
	Prompt         string  `json:"prompt"`
	NegativePrompt string  `json:"negative_prompt,omitempty"`
	Width          int     `json:"width,omitempty"`  // default 512
	Height         int     `json:"height,omitempty"` // default 512
	Steps          int     `json:"steps,omitempty"`  // default 20
	Seed           int64   `json:"seed"`             // any value; same seed → same image
	Guidance       float64 `json:"guidance"`         // default 7.5 when absent; 0 is valid
	// SamplingMethod and Scheduler name the engine's sampler and sigma
	// schedule ("euler_a", "karras", …); empty means the engine's default.
	// Only engines with such choices (sdcpp) accept them; the worker's
	// backend checks the value.
	SamplingMethod string `json:"sampling_method,omitempty"`
	Scheduler      string `json:"scheduler,omitempty"`
	OutputFormat   string `json:"output_format,omitempty"`

	// Generation features (docs/jobs.md, generation.go). Each is absent
	// from the JSON when unused, so a plain text-to-image job reads as it
	// did before they existed; each engine says which it runs.
	//
	// N is how many images, 1..MaxN, with seeds Seed, Seed+1, …; absent
	// means 1 (and 1 is not written out).
	N Count `json:"n,omitzero"`
	// InitImage makes the job image-to-image: an ImageRef of a PNG or JPEG
	// of exactly Width×Height.
	InitImage string `json:"init_image,omitempty"`
	// Mask limits the change to the mask's light parts (inpainting): an
	// ImageRef of the init image's size. Needs InitImage.
	Mask string `json:"mask,omitempty"`
	// Strength is how far the init image is moved, 0 (kept) to 1 (replaced);
	// nil means DefaultStrength. Needs InitImage.
	Strength *float64 `json:"strength,omitempty"`
	// LoRAs are registered models of kind lora applied to Model.
	LoRAs []LoRA `json:"loras,omitempty"`
	// Options are engine options by name ("clip_skip", "vae_tiling", …):
	// booleans, numbers or strings, each checked against the table of the
	// model's engine (docs/engines.md).
	Options map[string]any `json:"options,omitempty"`
}

// FieldError is a validation error that names the offending field by its
// JSON name.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// ErrInvalid is wrapped by every validation error, so callers can branch
// with errors.Is(err, job.ErrInvalid).
var ErrInvalid = errors.New("invalid job")

func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// UnmarshalJSON decodes a request strictly (unknown fields are an error)
// and gives absent optional fields their defaults. A field present with an
// explicit value keeps it, so {"width": 0} fails validation rather than
// silently becoming the default. A request that is not a JSON object, or
// has invalid UTF-8 in a string (which encoding/json would replace with
// U+FFFD), is refused with an error naming what is wrong and, for invalid
// UTF-8, the field.
func (r *Request) UnmarshalJSON(b []byte) error {
	if err := checkRawJSON("request", b); err != nil {
		return err
	}
	*r = requestDefaults
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode((*plainRequest)(r)); err != nil {
		return requestJSONError(err)
	}
	r.normalize()
	return nil
}

// plainRequest is Request without its UnmarshalJSON method.
type plainRequest Request

// requestDefaults is a request with every optional field at its default.
var requestDefaults = Request{Width: DefaultWidth, Height: DefaultHeight, Steps: DefaultSteps, Guidance: DefaultGuidance, OutputFormat: FormatPNG, N: 1}

// requestJSONError turns a decoding error into a FieldError where the
// field is known.
func requestJSONError(err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe // from a field's own decoder (LoRA)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fieldErr(te.Field, "must be a JSON %s, got %s", te.Type.Kind(), te.Value)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fieldErr(strings.Trim(msg, `"`), "is not a known field")
	}
	return fmt.Errorf("%w: %v", ErrInvalid, err)
}

// ApplyDefaults fills zero-valued optional fields with their defaults.
// A zero width or height therefore means "default", never "0"; explicit
// values out of range are rejected by Validate.
func (r *Request) ApplyDefaults() {
	if r.Width == 0 {
		r.Width = DefaultWidth
	}
	if r.Height == 0 {
		r.Height = DefaultHeight
	}
	if r.Steps == 0 {
		r.Steps = DefaultSteps
	}
	if r.Guidance == 0 {
		r.Guidance = DefaultGuidance
	}
	if r.OutputFormat == "" {
		r.OutputFormat = FormatPNG
	}
	if r.N == 0 {
		r.N = 1
	}
}

var (
	modelNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)
	choiceRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_+.-]{0,31}$`)
	bucketRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

// ValidateModelRef checks that ref is a model name or an s3://bucket/key
// URL that cannot escape its bucket.
func ValidateModelRef(ref string) error { return validModelRef("model", ref) }

// validModelRef is ValidateModelRef for the field named field.
func validModelRef(field, ref string) error {
	switch {
	case ref == "":
		return fieldErr(field, "is required (a registered model name or s3://bucket/key)")
	case len(ref) > MaxModelRefBytes:
		return fieldErr(field, "is longer than %d bytes", MaxModelRefBytes)
	case strings.HasPrefix(ref, "s3://"):
		return validS3Ref(field, ref)
	case !modelNameRE.MatchString(ref):
		return fieldErr(field, "%q is not a valid model name (lower-case letters, digits, '.', '_', '-'; at most 128; must start with a letter or digit) nor an s3://bucket/key ref", ref)
	}
	return nil
}

// validS3Ref checks that ref is an s3://bucket/key URL whose key cannot
// leave its bucket: no empty, "." or ".." segment.
func validS3Ref(field, ref string) error {
	bucket, key, _ := strings.Cut(strings.TrimPrefix(ref, "s3://"), "/")
	if !bucketRE.MatchString(bucket) || strings.Contains(bucket, "..") {
		return fieldErr(field, "%q has an invalid bucket name %q", ref, bucket)
	}
	if key == "" || strings.HasSuffix(key, "/") {
		return fieldErr(field, "%q names no object key", ref)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fieldErr(field, "%q has an empty, \".\" or \"..\" path segment", ref)
		}
	}
	return nil
}

// Validate checks every field against the limits above and returns a
// *FieldError for the first field that is wrong. Call ApplyDefaults first.
func (r *Request) Validate() error {
	if err := ValidateModelRef(r.Model); err != nil {
		return err
	}
	if err := validText("prompt", r.Prompt, true); err != nil {
		return err
	}
	if err := validText("negative_prompt", r.NegativePrompt, false); err != nil {
		return err
	}
	if err := validSize("width", r.Width); err != nil {
		return err
	}
	if err := validSize("height", r.Height); err != nil {
		return err
	}
	if r.Steps < MinSteps || r.Steps > MaxSteps {
		return fieldErr("steps", "must be between %d and %d, got %d", MinSteps, MaxSteps, r.Steps)
	}
	if r.Guidance != r.Guidance || r.Guidance < MinGuidance || r.Guidance > MaxGuidance {
		return fieldErr("guidance", "must be between %g and %g, got %g", MinGuidance, MaxGuidance, r.Guidance)
	}
	for _, c := range [...]struct{ field, v string }{{"sampling_method", r.SamplingMethod}, {"scheduler", r.Scheduler}} {
		if c.v != "" && !choiceRE.MatchString(c.v) {
			return fieldErr(c.field, "%q is not a valid name (1 to 32 of a-z, 0-9, '_', '+', '.', '-')", c.v)
		}
	}
	if r.OutputFormat != FormatPNG {
		return fieldErr("output_format", "must be %q, got %q", FormatPNG, r.OutputFormat)
	}
	return r.validateGeneration()
}

func validText(field, s string, required bool) error {
	switch {
	case required && strings.TrimSpace(s) == "":
		return fieldErr(field, "is required")
	case len(s) > MaxPromptBytes:
		return fieldErr(field, "is %d bytes, at most %d allowed", len(s), MaxPromptBytes)
	case !utf8.ValidString(s):
		return fieldErr(field, "is not valid UTF-8")
	}
	return nil
}

func validSize(field string, v int) error {
	if v < MinSize || v > MaxSize {
		return fieldErr(field, "must be between %d and %d, got %d", MinSize, MaxSize, v)
	}
	if v%SizeMultiple != 0 {
		return fieldErr(field, "must be a multiple of %d, got %d", SizeMultiple, v)
	}
	return nil
}
