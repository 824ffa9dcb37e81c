package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/modelcache"
)

// seedCache imports n small reference models into a cache at a temp dir.
func seedCache(t *testing.T, n int) (dir string, digests []string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "cache")
	c, err := modelcache.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		p := filepath.Join(t.TempDir(), "m.safetensors")
		if err := writeModel(p, 256<<10, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
		d, err := c.Import(t.Context(), p)
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
	}
	return dir, digests
}

func TestCacheCommands(t *testing.T) {
	dir, ds := seedCache(t, 2)
	code, out, stderr := runCLI("cache", "ls", "--cache-dir", dir, "--json")
	if code != 0 {
		t.Fatalf("cache ls: %d %s", code, stderr)
	}
	var ls struct {
		Used  int64                 `json:"used_bytes"`
		Blobs []modelcache.BlobInfo `json:"blobs"`
	}
	if err := json.Unmarshal([]byte(out), &ls); err != nil || len(ls.Blobs) != 2 || ls.Used != 2*256<<10 {
		t.Fatalf("cache ls --json: %v\n%s", err, out)
	}
	if code, out, _ := runCLI("cache", "ls", "--cache-dir", dir); code != 0 || !strings.Contains(out, ds[0]) || !strings.Contains(out, "RESIDENT") {
		t.Fatalf("cache ls:\n%s", out)
	}

	// rm refuses a blob some process has mapped, and says why.
	c, err := modelcache.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Acquire(t.Context(), &modelcache.Manifest{Schema: modelcache.ManifestSchema, Files: []modelcache.File{
		{Name: "m", URL: "s3://models/m", Size: 256 << 10, Digest: ds[0]}}})
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI("cache", "rm", "--cache-dir", dir, ds[0])
	if code != 1 || !strings.Contains(stderr, "in use") {
		t.Fatalf("cache rm of a mapped blob: %d %q", code, stderr)
	}
	// gc under a budget smaller than both evicts only the idle one.
	code, out, stderr = runCLI("cache", "gc", "--cache-dir", dir, "--cache-budget", "100KiB")
	if code != 0 || !strings.Contains(out, "evicted\t"+ds[1]) || !strings.Contains(out, "1 blobs in use were kept") {
		t.Fatalf("cache gc: %d\n%s\n%s", code, out, stderr)
	}
	m.Close()
	if code, out, stderr := runCLI("cache", "rm", "--cache-dir", dir, ds[0]); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("cache rm: %d %s %s", code, out, stderr)
	}
	if code, _, stderr := runCLI("cache", "rm", "--cache-dir", dir, ds[0]); code != 1 || !strings.Contains(stderr, "not in the cache") {
		t.Fatalf("cache rm of a missing blob: %d %q", code, stderr)
	}
}

func TestCacheVerifyFindsCorruptBlob(t *testing.T) {
	dir, ds := seedCache(t, 2)
	if code, out, stderr := runCLI("cache", "verify", "--cache-dir", dir); code != 0 || strings.Count(out, "ok\t") != 2 {
		t.Fatalf("verify of a good cache: %d\n%s\n%s", code, out, stderr)
	}
	path := filepath.Join(dir, "blobs", strings.Replace(ds[1], ":", "-", 1))
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0x00, 0xff}, 1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	code, out, stderr := runCLI("cache", "verify", "--cache-dir", dir, ds[0], ds[1])
	if code != 1 || !strings.Contains(out, "CORRUPT\t"+ds[1]) || !strings.Contains(stderr, "1 of 2 blobs corrupt") {
		t.Fatalf("verify with a corrupt blob: %d\n%s\n%s", code, out, stderr)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("corrupt blob left in blobs/")
	}
}

func TestParseBudget(t *testing.T) {
	for _, tt := range []struct {
		in    string
		bytes int64
		pct   float64
		ok    bool
	}{
		{"", 0, 0, true}, {"50GiB", 50 << 30, 0, true}, {"80%", 0, 80, true}, {"12.5 %", 0, 12.5, true},
		{"0%", 0, 0, false}, {"150%", 0, 0, false}, {"lots", 0, 0, false},
	} {
		b, p, err := parseBudget(tt.in)
		if (err == nil) != tt.ok || b != tt.bytes || p != tt.pct {
			t.Errorf("parseBudget(%q) = %d, %g, %v", tt.in, b, p, err)
		}
	}
}

func TestCachePull(t *testing.T) {
	s := testenv.S3Server(t, "pullmodels")
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(s.Client), Root: s3x.URL{Bucket: "pullmodels"}}
	p := filepath.Join(t.TempDir(), "m.safetensors")
	if err := writeModel(p, 1<<20, 7); err != nil {
		t.Fatal(err)
	}
	man, err := reg.Push(t.Context(), p, s3x.URL{Bucket: "pullmodels", Key: "w/m.safetensors"}, "pulled", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "cache")
	args := []string{"cache", "pull", "pulled", "--cache-dir", dir, "--registry", "s3://pullmodels/",
		"--s3-endpoint", s.Endpoint, "--s3-access-key", s.Config.AccessKey, "--s3-secret-key", s.Config.SecretKey}
	code, out, stderr := runCLI(args...)
	if code != 0 || !strings.Contains(out, "fetched \"pulled\"") || !strings.Contains(out, man.Files[0].Digest) {
		t.Fatalf("cache pull: %d\n%s\n%s", code, out, stderr)
	}
	if code, out, stderr := runCLI(args...); code != 0 || !strings.Contains(out, "already cached") {
		t.Fatalf("second pull: %d\n%s\n%s", code, out, stderr)
	}
}
