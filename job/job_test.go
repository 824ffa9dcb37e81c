package job

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func valid() Request {
	r := Request{Model: "demo", Prompt: "a red fox", Seed: 7, Width: 256, Height: 256, Steps: 4}
	r.ApplyDefaults()
	return r
}

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Request)
		field string
	}{
		{"empty model", func(r *Request) { r.Model = "" }, "model"},
		{"path traversal model", func(r *Request) { r.Model = "../../etc/passwd" }, "model"},
		{"upper-case model", func(r *Request) { r.Model = "Demo" }, "model"},
		{"s3 ref with dotdot", func(r *Request) { r.Model = "s3://models/a/../b" }, "model"},
		{"s3 ref without key", func(r *Request) { r.Model = "s3://models/" }, "model"},
		{"s3 ref bad bucket", func(r *Request) { r.Model = "s3://A_B/key" }, "model"},
		{"empty prompt", func(r *Request) { r.Prompt = "  " }, "prompt"},
		{"prompt too long", func(r *Request) { r.Prompt = strings.Repeat("x", MaxPromptBytes+1) }, "prompt"},
		{"negative prompt not utf8", func(r *Request) { r.NegativePrompt = "\xff" }, "negative_prompt"},
		{"sampler with a space", func(r *Request) { r.SamplingMethod = "euler a" }, "sampling_method"},
		{"scheduler flag-like", func(r *Request) { r.Scheduler = "--karras" }, "scheduler"},
		{"width negative", func(r *Request) { r.Width = -8 }, "width"},
		{"width huge", func(r *Request) { r.Width = 100000 }, "width"},
		{"width not multiple of 8", func(r *Request) { r.Width = 260 }, "width"},
		{"height too small", func(r *Request) { r.Height = 32 }, "height"},
		{"steps negative", func(r *Request) { r.Steps = -1 }, "steps"},
		{"steps too many", func(r *Request) { r.Steps = 201 }, "steps"},
		{"guidance negative", func(r *Request) { r.Guidance = -1 }, "guidance"},
		{"format jpeg", func(r *Request) { r.OutputFormat = "jpeg" }, "output_format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid()
			tt.edit(&r)
			err := r.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Validate() = %v, want a FieldError", err)
			}
			if fe.Field != tt.field {
				t.Fatalf("field = %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid")
			}
		})
	}
}

func TestValidRequests(t *testing.T) {
	for _, model := range []string{"demo", "sdxl-1.0_base", "s3://genfleet-models/blobs/demo.safetensors"} {
		r := valid()
		r.Model = model
		if err := r.Validate(); err != nil {
			t.Errorf("model %q: %v", model, err)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	task, opts, err := NewTask("job-1", Request{Model: "demo", Prompt: "p", Seed: 3}, "")
	if err != nil {
		t.Fatal(err)
	}
	if task.Type() != TaskType {
		t.Fatalf("type %q", task.Type())
	}
	if len(opts) < 2 {
		t.Fatalf("options missing")
	}
	p, err := DecodePayload(task.Payload())
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != PayloadVersion || p.Request.Width != DefaultWidth || p.Request.Seed != 3 {
		t.Fatalf("decoded %+v", p)
	}
}

func TestDecodePayloadRejects(t *testing.T) {
	for name, in := range map[string]string{
		"not json":       `{`,
		"unknown field":  `{"v":1,"request":{"model":"demo","prompt":"x"},"extra":1}`,
		"future version": `{"v":99,"request":{"model":"demo","prompt":"x"}}`,
		"invalid field":  `{"v":1,"request":{"model":"demo","prompt":"x","steps":-1}}`,
	} {
		if _, err := DecodePayload([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestUnmarshalKeepsExplicitZeroAndDefaultsAbsent(t *testing.T) {
	var r Request
	if err := json.Unmarshal([]byte(`{"model":"demo","prompt":"p","width":0}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.Width != 0 || r.Height != DefaultHeight || r.Steps != DefaultSteps {
		t.Fatalf("got %+v", r)
	}
	var fe *FieldError
	if err := r.Validate(); !errors.As(err, &fe) || fe.Field != "width" {
		t.Fatalf("Validate = %v, want width error", err)
	}
	err := json.Unmarshal([]byte(`{"model":"demo","prompt":"p","widht":64}`), &r)
	if !errors.As(err, &fe) || fe.Field != "widht" {
		t.Fatalf("unknown field: %v", err)
	}
	err = json.Unmarshal([]byte(`{"model":"demo","prompt":"p","steps":"four"}`), &r)
	if !errors.As(err, &fe) || fe.Field != "steps" {
		t.Fatalf("wrong type: %v", err)
	}
}

func TestSamplerAndSchedulerAccepted(t *testing.T) {
	var r Request
	if err := json.Unmarshal([]byte(`{"model":"sdxl","prompt":"a cat","seed":1,"sampling_method":"dpm++2m","scheduler":"karras"}`), &r); err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.SamplingMethod != "dpm++2m" || r.Scheduler != "karras" {
		t.Errorf("decoded %+v", r)
	}
}
