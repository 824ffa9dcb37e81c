package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `models make --arch refgen-lora` writes a LoRA, the same bytes for the
// same seed; `models push --kind lora` registers it as a LoRA (models ls
// says so) and refuses a file that is not one, or a LoRA of two files,
// before uploading anything.
func TestModelsMakeAndPushLoRA(t *testing.T) {
	e := newPushEnv(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	for _, p := range []string{a, b} {
		if code, out, stderr := runCLI("models", "make", "--arch", "refgen-lora", "--seed", "3", "--out", p); code != 0 || !strings.Contains(out, "--kind lora") {
			t.Fatalf("make: %d %s %s", code, out, stderr)
		}
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if !bytes.Equal(da, db) {
		t.Fatal("the same seed gave different LoRA files")
	}
	if code, _, stderr := runCLI("models", "make", "--arch", "refgen-lora", "--size", "1MiB", "--out", a); code == 0 || !strings.Contains(stderr, "--size") {
		t.Errorf("--size with a LoRA: %d %s", code, stderr)
	}
	if code, _, stderr := runCLI("models", "make", "--rank", "2", "--out", a); code == 0 || !strings.Contains(stderr, "--rank") {
		t.Errorf("--rank with a model: %d %s", code, stderr)
	}

	code, out, stderr := e.run("models", "push", a, "s3://pushmodels/loras/", "--name", "style", "--kind", "lora")
	if code != 0 || !strings.Contains(out, `registered "style" (engine refgen, kind lora, 1 file(s))`) {
		t.Fatalf("push: %d\n%s\n%s", code, out, stderr)
	}
	code, out, _ = e.run("models", "ls")
	if code != 0 || !strings.Contains(out, "style") || !strings.Contains(strings.Join(strings.Fields(out), " "), "style refgen lora safetensors 1") {
		t.Fatalf("models ls:\n%s", out)
	}

	// The object already in S3, registered again as a LoRA.
	code, out, stderr = e.run("models", "register", "s3://pushmodels/loras/a.safetensors", "--name", "style2", "--kind", "lora")
	if code != 0 || !strings.Contains(out, `registered "style2" (engine refgen, kind lora)`) {
		t.Fatalf("register: %d\n%s\n%s", code, out, stderr)
	}
	if m, err := e.reg.Resolve(t.Context(), "style2"); err != nil || m.KindName() != "lora" {
		t.Fatalf("resolve style2: %+v %v", m, err)
	}
	model := filepath.Join(dir, "m.safetensors")
	if code, _, stderr := runCLI("models", "make", "--size", "64KiB", "--out", model); code != 0 {
		t.Fatal(stderr)
	}
	before := len(e.keys(t))
	for name, args := range map[string][]string{
		"a model as a LoRA": {"models", "push", model, "s3://pushmodels/x/", "--name", "notlora", "--kind", "lora"},
		"a LoRA of roles":   {"models", "push", "--name", "pair", "--kind", "lora", "--file", "vae=" + a, "s3://pushmodels/x/"},
		"an unknown kind":   {"models", "push", a, "s3://pushmodels/x/", "--name", "k", "--kind", "vae"},
	} {
		if code, _, stderr := e.run(args...); code == 0 {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(stderr, "lora") && !strings.Contains(stderr, "kind") {
			t.Errorf("%s: %s", name, stderr)
		}
	}
	if after := len(e.keys(t)); after != before {
		t.Errorf("a refused push uploaded %d objects", after-before)
	}
}
