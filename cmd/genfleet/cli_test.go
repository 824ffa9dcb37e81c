package main

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/internal/testenv"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestModelsMakeIsDeterministicAndInspectable(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors"), filepath.Join(dir, "c.safetensors")
	for _, tc := range []struct{ out, seed string }{{a, "5"}, {b, "5"}, {c, "6"}} {
		if code, _, stderr := runCLI("models", "make", "--size", "1MiB", "--seed", tc.seed, "--out", tc.out); code != 0 {
			t.Fatalf("models make: %d %s", code, stderr)
		}
	}
	if st, _ := os.Stat(a); st.Size() != 1<<20 {
		t.Fatalf("size %d, want %d", st.Size(), 1<<20)
	}
	if fileSum(t, a) != fileSum(t, b) {
		t.Fatal("same size and seed gave different files")
	}
	if fileSum(t, a) == fileSum(t, c) {
		t.Fatal("different seeds gave the same file")
	}
	code, out, stderr := runCLI("models", "inspect", a)
	if code != 0 || !strings.Contains(out, "safetensors") || !strings.Contains(out, "genfleet-refgen-v1") {
		t.Fatalf("inspect: %d\n%s\n%s", code, out, stderr)
	}
}

func TestModelsInspectRejectsMalformed(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]byte{
		"short":          []byte("abc"),
		"huge header":    append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, []byte("{}")...),
		"not json":       append([]byte{4, 0, 0, 0, 0, 0, 0, 0}, []byte("nope")...),
		"offsets beyond": append([]byte{62, 0, 0, 0, 0, 0, 0, 0}, []byte(`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}      `)...),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runCLI("models", "inspect", path)
			if code != 1 || !strings.Contains(stderr, path) {
				t.Fatalf("exit %d, stderr %q: want 1 and a message naming the file", code, stderr)
			}
		})
	}
}

func TestModelsMakeRejectsBadSize(t *testing.T) {
	out := filepath.Join(t.TempDir(), "m.safetensors")
	for _, size := range []string{"lots", "-5", "10"} {
		if code, _, _ := runCLI("models", "make", "--size", size, "--out", out); code == 0 {
			t.Errorf("--size %s accepted", size)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("a failed make left a file behind")
	}
	if code, _, _ := runCLI("nonsense"); code != 2 {
		t.Fatal("unknown command should exit 2")
	}
}

// A command that needs S3 on a machine with no endpoint and no
// credentials says which flags to set, after the SDK's own words; AWS
// credentials from the environment or the shared credentials file still
// work where they exist.
func TestS3CredentialsHint(t *testing.T) {
	testenv.IsolateAWS(t)
	code, _, stderr := runCLI("models", "ls")
	if code != 1 {
		t.Fatalf("models ls with no S3 settings: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"no S3 endpoint and no S3 credentials", "--s3-endpoint (GENFLEET_S3_ENDPOINT)", "--s3-access-key", "--s3-secret-key", "AWS_ACCESS_KEY_ID"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if i, j := strings.LastIndex(stderr, "IMDS"), strings.LastIndex(stderr, "--s3-endpoint"); i > j {
		t.Errorf("the message ends with the SDK's words, not what to do:\n%s", stderr)
	}
	// An endpoint without keys: the hint names the key flags.
	code, _, stderr = runCLI("models", "ls", "--s3-endpoint", "http://127.0.0.1:1")
	if code != 1 || !strings.Contains(stderr, "S3 endpoint http://127.0.0.1:1: no S3 credentials") || !strings.Contains(stderr, "--s3-secret-key") {
		t.Errorf("endpoint without keys: exit %d\n%s", code, stderr)
	}
	// One key without the other.
	code, _, stderr = runCLI("models", "ls", "--s3-endpoint", "http://127.0.0.1:1", "--s3-access-key", "k")
	if code != 1 || !strings.Contains(stderr, "give both or neither") {
		t.Errorf("access key alone: exit %d\n%s", code, stderr)
	}

	// Credentials the AWS way, against a real S3 server.
	e := newPushEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", e.s.Config.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", e.s.Config.SecretKey)
	if code, out, stderr := runCLI("models", "ls", "--registry", "s3://pushmodels/", "--s3-endpoint", e.s.Endpoint); code != 0 || !strings.HasPrefix(out, "NAME") {
		t.Errorf("credentials from AWS_* variables: exit %d\n%s%s", code, out, stderr)
	}
	os.Unsetenv("AWS_ACCESS_KEY_ID")
	os.Unsetenv("AWS_SECRET_ACCESS_KEY")
	creds := "[default]\naws_access_key_id = " + e.s.Config.AccessKey + "\naws_secret_access_key = " + e.s.Config.SecretKey + "\n"
	if err := os.WriteFile(os.Getenv("AWS_SHARED_CREDENTIALS_FILE"), []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, stderr := runCLI("models", "ls", "--registry", "s3://pushmodels/", "--s3-endpoint", e.s.Endpoint); code != 0 || !strings.HasPrefix(out, "NAME") {
		t.Errorf("credentials from the shared credentials file: exit %d\n%s%s", code, out, stderr)
	}
}
