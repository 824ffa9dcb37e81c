package s3x

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
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

// With no credentials anywhere, Connect's error says which settings to
// set, and still wraps ErrNoCredentials.
func TestConnectNamesTheSettings(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(home, "no-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, "no-credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	_, err := Connect(t.Context(), Config{})
	if !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "--s3-endpoint (GENFLEET_S3_ENDPOINT)") ||
		!strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("no endpoint, no keys: %v", err)
	}
	_, err = Connect(t.Context(), Config{Endpoint: "http://127.0.0.1:1"})
	if !errors.Is(err, ErrNoCredentials) || !strings.HasPrefix(err.Error(), "S3 endpoint http://127.0.0.1:1: no S3 credentials") ||
		!strings.Contains(err.Error(), "--s3-secret-key") {
		t.Fatalf("an endpoint without keys: %v", err)
	}
}
