package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/cuda"
)

func TestBackendAutoFallsBackToCPU(t *testing.T) {
	reason := cuda.Available()
	if reason == nil {
		t.Skip("a CUDA driver and device are present: auto picks cuda here")
	}
	var logs bytes.Buffer
	be, err := selectBackend("auto", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if be.Name() != "cpu" {
		t.Errorf("auto chose %q, want cpu", be.Name())
	}
	out := logs.String()
	if !strings.Contains(out, "cuda unavailable, falling back to cpu") || !strings.Contains(out, "libcuda.so.1") {
		t.Errorf("fallback log %q does not say why", out)
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("fallback logged more than one line: %q", out)
	}
}

func TestBackendSelectByName(t *testing.T) {
	log := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	if be, err := selectBackend("cpu", log); err != nil || be.Name() != "cpu" {
		t.Errorf("cpu: %v", err)
	}
	if _, err := selectBackend("tpu", log); !errors.Is(err, backends.ErrUnknown) {
		t.Errorf("tpu: %v, want ErrUnknown", err)
	}
	if cuda.Available() != nil {
		if _, err := selectBackend("cuda", log); !errors.Is(err, backends.ErrUnavailable) {
			t.Errorf("cuda without a driver: %v, want ErrUnavailable", err)
		}
	}
}

func TestBackendAutoRejectsBadCUDAConfig(t *testing.T) {
	t.Setenv(cuda.EnvUpload, "warp")
	_, err := selectBackend("auto", slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	if err == nil || !strings.Contains(err.Error(), cuda.EnvUpload) {
		t.Errorf("auto with %s=warp: %v, want the configuration error", cuda.EnvUpload, err)
	}
}

func TestBenchUploadWithoutDriver(t *testing.T) {
	if cuda.Available() == nil {
		t.Skip("a CUDA driver is present; scripts/gpu-check.sh runs this bench")
	}
	code, stdout, stderr := runCLI("bench", "upload", "--size", "1MiB", "--json")
	if code == 0 {
		t.Fatalf("bench upload without a driver exited 0: %s", stdout)
	}
	msg := strings.TrimSpace(stderr)
	if !strings.Contains(msg, "libcuda.so.1") || strings.Contains(msg, "\n") {
		t.Errorf("stderr %q, want one line naming libcuda.so.1", stderr)
	}
	if _, _, stderr := runCLI("bench", "upload", "--strategy", "warp"); !strings.Contains(stderr, "--strategy") {
		t.Errorf("bad --strategy: %q", stderr)
	}
}
