package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
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

// flipBytes inverts 16 bytes of a file at off, making it writable for the
// moment (a cached blob is 0444), as a careless operator or failing media
// would.
func flipBytes(t *testing.T, path string, off int64) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 16)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xff
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
}

// A worker with default settings: a job runs; 16 bytes of the cached blob
// are flipped; the same job runs again and must give the same PNG under the
// same model digest, from a re-fetched blob, never an image of the damaged
// bytes. The damaged copy is quarantined, listed by cache ls and deleted by
// cache gc.
func TestCorruptCachedBlobRefetchedByWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	const modelSize = 4 << 20
	fl := newFleet(t, modelSize, "cpu")
	fl.startWorker() // every cache setting at its default
	a := fl.wait(fl.submit(jobBody(11)), 60*time.Second, nil)
	if a.Status != job.StatusSucceeded || a.Result.ModelSource != "fetched" {
		t.Fatalf("first job: %s %q, result %+v", a.Status, a.Error, a.Result)
	}
	blob := filepath.Join(fl.cacheDir, "blobs", strings.Replace(a.Result.ModelDigest, ":", "-", 1))
	flipBytes(t, blob, modelSize/2)

	b := fl.wait(fl.submit(jobBody(11)), 60*time.Second, nil)
	if b.Status != job.StatusSucceeded {
		t.Fatalf("job after the damage: %s %q", b.Status, b.Error)
	}
	if !bytes.Equal(fl.image(a.ID), fl.image(b.ID)) {
		t.Fatal("the job on the damaged blob gave another PNG")
	}
	if b.Result.ModelDigest != a.Result.ModelDigest || b.Result.SHA256 != a.Result.SHA256 {
		t.Fatalf("model digest %s, png %s; want %s, %s", b.Result.ModelDigest, b.Result.SHA256, a.Result.ModelDigest, a.Result.SHA256)
	}
	if b.Result.CacheHit || b.Result.ModelSource != "fetched" || b.Result.ModelFetchedBytes != modelSize {
		t.Fatalf("record %+v; want the blob fetched again (not a hit)", b.Result)
	}
	if gets, _ := fl.proxy.counts("/" + modelsBucket + "/blobs/demo.safetensors"); gets != 2 {
		t.Fatalf("model GETs = %d, want 2 (the first fetch and the re-fetch)", gets)
	}

	code, out, stderr := runCLI("cache", "ls", "--cache-dir", fl.cacheDir, "--json")
	var ls struct {
		Used       int64                        `json:"used_bytes"`
		Quarantine []modelcache.QuarantinedFile `json:"quarantine"`
		QBytes     int64                        `json:"quarantine_bytes"`
	}
	if err := json.Unmarshal([]byte(out), &ls); code != 0 || err != nil || len(ls.Quarantine) != 1 ||
		ls.QBytes != modelSize || ls.Used != 2*modelSize || ls.Quarantine[0].Digest != a.Result.ModelDigest {
		t.Fatalf("cache ls --json: %d %v\n%s\n%s", code, err, out, stderr)
	}
	if code, out, stderr := runCLI("cache", "gc", "--cache-dir", fl.cacheDir); code != 0 || !strings.Contains(out, "deleted quarantined\t"+a.Result.ModelDigest) {
		t.Fatalf("cache gc: %d\n%s\n%s", code, out, stderr)
	}
	if q, _ := filepath.Glob(filepath.Join(fl.cacheDir, "quarantine", "*")); len(q) != 0 {
		t.Fatalf("quarantine after gc: %v", q)
	}
}

// treeOf lists every path under dir with its mode, size and mtime.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = fmt.Sprint(info.Mode(), info.Size(), info.ModTime())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cache ls and cache verify never write: a missing cache directory is a
// clear error and stays missing (also at the default, from the
// environment); an existing cache is left exactly as it was. models
// inspect writes nothing either.
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	parent := t.TempDir()
	missing := filepath.Join(parent, "nonexistent", "x")
	for _, tc := range []struct {
		args []string
		verb string
	}{
		{[]string{"cache", "ls", "--cache-dir", missing}, "list"},
		{[]string{"cache", "ls", "--json", "--cache-dir", missing}, "list"},
		{[]string{"cache", "verify", "--cache-dir", missing}, "verify"},
		{[]string{"cache", "gc", "--cache-dir", missing}, "collect"},
		{[]string{"cache", "rm", "--cache-dir", missing, "sha256:" + strings.Repeat("0", 64)}, "remove"},
	} {
		code, _, stderr := runCLI(tc.args...)
		want := "model cache " + missing + " does not exist (--cache-dir); nothing to " + tc.verb
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", tc.args, code, stderr, want)
		}
	}
	t.Setenv("GENFLEET_CACHE_DIR", missing) // the default of --cache-dir
	if code, _, stderr := runCLI("cache", "ls"); code != 1 || !strings.Contains(stderr, missing+" does not exist") {
		t.Errorf("cache ls at the default: %d %q", code, stderr)
	}
	if code, _, stderr := runCLI("cache", "ls", "--cache-dir", parent); code != 1 || !strings.Contains(stderr, "is not a model cache") {
		t.Errorf("cache ls of a directory that is no cache: %d %q", code, stderr)
	}
	if got := treeOf(t, parent); len(got) != 1 {
		t.Fatalf("read-only commands created %v", got)
	}

	dir, ds := seedCache(t, 2)
	model := filepath.Join(t.TempDir(), "m.safetensors")
	if err := writeModel(model, 256<<10, 3); err != nil {
		t.Fatal(err)
	}
	before, beforeModel := treeOf(t, dir), treeOf(t, filepath.Dir(model))
	for _, args := range [][]string{
		{"cache", "ls", "--cache-dir", dir},
		{"cache", "ls", "--cache-dir", dir, "--json"},
		{"cache", "verify", "--cache-dir", dir},
		{"cache", "verify", "--cache-dir", dir, ds[1]},
		{"models", "inspect", model},
	} {
		if code, out, stderr := runCLI(args...); code != 0 {
			t.Fatalf("%v: %d\n%s\n%s", args, code, out, stderr)
		}
	}
	after, afterModel := treeOf(t, dir), treeOf(t, filepath.Dir(model))
	for p, s := range before {
		if after[p] != s {
			t.Errorf("%s changed: %q → %q", p, s, after[p])
		}
	}
	if len(after) != len(before) || len(afterModel) != len(beforeModel) {
		t.Errorf("paths: cache %d → %d, model dir %d → %d", len(before), len(after), len(beforeModel), len(afterModel))
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists after models inspect: %v", missing, err)
	}
}

// cache ls lists quarantined files with their bytes and counts them as
// used; cache gc deletes them even without a budget.
func TestCacheQuarantineAccounting(t *testing.T) {
	dir, ds := seedCache(t, 2)
	flipBytes(t, filepath.Join(dir, "blobs", strings.Replace(ds[0], ":", "-", 1)), 4096)
	if code, out, _ := runCLI("cache", "verify", "--cache-dir", dir); code != 1 || !strings.Contains(out, "CORRUPT\t"+ds[0]) {
		t.Fatalf("verify: %d\n%s", code, out)
	}
	code, out, stderr := runCLI("cache", "ls", "--cache-dir", dir)
	if code != 0 || !strings.Contains(out, "Quarantined") || !strings.Contains(out, ds[0]) ||
		!strings.Contains(out, "1 blobs, 256.0 KiB; 1 quarantined, 256.0 KiB; 512.0 KiB used") {
		t.Fatalf("cache ls: %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runCLI("cache", "gc", "--cache-dir", dir, "--json")
	var res modelcache.GCResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || len(res.QuarantineRemoved) != 1 ||
		res.QuarantineFreed != 256<<10 || res.Used != 256<<10 {
		t.Fatalf("cache gc --json: %d %v\n%s\n%s", code, err, out, stderr)
	}
	if code, out, _ := runCLI("cache", "ls", "--cache-dir", dir); code != 0 || !strings.Contains(out, "1 blobs, 256.0 KiB; 0 quarantined, 0 B; 256.0 KiB used") {
		t.Fatalf("cache ls after gc:\n%s", out)
	}
}

// bench verify runs end to end on a small model and reports a first-use
// cost that is a re-hash (well above the cost of a verified acquire).
func TestBenchVerifySmall(t *testing.T) {
	code, out, stderr := runCLI("bench", "verify", "--size", "8MiB", "--runs", "1", "--dir", t.TempDir(), "--json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var res struct {
		Size        int64   `json:"size_bytes"`
		WarmRead    float64 `json:"warm_read_ms_per_gib"`
		WarmFirst   float64 `json:"warm_first_use_ms_per_gib"`
		WarmChecked float64 `json:"warm_verified_ms_per_gib"`
		WarmRatio   float64 `json:"warm_cost_vs_read"`
		ColdRatio   float64 `json:"cold_cost_vs_read"`
		Report      float64 `json:"report_verify_ms_per_gib"`
	}
	if code != 0 || json.Unmarshal([]byte(lines[len(lines)-1]), &res) != nil {
		t.Fatalf("bench verify: %d\n%s\n%s", code, out, stderr)
	}
	if res.Size != 8<<20 || res.WarmRead <= 0 || res.WarmFirst <= res.WarmChecked || res.Report <= 0 || res.WarmRatio <= 0 || res.ColdRatio <= 0 {
		t.Fatalf("bench verify result %+v", res)
	}
}

// `genfleet cache pull` of a model small enough to arrive before the first
// periodic report: its speed is not bytes over the microseconds since the
// progress line appeared. No path on one machine moves 100 GB/s.
func TestCachePullSpeedIsPhysical(t *testing.T) {
	e := newPushEnv(t)
	model := filepath.Join(t.TempDir(), "tiny.safetensors")
	if err := writeModel(model, 1<<20, 1); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := e.run("models", "push", model, "s3://pushmodels/blobs/"); code != 0 {
		t.Fatalf("models push: %d %s", code, stderr)
	}
	code, out, stderr := e.run("cache", "pull", "tiny", "--cache-dir", filepath.Join(t.TempDir(), "cache"))
	if code != 0 {
		t.Fatalf("cache pull: %d\n%s\n%s", code, out, stderr)
	}
	type progressLine struct {
		Done   int64    `json:"done"`
		Total  int64    `json:"total"`
		MBPerS *float64 `json:"mb_per_s"`
	}
	var lines []progressLine
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.Contains(l, `"event":"progress"`) {
			continue
		}
		var pl progressLine
		if err := json.Unmarshal([]byte(l), &pl); err != nil {
			t.Fatalf("progress line %q: %v", l, err)
		}
		lines = append(lines, pl)
	}
	if len(lines) == 0 {
		t.Fatalf("no progress lines:\n%s", stderr)
	}
	for _, l := range lines {
		if l.MBPerS != nil && *l.MBPerS > 100_000 {
			t.Errorf("progress says %.0f MB/s:\n%s", *l.MBPerS, stderr)
		}
	}
	if last := lines[len(lines)-1]; last.Done != 1<<20 || last.Total != 1<<20 {
		t.Errorf("last progress line %+v, want 1 MiB of 1 MiB", last)
	}
}
