package helptext

import (
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	const text = `# stable-diffusion.cpp sd-cli --help
# commit: abc1234
Usage: sd-cli [options]

CLI Options:
  -o, --output <string>         path to write result image to
  --canny                       apply canny preprocessor
  --motion-module <string>      path to AnimateDiff motion module (SD 1.5); enables video generation on
                                --video-frames > 1
  --pm-style-strength <float>              
  --sampling-method             sampling method, one of [euler, euler_a,
                                dpm++2m, res_2s], default: euler
  --scheduler                   denoiser sigma scheduler, one of [discrete, karras], alias: normal=discrete, default:
                                model-specific
`
	h, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	if h.Commit != "abc1234" {
		t.Errorf("commit %q", h.Commit)
	}
	want := []string{"-o", "--output", "--canny", "--motion-module", "--pm-style-strength", "--sampling-method", "--scheduler"}
	if !slices.Equal(h.Flags, want) {
		t.Errorf("flags %v, want %v", h.Flags, want)
	}
	if got := h.Choices["--sampling-method"]; !slices.Equal(got, []string{"euler", "euler_a", "dpm++2m", "res_2s"}) {
		t.Errorf("sampling methods %v", got)
	}
	if got := h.Choices["--scheduler"]; !slices.Equal(got, []string{"discrete", "karras"}) {
		t.Errorf("schedulers %v", got)
	}
	if got := h.Aliases["--scheduler"]["normal"]; got != "discrete" {
		t.Errorf("alias %q", got)
	}
	if _, err := Parse("no options here\n"); err == nil {
		t.Error("a text without options parsed")
	}
}
