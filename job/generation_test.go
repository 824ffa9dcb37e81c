package job

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

const upload = "upload:sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestGenerationFieldsNameTheField(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Request)
		field string
	}{
		{"n zero", func(r *Request) { r.N = 0 }, "n"},
		{"n too many", func(r *Request) { r.N = MaxN + 1 }, "n"},
		{"seeds overflow", func(r *Request) { r.N = 3; r.Seed = math.MaxInt64 - 1 }, "seed"},
		{"init image not a ref", func(r *Request) { r.InitImage = "/etc/passwd" }, "init_image"},
		{"init image short upload", func(r *Request) { r.InitImage = "upload:sha256:abc" }, "init_image"},
		{"init image upper-case hex", func(r *Request) { r.InitImage = strings.ToUpper(upload) }, "init_image"},
		{"init image s3 dotdot", func(r *Request) { r.InitImage = "s3://b1/a/../x.png" }, "init_image"},
		{"mask without init", func(r *Request) { r.Mask = upload }, "mask"},
		{"mask bad ref", func(r *Request) { r.InitImage = upload; r.Mask = "http://x/y.png" }, "mask"},
		{"strength without init", func(r *Request) { r.Strength = Float(0.5) }, "strength"},
		{"strength above 1", func(r *Request) { r.InitImage = upload; r.Strength = Float(1.5) }, "strength"},
		{"strength NaN", func(r *Request) { r.InitImage = upload; r.Strength = Float(math.NaN()) }, "strength"},
		{"lora bad name", func(r *Request) { r.LoRAs = []LoRA{{Model: "Bad Name", Weight: 1}} }, "loras[0].model"},
		{"lora is the model", func(r *Request) { r.LoRAs = []LoRA{{Model: "demo", Weight: 1}} }, "loras[0].model"},
		{"lora twice", func(r *Request) { r.LoRAs = []LoRA{{Model: "a", Weight: 1}, {Model: "a", Weight: 1}} }, "loras[1].model"},
		{"lora weight", func(r *Request) { r.LoRAs = []LoRA{{Model: "a", Weight: 9}} }, "loras[0].weight"},
		{"too many loras", func(r *Request) {
			for i := range MaxLoRAs + 1 {
				r.LoRAs = append(r.LoRAs, LoRA{Model: string(rune('a' + i)), Weight: 1})
			}
		}, "loras"},
		{"option name", func(r *Request) { r.Options = map[string]any{"Clip-Skip": 2.0} }, "options"},
		{"option object", func(r *Request) { r.Options = map[string]any{"x": map[string]any{}} }, "options.x"},
		{"option null", func(r *Request) { r.Options = map[string]any{"x": nil} }, "options.x"},
		{"option long string", func(r *Request) { r.Options = map[string]any{"x": strings.Repeat("a", MaxOptionBytes+1)} }, "options.x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid()
			tt.edit(&r)
			err := r.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want a FieldError on %q", err, tt.field)
			}
		})
	}
}

func TestGenerationFieldsValid(t *testing.T) {
	r := valid()
	r.N, r.Seed = MaxN, math.MaxInt64-MaxN+1
	r.InitImage, r.Mask, r.Strength = upload, "s3://genfleet-uploads/masks/m.png", Float(0)
	r.LoRAs = []LoRA{{Model: "style", Weight: -4}, {Model: "s3://loras/x.safetensors", Weight: 4}}
	r.Options = map[string]any{"clip_skip": 2.0, "vae_tiling": true, "x": "y"}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.ImageSeed(MaxN-1) != math.MaxInt64 {
		t.Fatalf("last seed %d", r.ImageSeed(MaxN-1))
	}
}

// A JSON request decodes each feature; absent ones take their defaults and
// are left out when it is encoded again, so a plain request's payload is
// what it was before the features existed.
func TestGenerationFieldsJSON(t *testing.T) {
	var r Request
	body := `{"model":"demo","prompt":"x","n":4,"init_image":"` + upload + `","mask":"` + upload + `","strength":0,` +
		`"loras":[{"model":"style","weight":0.5},{"model":"ink"}],"options":{"clip_skip":2}}`
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.N != 4 || r.Strength == nil || *r.Strength != 0 || r.StrengthValue() != 0 ||
		len(r.LoRAs) != 2 || r.LoRAs[1].Weight != DefaultLoRAWeight || r.Options["clip_skip"] != 2.0 {
		t.Fatalf("decoded %+v", r)
	}

	var plain Request
	if err := json.Unmarshal([]byte(`{"model":"demo","prompt":"x","n":1,"loras":[],"options":{}}`), &plain); err != nil {
		t.Fatal(err)
	}
	if plain.N != 1 || plain.LoRAs != nil || plain.Options != nil || plain.StrengthValue() != DefaultStrength {
		t.Fatalf("decoded %+v", plain)
	}
	b, err := EncodePayload(plain, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"v":1,"request":{"model":"demo","prompt":"x","width":512,"height":512,"steps":20,"seed":0,"guidance":7.5,"output_format":"png"}}`
	if string(b) != want {
		t.Fatalf("payload\n got %s\nwant %s", b, want)
	}
	var absent Request
	_ = json.Unmarshal([]byte(`{"model":"demo","prompt":"x"}`), &absent)
	if RequestDigest(&plain) != RequestDigest(&absent) {
		t.Fatal(`"n": 1 written out changes the request's digest`)
	}

	for body, field := range map[string]string{
		`{"model":"demo","prompt":"x","n":0}`:                                   "n",
		`{"model":"demo","prompt":"x","n":2.5}`:                                 "n",
		`{"model":"demo","prompt":"x","loras":[{"model":"a","colour":"red"}]}`:  "loras",
		`{"model":"demo","prompt":"x","loras":[{"model":"a","weight":"high"}]}`: "loras",
		`{"model":"demo","prompt":"x","loras":[null]}`:                          "loras[0].model",
		`{"model":"demo","prompt":"x","options":{"a":[1]}}`:                     "options.a",
	} {
		var r Request
		err := json.Unmarshal([]byte(body), &r)
		if err == nil {
			err = r.Validate()
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: %v, want a FieldError on %q", body, err, field)
		}
	}
}

// The canonical payload decoder reads every feature the encoder writes
// (except options, which take the strict decode) and gives what the strict
// decode gives.
func TestGenerationPayloadCanonical(t *testing.T) {
	r := valid()
	r.N, r.InitImage, r.Mask, r.Strength = 3, upload, upload, Float(0.25)
	r.LoRAs = []LoRA{{Model: "style", Weight: 0.8}, {Model: "ink", Weight: -1.5}}
	b, err := EncodePayload(r, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	fast, ok := decodeCanonicalPayload(b)
	if !ok {
		t.Fatalf("canonical decoder refused %s", b)
	}
	slow, err := decodePayloadJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	if fast.Request.N != 3 || *fast.Request.Strength != 0.25 || len(fast.Request.LoRAs) != 2 ||
		RequestDigest(&fast.Request) != RequestDigest(&slow.Request) || RequestDigest(&fast.Request) != RequestDigest(&r) {
		t.Fatalf("canonical %+v, strict %+v", fast.Request, slow.Request)
	}
	r.Options = map[string]any{"clip_skip": 2.0}
	b, err = EncodePayload(r, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := DecodePayload(b)
	if err != nil || p.Request.Options["clip_skip"] != 2.0 {
		t.Fatalf("payload with options: %v %+v", err, p)
	}
}

func TestImageKey(t *testing.T) {
	for k, want := range map[int]string{0: "outputs/j-1.png", 1: "outputs/j-1/1.png", MaxN - 1: "outputs/j-1/15.png"} {
		got, err := ImageKey("outputs/", "j-1", k)
		if err != nil || got != want {
			t.Errorf("ImageKey(%d) = %q, %v; want %q", k, got, err, want)
		}
	}
	for _, k := range []int{-1, MaxN} {
		if _, err := ImageKey("outputs/", "j-1", k); err == nil {
			t.Errorf("ImageKey(%d) accepted", k)
		}
	}
	if _, err := ImageKey("outputs/", "../x", 1); err == nil {
		t.Error("ImageKey accepted an invalid id")
	}
}
