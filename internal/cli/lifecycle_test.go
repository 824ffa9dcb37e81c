package cli

import (
	"strings"
	"testing"

	"github.com/genfleet/genfleet/job"
)

func TestParsePriorityWeights(t *testing.T) {
	got, err := ParsePriorityWeights(" high=8, normal=2 ,low=1")
	if err != nil || got[job.PriorityHigh] != 8 || got[job.PriorityNormal] != 2 || got[job.PriorityLow] != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"high=6,normal=3", "no weight for low"},
		{"high=6,normal=3,low=0", "≥ 1"},
		{"high=6,normal=3,low=x", "≥ 1"},
		{"urgent=6,normal=3,low=1", "not PRIORITY=WEIGHT"},
		{"high=6,high=3,normal=3,low=1", "twice"},
		{"high", "not PRIORITY=WEIGHT"},
	} {
		if _, err := ParsePriorityWeights(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one saying %q", tc.in, err, tc.want)
		}
	}
}

func TestParsePairs(t *testing.T) {
	got, err := ParsePairs("--openai-model-alias", "NAME=MODEL", " dall-e-3=sdxl, gpt-image-1 = sdxl ,")
	if err != nil || len(got) != 2 || got["dall-e-3"] != "sdxl" || got["gpt-image-1"] != "sdxl" {
		t.Fatalf("ParsePairs = %v, %v", got, err)
	}
	if got, err := ParsePairs("--x", "K=V", ""); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{"dall-e-3", "=sdxl", "dall-e-3="} {
		if _, err := ParsePairs("--openai-model-alias", "NAME=MODEL", bad); err == nil || !strings.Contains(err.Error(), "--openai-model-alias") ||
			!strings.Contains(err.Error(), "NAME=MODEL") {
			t.Errorf("%q: %v; want an error naming the flag and the form", bad, err)
		}
	}
}
