package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Limits and defaults of the generation features: several images per job,
// image-to-image and inpainting, LoRAs and engine options. Like the limits
// in job.go they are part of the contract.
const (
	// MaxN is the most images one job makes.
	MaxN = 16
	// DefaultStrength is the strength of an image-to-image job that names
	// none: how far the init image is moved toward a new image.
	DefaultStrength = 0.75
	// MaxLoRAs is the most LoRAs one job applies.
	MaxLoRAs = 8
	// MinLoRAWeight and MaxLoRAWeight bound a LoRA's weight.
	MinLoRAWeight = -4.0
	MaxLoRAWeight = 4.0
	// DefaultLoRAWeight is the weight of a LoRA that names none.
	DefaultLoRAWeight = 1.0
	// MaxOptions is the most engine options one job sets; an option's
	// string value is at most MaxOptionBytes.
	MaxOptions     = 16
	MaxOptionBytes = 64
	// UploadRefPrefix starts the ref of an image uploaded with
	// POST /v1/uploads: "upload:sha256:<64 lower-case hex digits>", the
	// sha256 of the image's bytes.
	UploadRefPrefix = "upload:sha256:"
)

// Count is a number of images, 1..MaxN. A request with one image is
// written without "n": its zero, for JSON's omitzero, is 1, so the payload
// and RequestDigest of a one-image job are what they were before the field
// existed, and "n": 1 written out or left away ask for the same job.
type Count int

// IsZero reports whether c is the default, 1 (see Count).
func (c Count) IsZero() bool { return c == 1 }

// LoRA is a low-rank adaptation applied to a job's model: a registered
// model of kind lora, and how strongly it is applied.
type LoRA struct {
	// Model is the LoRA's registered name or s3://bucket/key.
	Model string `json:"model"`
	// Weight scales the LoRA's delta; absent means DefaultLoRAWeight.
	Weight float64 `json:"weight"`
}

// plainLoRA is LoRA without its UnmarshalJSON method.
type plainLoRA LoRA

// UnmarshalJSON decodes a LoRA strictly (unknown fields are an error) and
// gives an absent weight its default.
func (l *LoRA) UnmarshalJSON(b []byte) error {
	*l = LoRA{Weight: DefaultLoRAWeight}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode((*plainLoRA)(l)); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fieldErr("loras", "%s must be a JSON %s, got %s", te.Field, te.Type.Kind(), te.Value)
		}
		if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return fieldErr("loras", "%s is not a known field of a LoRA (model, weight)", msg)
		}
		return fieldErr("loras", "%v", err)
	}
	return nil
}

// Images is how many images the request asks for: N, at least 1.
func (r *Request) Images() int { return max(int(r.N), 1) }

// ImageSeed is the seed of image k (0-based) of the request: Seed + k.
// Validate makes sure the last one does not overflow.
func (r *Request) ImageSeed(k int) int64 { return r.Seed + int64(k) }

// StrengthValue is Strength, or DefaultStrength when it is nil.
func (r *Request) StrengthValue() float64 {
	if r.Strength == nil {
		return DefaultStrength
	}
	return *r.Strength
}

// Float returns a pointer to v, for a Request's Strength.
func Float(v float64) *float64 { return &v }

// normalize makes a decoded request compare equal to its re-encoding: an
// empty "loras" or "options", which encoding leaves out, becomes nil.
func (r *Request) normalize() {
	if len(r.LoRAs) == 0 {
		r.LoRAs = nil
	}
	if len(r.Options) == 0 {
		r.Options = nil
	}
}

// UploadRef is the ref of an uploaded image whose bytes hash to sha256hex.
func UploadRef(sha256hex string) string { return UploadRefPrefix + sha256hex }

// UploadDigest returns the sha256 hex of an upload ref, and whether ref is
// a well-formed one.
func UploadDigest(ref string) (string, bool) {
	h, ok := strings.CutPrefix(ref, UploadRefPrefix)
	if !ok || len(h) != 64 {
		return "", false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", false
		}
	}
	return h, true
}

// ValidateImageRef checks that ref, the value of field, names an input
// image: an upload ref or an s3://bucket/key that cannot leave its bucket.
func ValidateImageRef(field, ref string) error {
	switch {
	case len(ref) > MaxModelRefBytes:
		return fieldErr(field, "is longer than %d bytes", MaxModelRefBytes)
	case strings.HasPrefix(ref, "s3://"):
		return validS3Ref(field, ref)
	case strings.HasPrefix(ref, "upload:"):
		if _, ok := UploadDigest(ref); !ok {
			return fieldErr(field, "%q is not an upload ref (%s<64 lower-case hex digits>, as POST /v1/uploads answers)", ref, UploadRefPrefix)
		}
		return nil
	}
	return fieldErr(field, "%q is neither an upload ref (%s<hex>, from POST /v1/uploads) nor an s3://bucket/key", ref, UploadRefPrefix)
}

var optionNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// validateGeneration checks the generation features' fields; Validate
// calls it last.
func (r *Request) validateGeneration() error {
	if r.N < 1 || r.N > MaxN {
		return fieldErr("n", "must be between 1 and %d, got %d", MaxN, r.N)
	}
	if r.Seed > math.MaxInt64-int64(r.N-1) {
		return fieldErr("seed", "%d is too large for %d images: image k has seed seed+k, which must fit an int64", r.Seed, r.N)
	}
	if r.InitImage != "" {
		if err := ValidateImageRef("init_image", r.InitImage); err != nil {
			return err
		}
	}
	if r.Mask != "" {
		if r.InitImage == "" {
			return fieldErr("mask", "needs init_image: a mask says which part of the init image to change")
		}
		if err := ValidateImageRef("mask", r.Mask); err != nil {
			return err
		}
	}
	if r.Strength != nil {
		s := *r.Strength
		switch {
		case r.InitImage == "":
			return fieldErr("strength", "needs init_image: strength says how far the init image is changed")
		case math.IsNaN(s) || s < 0 || s > 1:
			return fieldErr("strength", "must be between 0 and 1, got %g", s)
		}
	}
	if len(r.LoRAs) > MaxLoRAs {
		return fieldErr("loras", "has %d entries, at most %d allowed", len(r.LoRAs), MaxLoRAs)
	}
	seen := map[string]int{}
	for i, l := range r.LoRAs {
		field := fmt.Sprintf("loras[%d].model", i)
		if err := validModelRef(field, l.Model); err != nil {
			return err
		}
		if l.Model == r.Model {
			return fieldErr(field, "%q is the job's model; a LoRA is a model of kind lora", l.Model)
		}
		if j, dup := seen[l.Model]; dup {
			return fieldErr(field, "%q is also loras[%d]; give each LoRA once, with the sum of the weights", l.Model, j)
		}
		seen[l.Model] = i
		if w := l.Weight; math.IsNaN(w) || w < MinLoRAWeight || w > MaxLoRAWeight {
			return fieldErr(fmt.Sprintf("loras[%d].weight", i), "must be between %g and %g, got %g", MinLoRAWeight, MaxLoRAWeight, w)
		}
	}
	if len(r.Options) > MaxOptions {
		return fieldErr("options", "has %d entries, at most %d allowed", len(r.Options), MaxOptions)
	}
	for name, v := range r.Options {
		if !optionNameRE.MatchString(name) {
			return fieldErr("options", "%q is not an option name (1 to 32 of a-z, 0-9, '_', starting with a letter)", name)
		}
		if err := validOptionValue(name, v); err != nil {
			return err
		}
	}
	return nil
}

// validOptionValue checks that v, the value of option name, is a boolean,
// a finite number or a short string: what an engine option can be.
func validOptionValue(name string, v any) error {
	field := "options." + name
	switch x := v.(type) {
	case bool:
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fieldErr(field, "must be a finite number")
		}
	case float32:
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fieldErr(field, "must be a finite number")
		}
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
	case string:
		if len(x) > MaxOptionBytes || !utf8.ValidString(x) {
			return fieldErr(field, "must be at most %d bytes of UTF-8", MaxOptionBytes)
		}
	default:
		return fieldErr(field, "must be a boolean, a number or a string, got %s", optionKind(v))
	}
	return nil
}

// optionKind names the JSON kind of an option value for messages.
func optionKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// OptionNumber returns option v as a float64, and whether it is a number.
func OptionNumber(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int8:
		return float64(x), true
	case int16:
		return float64(x), true
	case int32:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint:
		return float64(x), true
	case uint8:
		return float64(x), true
	case uint16:
		return float64(x), true
	case uint32:
		return float64(x), true
	case uint64:
		return float64(x), true
	}
	return 0, false
}
