package s3x

import (
	"testing"
)

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		name, in string
		want     URL
		err      bool
	}{
		{"bucket only", "s3://models", URL{Bucket: "models"}, false},
		{"bucket slash", "s3://models/", URL{Bucket: "models"}, false},
		{"prefix", "s3://out/outputs", URL{Bucket: "out", Key: "outputs/"}, false},
		{"prefix slash", "s3://out/a/b/", URL{Bucket: "out", Key: "a/b/"}, false},
		{"not s3", "https://out/a", URL{}, true},
		{"dot dot", "s3://out/a/../b", URL{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePrefix(tt.in)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("ParsePrefix(%q) = %+v, %v; want %+v (error %v)", tt.in, got, err, tt.want, tt.err)
			}
		})
	}
}
