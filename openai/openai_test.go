package openai

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for s, want := range map[string][2]int{"": {0, 0}, "auto": {0, 0}, "512x768": {512, 768}, "64x64": {64, 64}} {
		w, h, err := parseSize(s)
		if err != nil || w != want[0] || h != want[1] {
			t.Errorf("parseSize(%q) = %d, %d, %v", s, w, h, err)
		}
	}
	for _, s := range []string{"512", "512x", "x512", "0x64", "-64x64", "1024X1024", "big"} {
		if _, _, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) accepted", s)
		}
	}
}

// A request waits the configured time, less when the client asks, and
// answers before the client's own timeout.
func TestWaitFor(t *testing.T) {
	h, _ := New(Config{API: http.NotFoundHandler(), Wait: time.Minute})
	for _, tc := range []struct {
		header, value string
		want          time.Duration
	}{
		{"", "", time.Minute},
		{"X-Genfleet-Wait", "2s", 2 * time.Second},
		{"X-Genfleet-Wait", "1.5", 1500 * time.Millisecond},
		{"X-Genfleet-Wait", "1h", time.Minute},
		{"X-Genfleet-Wait", "soon", time.Minute},
		{"X-Stainless-Timeout", "600", time.Minute},
		{"X-Stainless-Timeout", "30", 25 * time.Second},
		{"X-Stainless-Timeout", "5", 4 * time.Second},
	} {
		r, _ := http.NewRequest("POST", "/v1/images/generations", nil)
		if tc.header != "" {
			r.Header.Set(tc.header, tc.value)
		}
		if got := h.waitFor(r); got != tc.want {
			t.Errorf("%s: %s → %v, want %v", tc.header, tc.value, got, tc.want)
		}
	}
}

// OpenAI's mask (transparent where to edit) becomes genfleet's (white
// where to change).
func TestGenfleetMask(t *testing.T) {
	enc := func(img image.Image) []byte {
		var buf bytes.Buffer
		png.Encode(&buf, img)
		return buf.Bytes()
	}
	m := image.NewNRGBA(image.Rect(0, 0, 8, 8))
	for y := range 8 {
		for x := range 8 {
			a := uint8(255)
			if x >= 4 {
				a = 0
			}
			m.SetNRGBA(x, y, color.NRGBA{10, 20, 30, a})
		}
	}
	out, err := genfleetMask(enc(m), 8, 8)
	if err != nil {
		t.Fatal(err)
	}
	g, err := png.Decode(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if c := color.GrayModel.Convert(g.At(1, 1)).(color.Gray); c.Y != 0 {
		t.Errorf("an opaque pixel became %v, want black (kept)", c)
	}
	if c := color.GrayModel.Convert(g.At(6, 1)).(color.Gray); c.Y != 255 {
		t.Errorf("a transparent pixel became %v, want white (changed)", c)
	}
	opaque := image.NewGray(image.Rect(0, 0, 8, 8))
	if _, err := genfleetMask(enc(opaque), 8, 8); err == nil {
		t.Error("a mask without transparency was taken")
	}
	if _, err := genfleetMask(enc(m), 16, 8); err == nil {
		t.Error("a mask of another size was taken")
	}
	if _, err := genfleetMask([]byte("nope"), 8, 8); err == nil {
		t.Error("a mask that is no image was taken")
	}
}
