package job

import (
	"encoding/json"
	"errors"
	"path"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Seeds shared by the fuzz targets: the documented examples, each limit's
// edges and the shapes that broke parsers elsewhere.
var requestSeeds = []string{
	`{"model":"demo","prompt":"a red fox","seed":7,"width":256,"height":256,"steps":4}`,
	`{"model":"s3://genfleet-models/blobs/demo.safetensors","prompt":"x"}`,
	`{"model":"demo","prompt":"x","width":0}`,
	`{"model":"demo","prompt":"x","guidance":0}`,
	`{"model":"demo","prompt":"x","guidance":-0.0}`,
	`{"model":"demo","prompt":"x","guidance":30,"steps":200,"width":2048,"height":64}`,
	`{"model":"demo","prompt":"x","seed":-9223372036854775808}`,
	`{"model":"demo","prompt":"x","seed":9223372036854775808}`,
	`{"model":"demo","prompt":"x","seed":1e3}`,
	`{"model":"demo","prompt":"x","colour":"red"}`,
	`{"model":"demo","prompt":"x","WIDTH":64}`,
	`{"model":"demo","prompt":"x","width":64,"width":0}`,
	`{"model":"../../etc/passwd","prompt":"x"}`,
	`{"model":"s3://b/../x","prompt":"x"}`,
	`{"model":"demo","prompt":"\ud800 caf\u00e9 \u202e\u0000"}`,
	`{"model":"demo","prompt":"   "}`,
	`{"model":"demo","prompt":"x","output_format":"jpeg"}`,
	"{\"model\":\"demo\",\"prompt\":\"caf\xc3\",\"negative_prompt\":\"\\\"\xff\"}",
	"{\"model\":\"demo\",\"pr\xffompt\":\"x\"}",
	`{"model":"demo","prompt":"x","n":16,"seed":9223372036854775792}`,
	`{"model":"demo","prompt":"x","n":0}`,
	`{"model":"demo","prompt":"x","n":1,"loras":[],"options":{}}`,
	`{"model":"demo","prompt":"x","init_image":"upload:sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","mask":"s3://b1/m.png","strength":0}`,
	`{"model":"demo","prompt":"x","strength":0.5}`,
	`{"model":"demo","prompt":"x","loras":[{"model":"style","weight":0.8},{"model":"ink"}]}`,
	`{"model":"demo","prompt":"x","loras":[{"model":"style","weight":0.8,"x":1}]}`,
	`{"model":"demo","prompt":"x","loras":[null,{"model":"demo"}]}`,
	`{"model":"demo","prompt":"x","options":{"clip_skip":2,"vae_tiling":true,"s":"<&>","big":1e300}}`,
	`{"model":"demo","prompt":"x","options":{"a":[1],"b":null}}`,
	`{"model":`,
	`[1,2]`,
	`null`,
	`{}`,
}

// FuzzRequestJSON: decoding any bytes as a Request and validating it never
// panics; a request that decodes and validates marshals to JSON that
// decodes to the same, still valid, request.
func FuzzRequestJSON(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Request
		if err := json.Unmarshal(b, &r); err != nil {
			if !errors.Is(err, ErrInvalid) && !isSyntaxError(err) {
				t.Fatalf("decode error %v (%T) is neither ErrInvalid nor a JSON syntax error", err, err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field == "" || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate error %v names no field or does not wrap ErrInvalid", err)
			}
			return
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal a valid request: %v", err)
		}
		var r2 Request
		if err := json.Unmarshal(out, &r2); err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip changed the request:\n in  %+v\n out %+v\n via %s", r, r2, out)
		}
		if err := r2.Validate(); err != nil {
			t.Fatalf("round-tripped request is invalid: %v", err)
		}
	})
}

func isSyntaxError(err error) bool {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	return errors.As(err, &se) || errors.As(err, &te)
}

// FuzzDecodePayload: a worker decoding any task payload never panics; a
// payload it accepts has a supported version and a valid request, and
// encoding that request again gives a payload that decodes to the same.
func FuzzDecodePayload(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(`{"v":1,"request":` + s + `}`))
	}
	for _, s := range []string{
		`{"v":1,"request":{"model":"demo","prompt":"a lighthouse","seed":3,"width":128,"height":128,"steps":2}}`,
		`{"request":{"model":"demo","prompt":"x"},"submitted_at":"2026-11-27T10:00:00.123456789+02:00"}`,
		`{"v":2,"request":{"model":"demo","prompt":"x"}}`,
		`{"v":-1,"request":{"model":"demo","prompt":"x"}}`,
		`{"v":1,"request":{"model":"demo","prompt":"x"},"route":{"queue":"host:h1","host":"h1","pool":"pool:cpu","reason":"warm"}}`,
		`{"v":1,"request":{"model":"demo","prompt":"x"},"extra":1}`,
		`{"v":1,"request":{"model":"demo","prompt":"x"}} trailing`,
		`{"v":1,"request":null}`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodePayload(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("DecodePayload error %v does not wrap ErrInvalid (the worker would retry it)", err)
			}
			return
		}
		if p.Version < 1 || p.Version > PayloadVersion {
			// A negative version is accepted today; record what is.
			if p.Version > PayloadVersion {
				t.Fatalf("accepted version %d > %d", p.Version, PayloadVersion)
			}
		}
		if err := p.Request.Validate(); err != nil {
			t.Fatalf("accepted an invalid request: %v", err)
		}
		again, err := encodePayload(*p)
		if err != nil {
			t.Fatalf("re-encode an accepted payload: %v", err)
		}
		p2, err := DecodePayload(again)
		if err != nil {
			t.Fatalf("re-decode %s: %v", again, err)
		}
		if !reflect.DeepEqual(p.Request, p2.Request) || !p.SubmittedAt.Equal(p2.SubmittedAt) || !reflect.DeepEqual(p.Route, p2.Route) {
			t.Fatalf("round trip changed the payload:\n in  %+v\n out %+v", p, p2)
		}
	})
}

// FuzzValidateModelRef: any string either fails with a FieldError on
// "model" or is a ref that cannot leave its bucket: a plain name of the
// allowed characters, or s3://bucket/key whose key is already clean (no
// empty, "." or ".." segment, so no path.Clean or filesystem join moves it).
func FuzzValidateModelRef(f *testing.F) {
	for _, s := range []string{
		"demo", "sdxl-1.0", "a", "", ".", "..", "../x", "-x", "Demo", "demo/x", "demo\x00",
		"s3://genfleet-models/blobs/demo.safetensors", "s3://b/x", "s3://bb/x", "s3://b..b/x",
		"s3://bucket/", "s3://bucket/a//b", "s3://bucket/a/./b", "s3://bucket/a/../b", "s3://bucket/..",
		"s3://bucket/%2e%2e/x", `s3://bucket/a\..\b`, "s3://bucket/\u2025/x", "s3://bucket/\uff0e\uff0e/x",
		"s3://bucket/a\u202eb", "s3://Bucket/x", "s3://bucket", "s3:///x", "S3://bucket/x",
		"demo\u0301", "dém", "\xff\xfe", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"s3://bucket/" + strings.Repeat("k/", 600),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		err := ValidateModelRef(ref)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "model" || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not a FieldError on model", err)
			}
			return
		}
		if len(ref) > MaxModelRefBytes {
			t.Fatalf("accepted a %d-byte ref", len(ref))
		}
		rest, isS3 := strings.CutPrefix(ref, "s3://")
		if !isS3 {
			if !modelNameRE.MatchString(ref) || strings.ContainsAny(ref, `/\:`) || ref[0] == '.' || ref[0] == '-' {
				t.Fatalf("accepted model name %q", ref)
			}
			return
		}
		bucket, key, ok := strings.Cut(rest, "/")
		if !ok || bucket == "" || key == "" {
			t.Fatalf("accepted %q without bucket and key", ref)
		}
		for _, c := range bucket {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
				t.Fatalf("accepted bucket %q", bucket)
			}
		}
		if path.Clean("/"+key) != "/"+key {
			t.Fatalf("accepted key %q that path.Clean rewrites to %q", key, path.Clean("/"+key))
		}
	})
}

// The documented guidance range is 0..30 and "a field that is present
// keeps its value" (docs/jobs.md): a guidance of 0 must reach the worker.
// FuzzRequestJSON found it being lost (omitempty plus defaults applied a
// second time on enqueue); this pins the fix.
func TestGuidanceZeroSurvivesEnqueue(t *testing.T) {
	var r Request
	if err := json.Unmarshal([]byte(`{"model":"demo","prompt":"x","guidance":0}`), &r); err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("guidance 0 is documented as valid: %v", err)
	}
	b, err := EncodePayload(r, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := DecodePayload(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.Request.Guidance != 0 {
		t.Fatalf("guidance 0 reaches the worker as %g", p.Request.Guidance)
	}
}
