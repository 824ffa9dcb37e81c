package s3x_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
)

// With no credentials anywhere, s3x.Connect's error says which settings to
// set, and still wraps s3x.ErrNoCredentials.
func TestConnectNamesTheSettings(t *testing.T) {
	testenv.IsolateAWS(t)

	_, err := s3x.Connect(t.Context(), s3x.Config{})
	if !errors.Is(err, s3x.ErrNoCredentials) || !strings.Contains(err.Error(), "--s3-endpoint (GENFLEET_S3_ENDPOINT)") ||
		!strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("no endpoint, no keys: %v", err)
	}
	_, err = s3x.Connect(t.Context(), s3x.Config{Endpoint: "http://127.0.0.1:1"})
	if !errors.Is(err, s3x.ErrNoCredentials) || !strings.HasPrefix(err.Error(), "S3 endpoint http://127.0.0.1:1: no S3 credentials") ||
		!strings.Contains(err.Error(), "--s3-secret-key") {
		t.Fatalf("an endpoint without keys: %v", err)
	}
}
