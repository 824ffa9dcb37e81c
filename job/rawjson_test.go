package job

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// A body that is not a JSON object says so, not which Go type it could not
// fill; invalid UTF-8 in a string is refused naming the field, where
// encoding/json would have replaced it with U+FFFD and let it through.
func TestRequestJSONErrorsNameTheProblem(t *testing.T) {
	tests := []struct {
		name, body string
		field      string // "" for an error on the whole request
		want       string
	}{
		{"array", `[1,2]`, "", "the request must be a JSON object, got an array"},
		{"null", ` null`, "", "must be a JSON object, got null"},
		{"string", `"x"`, "", "must be a JSON object, got a string"},
		{"number", `7`, "", "must be a JSON object, got a number"},
		{"invalid utf-8 prompt", "{\"model\":\"demo\",\"prompt\":\"\xff\xfe\"}", "prompt", "is not valid UTF-8 (byte 0xff at offset 26 of the request)"},
		{"invalid utf-8 after an escape", "{\"model\":\"demo\",\"prompt\":\"a\\\"b\",\"negative_prompt\":\"\\\\\xc3\"}", "negative_prompt", "is not valid UTF-8"},
		{"invalid utf-8 in a key", "{\"model\":\"demo\",\"pr\xffompt\":\"x\"}", "pr\uFFFDompt", "field name is not valid UTF-8"},
		{"truncated sequence", "{\"model\":\"demo\",\"prompt\":\"caf\xc3\"}", "prompt", "is not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Request
			err := json.Unmarshal([]byte(tt.body), &r)
			if err == nil {
				t.Fatalf("decoded %+v, want an error", r)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q: want ErrInvalid containing %q", err, tt.want)
			}
			var fe *FieldError
			if got := ""; errors.As(err, &fe) {
				got = fe.Field
				if got != tt.field {
					t.Fatalf("field %q, want %q", got, tt.field)
				}
			} else if tt.field != "" {
				t.Fatalf("error %v names no field, want %q", err, tt.field)
			}
		})
	}
	// Valid UTF-8, escaped or not, still decodes to what was sent.
	var r Request
	if err := json.Unmarshal([]byte(`{"model":"demo","prompt":"café \u00e9 \ud83e\udd8a 🦊"}`), &r); err != nil || r.Prompt != "café é 🦊 🦊" {
		t.Fatalf("valid UTF-8: %q, %v", r.Prompt, err)
	}
}

// A payload straight from a foreign producer gets the same check.
func TestDecodePayloadRefusesInvalidUTF8(t *testing.T) {
	_, err := DecodePayload([]byte("{\"v\":1,\"request\":{\"model\":\"demo\",\"prompt\":\"\xff\xfe\"}}"))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "prompt" || !strings.Contains(err.Error(), "not valid UTF-8") {
		t.Fatalf("DecodePayload: %v, want a FieldError on prompt saying it is not valid UTF-8", err)
	}
}
