package sdcpp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/sdcpp/spec"
	"github.com/genfleet/genfleet/modelformat"
)

// engineDir holds the stand-in engine, built once for the package's tests
// and linked as sd-cli and sd-server.
var engineDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fakesd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin := filepath.Join(dir, "fakesd")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/fakesd").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the stand-in engine: %v\n%s", err, out)
		os.Exit(1)
	}
	for _, n := range []string{"sd-cli", "sd-server"} {
		if err := os.Symlink(bin, filepath.Join(dir, n)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	help, _ := filepath.Abs("testdata")
	os.Setenv("FAKESD_HELP_DIR", help)
	engineDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runs is what the stand-in engine logged: one entry per program start or
// server request.
type run struct {
	Prog string   `json:"prog"`
	Args []string `json:"args"`
}

func engineLog(t *testing.T) func() []run {
	t.Helper()
	path := filepath.Join(t.TempDir(), "engine.log")
	t.Setenv("FAKESD_LOG", path)
	return func() []run {
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var out []run
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var r run
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		return out
	}
}

func newBackend(t *testing.T, cfg Config) *Backend {
	t.Helper()
	if cfg.CLI == "" {
		cfg.CLI = filepath.Join(engineDir, "sd-cli")
	}
	if cfg.Server == "" && cfg.Mode != ModeProcess {
		cfg.Server = filepath.Join(engineDir, "sd-server")
	}
	if cfg.TmpDir == "" {
		cfg.TmpDir = t.TempDir()
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// model writes a small safetensors file per role, with tensor names the
// stand-in engine takes for that role's component, and returns the model
// as the worker would hand it over, with a Hold that counts leases.
func model(t *testing.T, name string, roles ...string) (backends.Model, *atomic.Int64) {
	t.Helper()
	dir := t.TempDir()
	held := &atomic.Int64{}
	m := backends.Model{Name: name}
	for i, r := range roles {
		p := filepath.Join(dir, "sha256-"+r)
		names := []string{"weight"} // the engine prefixes a component's names
		if r == "model" {
			names = []string{"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
				"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"}
		}
		writeSafetensors(t, p, names...)
		f := backends.File{Role: r, Name: r + ".gguf", Digest: fmt.Sprintf("sha256:%s-%d", name, i), Path: p}
		m.Files = append(m.Files, f)
	}
	m.Hold = func() (func(), error) {
		held.Add(1)
		var once sync.Once
		return func() { once.Do(func() { held.Add(-1) }) }, nil
	}
	return m, held
}

// writeSafetensors writes a safetensors file with one small F32 tensor
// per name.
func writeSafetensors(t *testing.T, path string, names ...string) {
	t.Helper()
	var specs []modelformat.TensorSpec
	for _, n := range names {
		specs = append(specs, modelformat.TensorSpec{Name: n, DType: "F32", Shape: []int64{1},
			Write: func(w io.Writer) error { _, err := w.Write(make([]byte, 4)); return err }})
	}
	var buf bytes.Buffer
	if err := modelformat.WriteSafetensors(&buf, nil, specs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o444); err != nil {
		t.Fatal(err)
	}
}

func params() backends.Params {
	return backends.Params{Prompt: "a lovely cat", NegativePrompt: "blurry", Width: 64, Height: 128, Steps: 6, Seed: 42, Guidance: 7.5}
}

type progressLog struct {
	mu    sync.Mutex
	steps []string
}

func (p *progressLog) fn(step, total int) {
	p.mu.Lock()
	p.steps = append(p.steps, fmt.Sprintf("%d/%d", step, total))
	p.mu.Unlock()
}

func (p *progressLog) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.steps, " ")
}

// argValue returns the value after flag in args.
func argValue(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

func TestProcessSingleCheckpoint(t *testing.T) {
	log := engineLog(t)
	b := newBackend(t, Config{Mode: ModeProcess, Args: []string{"--threads", "2"}})
	m, _ := model(t, "sd15", "model")
	p := params()
	p.SamplingMethod, p.Scheduler = "dpm++2m", "karras"
	var prog progressLog
	img, err := b.Generate(t.Context(), m, p, prog.fn)
	if err != nil {
		t.Fatal(err)
	}
	if got := img.Bounds(); got.Dx() != 64 || got.Dy() != 128 {
		t.Errorf("image %v, want 64×128", got)
	}
	// The tensor-loading bar (37/37) is not job progress.
	if got, want := prog.String(), "1/6 2/6 3/6 4/6 5/6 6/6"; got != want {
		t.Errorf("progress %q, want %q", got, want)
	}
	runs := log()
	if len(runs) != 1 || runs[0].Prog != "sd-cli" {
		t.Fatalf("engine runs: %+v", runs)
	}
	args := runs[0].Args
	for flag, want := range map[string]string{
		"--model": m.Files[0].Path, "--prompt": "a lovely cat", "--negative-prompt": "blurry",
		"--width": "64", "--height": "128", "--steps": "6", "--seed": "42", "--cfg-scale": "7.5",
		"--sampling-method": "dpm++2m", "--scheduler": "karras", "--threads": "2",
	} {
		if got, ok := argValue(args, flag); !ok || got != want {
			t.Errorf("%s = %q (given: %v), want %q", flag, got, ok, want)
		}
	}
	if !slices.Contains(args, "--mmap") {
		t.Errorf("no --mmap in %v", args)
	}
	if out, _ := argValue(args, "--output"); !strings.HasPrefix(out, b.cfg.TmpDir) {
		t.Errorf("--output %q is not under the backend's tmp dir", out)
	}
	if entries, _ := os.ReadDir(b.cfg.TmpDir); len(entries) != 0 {
		t.Errorf("the run left %d entries in the tmp dir", len(entries))
	}
}

func TestProcessSplitModel(t *testing.T) {
	log := engineLog(t)
	b := newBackend(t, Config{Mode: ModeProcess})
	m, _ := model(t, "flux1-dev", "diffusion_model", "vae", "clip_l", "t5xxl")
	p := params()
	p.NegativePrompt = ""
	if _, err := b.Generate(t.Context(), m, p, nil); err != nil {
		t.Fatal(err)
	}
	args := log()[0].Args
	for _, f := range m.Files {
		flag, _ := spec.RoleFlag(f.Role)
		if got, _ := argValue(args, flag); got != f.Path {
			t.Errorf("%s = %q, want %q", flag, got, f.Path)
		}
	}
	for _, absent := range []string{"--model", "--negative-prompt", "--sampling-method", "--scheduler"} {
		if slices.Contains(args, absent) {
			t.Errorf("%s passed although not asked for: %v", absent, args)
		}
	}
}

func TestRejectedBeforeTheEngineRuns(t *testing.T) {
	log := engineLog(t)
	b := newBackend(t, Config{Mode: ModeProcess})
	good, _ := model(t, "m", "model")
	unknownRole, _ := model(t, "m", "diffusion_model", "refiner")
	noDiffusion, _ := model(t, "m", "vae", "clip_l")
	twice, _ := model(t, "m", "diffusion_model", "vae")
	twice.Files[1].Role = "diffusion_model"
	tests := []struct {
		name   string
		m      backends.Model
		mutate func(*backends.Params)
		want   error
		says   string
	}{
		{"unknown role", unknownRole, nil, backends.ErrBadModel, `role "refiner"`},
		{"no diffusion model", noDiffusion, nil, backends.ErrBadModel, "diffusion_model"},
		{"role twice", twice, nil, backends.ErrBadModel, "two files"},
		{"no files", backends.Model{Name: "empty"}, nil, backends.ErrBadModel, "no files"},
		{"unknown sampler", good, func(p *backends.Params) { p.SamplingMethod = "euler_b" }, backends.ErrBadParams, "euler_a"},
		{"unknown scheduler", good, func(p *backends.Params) { p.Scheduler = "linear" }, backends.ErrBadParams, "karras"},
		{"zero steps", good, func(p *backends.Params) { p.Steps = 0 }, backends.ErrBadParams, "steps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := params()
			if tt.mutate != nil {
				tt.mutate(&p)
			}
			_, err := b.Generate(t.Context(), tt.m, p, nil)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
				t.Errorf("err = %v, want %v saying %q", err, tt.want, tt.says)
			}
		})
	}
	if runs := log(); len(runs) != 0 {
		t.Errorf("the engine ran %d times for rejected jobs", len(runs))
	}
}

func TestEngineFailureCarriesItsLastErrorLine(t *testing.T) {
	b := newBackend(t, Config{Mode: ModeProcess})
	m, _ := model(t, "m", "model")
	p := params()
	p.Prompt = "please fail"
	_, err := b.Generate(t.Context(), m, p, nil)
	if err == nil || !strings.Contains(err.Error(), "exited with status 1") ||
		!strings.Contains(err.Error(), "[ERROR] main.cpp:952  - generate failed") {
		t.Fatalf("err = %v", err)
	}
	if errors.Is(err, backends.ErrBadModel) || errors.Is(err, backends.ErrBadParams) {
		t.Errorf("a failed generation is a fault worth a retry: %v", err)
	}
	// A model file the engine cannot find: its own message names the path.
	missing, _ := model(t, "m", "model")
	os.Remove(missing.Files[0].Path)
	_, err = b.Generate(t.Context(), missing, params(), nil)
	if err == nil || !strings.Contains(err.Error(), "file "+missing.Files[0].Path+" not found") || errors.Is(err, backends.ErrBadModel) {
		t.Fatalf("err = %v", err)
	}
}

func TestMissingOrCorruptOutput(t *testing.T) {
	b := newBackend(t, Config{Mode: ModeProcess})
	m, _ := model(t, "m", "model")
	for prompt, want := range map[string]string{
		"noimage": "exited 0 but wrote no image",
		"corrupt": "is not an image",
	} {
		p := params()
		p.Prompt = prompt
		_, err := b.Generate(t.Context(), m, p, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("prompt %q: err = %v, want %q", prompt, err, want)
		}
	}
	if n := testutil.ToFloat64(b.met.runs.WithLabelValues("process", "bad_output")); n != 2 {
		t.Errorf("genfleet_sdcpp_generations_total{process,bad_output} = %v", n)
	}
}

// gone reports whether pid no longer runs (absent, or a zombie).
func gone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

// eventually polls cond until it holds, failing the test with the message
// of fail after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, fail func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(fail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitGone(t *testing.T, what string, pid int) {
	t.Helper()
	eventually(t, 5*time.Second, func() bool { return gone(pid) },
		func() string { return fmt.Sprintf("%s (pid %d) still runs", what, pid) })
}

// readPid waits for the pid the engine's child wrote to path.
func readPid(t *testing.T, path string) int {
	t.Helper()
	var b []byte
	eventually(t, 10*time.Second, func() bool {
		var err error
		b, err = os.ReadFile(path)
		return err == nil && len(b) > 0
	}, func() string { return "the engine never started its child" })
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestCancelKillsTheProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	t.Setenv("FAKESD_CHILDPID", pidFile)
	b := newBackend(t, Config{Mode: ModeProcess})
	m, _ := model(t, "m", "model")
	child := cancelHungGenerate(t, b, m, pidFile)
	waitGone(t, "the engine's child", child)
}

// cancelHungGenerate starts a job that hangs, cancels it once the engine's
// child has written its pid to pidFile, checks that Generate returns
// context.Canceled, and returns the child's pid.
func cancelHungGenerate(t *testing.T, b *Backend, m backends.Model, pidFile string) int {
	t.Helper()
	p := params()
	p.Prompt = "hang"
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := b.Generate(ctx, m, p, nil)
		errc <- err
	}()
	child := readPid(t, pidFile)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Generate did not return after cancel")
	}
	return child
}

func TestTimeoutKillsTheProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	t.Setenv("FAKESD_CHILDPID", pidFile)
	b := newBackend(t, Config{Mode: ModeProcess, Timeout: 2 * time.Second})
	m, _ := model(t, "m", "model")
	p := params()
	p.Prompt = "hang"
	start := time.Now()
	_, err := b.Generate(t.Context(), m, p, nil)
	if err == nil || !strings.Contains(err.Error(), "timed out after 2s") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Generate returned %v after the timeout", d)
	}
	waitGone(t, "the engine's child", readPid(t, pidFile))
}

func TestServerKeepsTheModelLoaded(t *testing.T) {
	log := engineLog(t)
	b := newBackend(t, Config{Mode: ModeServer, KeepAlive: 300 * time.Millisecond})
	m, held := model(t, "sdxl", "model", "vae")
	var prog progressLog
	for i := range 3 {
		p := params()
		p.Seed = int64(i)
		p.SamplingMethod = "euler"
		img, err := b.Generate(t.Context(), m, p, prog.fn)
		if err != nil {
			t.Fatal(err)
		}
		if img.Bounds().Dx() != 64 {
			t.Errorf("image %v", img.Bounds())
		}
		if held.Load() != 1 {
			t.Errorf("leases held while the server runs: %d, want 1", held.Load())
		}
	}
	runs := log()
	var starts, requests int
	for _, r := range runs {
		switch {
		case r.Prog == "sd-server" && len(r.Args) > 0 && r.Args[0] == "txt2img":
			requests++
			if r.Args[3] != "euler" {
				t.Errorf("sampler %q reached the server, want euler", r.Args[3])
			}
		case r.Prog == "sd-server":
			starts++
			if !slices.Contains(r.Args, "--mmap") || !slices.Contains(r.Args, m.Files[1].Path) {
				t.Errorf("server args %v", r.Args)
			}
		default:
			t.Errorf("unexpected run %+v", r)
		}
	}
	if starts != 1 || requests != 3 {
		t.Errorf("%d server starts and %d requests, want 1 and 3", starts, requests)
	}
	if n := testutil.ToFloat64(b.met.serverStarts.WithLabelValues("ready")); n != 1 {
		t.Errorf("genfleet_sdcpp_server_starts_total{ready} = %v", n)
	}
	if n := testutil.ToFloat64(b.met.runs.WithLabelValues("server", "ok")); n != 3 {
		t.Errorf("genfleet_sdcpp_generations_total{server,ok} = %v", n)
	}
	if n := testutil.ToFloat64(b.met.servers); n != 1 {
		t.Errorf("genfleet_sdcpp_servers = %v while the server runs", n)
	}
	if got := prog.String(); !strings.HasSuffix(got, "6/6") || strings.Count(got, "1/6") != 3 {
		t.Errorf("progress %q", got)
	}
	// Idle past the keep-alive: stopped, leases released.
	eventually(t, 10*time.Second, func() bool { return len(b.servers.running()) == 0 && held.Load() == 0 },
		func() string {
			return fmt.Sprintf("server still up after its keep-alive: %v, leases %d", b.servers.running(), held.Load())
		})
}

// A model file replaced at its path (the model cache quarantined a blob
// that failed re-verification and fetched it again: same digest, a new
// file) is not served by the server that loaded the old file: the next job
// starts a server on the new one, and the old server is stopped to make
// room.
func TestServerNotReusedForAReplacedFile(t *testing.T) {
	log := engineLog(t)
	b := newBackend(t, Config{Mode: ModeServer, KeepAlive: time.Minute})
	m, _ := model(t, "sd1", "model")
	if _, err := b.Generate(t.Context(), m, params(), nil); err != nil {
		t.Fatal(err)
	}
	// The cache's re-fetch: a new file renamed over the path.
	path := m.Files[0].Path
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".new", data, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Generate(t.Context(), m, params(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Generate(t.Context(), m, params(), nil); err != nil {
		t.Fatal(err)
	}
	starts := 0
	for _, r := range log() {
		if r.Prog == "sd-server" && (len(r.Args) == 0 || r.Args[0] != "txt2img") {
			starts++
		}
	}
	if starts != 2 {
		t.Errorf("%d server starts, want 2: one on the old file, one on the new", starts)
	}
	if n := len(b.servers.running()); n != 1 {
		t.Errorf("%d servers running, want 1 (the old one stopped for the new)", n)
	}
}

func TestServerFailureCancelAndRestart(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	t.Setenv("FAKESD_CHILDPID", pidFile)
	b := newBackend(t, Config{Mode: ModeServer})
	m, held := model(t, "m", "model")

	p := params()
	p.Prompt = "fail now"
	_, err := b.Generate(t.Context(), m, p, nil)
	if err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "generate failed") {
		t.Fatalf("err = %v", err)
	}

	child := cancelHungGenerate(t, b, m, pidFile)
	waitGone(t, "the server's child", child)
	eventually(t, 5*time.Second, func() bool { return held.Load() == 0 },
		func() string { return fmt.Sprintf("killed server's leases still held: %d", held.Load()) })
	// The next job starts a fresh server.
	if _, err := b.Generate(t.Context(), m, params(), nil); err != nil {
		t.Fatal(err)
	}
}

func TestServerFallsBackToAProcess(t *testing.T) {
	log := engineLog(t)
	b := newBackend(t, Config{Mode: ModeAuto, MaxServers: 1})
	a, _ := model(t, "a", "model")
	c, _ := model(t, "c", "model")
	// Model a's server is busy with a slow job; a job for c finds no free
	// server slot and runs as a process.
	slow := params()
	slow.Prompt = "slow"
	slow.Steps = 40
	done := make(chan error, 1)
	go func() {
		_, err := b.Generate(t.Context(), a, slow, nil)
		done <- err
	}()
	eventually(t, 10*time.Second, func() bool { return len(b.servers.running()) > 0 },
		func() string { return "no server started" })
	if _, err := b.Generate(t.Context(), c, params(), nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var cli int
	for _, r := range log() {
		if r.Prog == "sd-cli" {
			cli++
		}
	}
	if cli != 1 {
		t.Errorf("%d one-shot runs, want 1 (the fallback)", cli)
	}
	if n := testutil.ToFloat64(b.met.fallbacks); n != 1 {
		t.Errorf("genfleet_sdcpp_server_fallbacks_total = %v", n)
	}
}

func TestNewSaysWhyTheEngineIsUnavailable(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := New(Config{})
	if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "sd-cli") {
		t.Errorf("err = %v", err)
	}
	// A program that does not know --mmap is refused by name.
	old := filepath.Join(t.TempDir(), "sd")
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho 'usage: sd [options]'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{CLI: old, Mode: ModeProcess})
	if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "--mmap") {
		t.Errorf("err = %v", err)
	}
	// Auto mode without a server runs processes.
	b, err := New(Config{CLI: filepath.Join(engineDir, "sd-cli")})
	if err != nil {
		t.Fatal(err)
	}
	if cli, srv := b.Programs(); cli == "" || srv != "" {
		t.Errorf("programs %q %q", cli, srv)
	}
	if _, err := New(Config{CLI: filepath.Join(engineDir, "sd-cli"), Args: []string{"--output", "x"}}); err == nil {
		t.Error("an extra --output was accepted")
	}
}

// Every flag genfleet passes is one the engine's help lists (captured
// from the real programs, testdata/*-help.txt, from which spec's tables
// are generated); the stand-in engine refuses any other.
func TestFlagsAreInTheHelp(t *testing.T) {
	all, _ := model(t, "all", spec.Roles()...)
	margs, err := modelArgs(all)
	if err != nil {
		t.Fatal(err)
	}
	p := params()
	p.SamplingMethod, p.Scheduler = "euler", "karras"
	check := func(prog spec.Program, args []string) {
		for _, a := range args {
			if strings.HasPrefix(a, "-") && !spec.HasFlag(prog, a) {
				t.Errorf("%s gets %s, which its help does not list", prog, a)
			}
		}
	}
	// Values are never flags here (no prompt starts with "-" in params()).
	check(spec.CLI, cliArgs(margs, nil, p, nil, runFiles{}, "out.png", false))
	check(spec.Server, serverArgs(margs, nil, 1234, "loras", false))
	// Every feature and every option at once.
	p.N, p.Strength = 3, 0.5
	p.Options = map[string]any{}
	for _, o := range spec.Options {
		switch o.Kind {
		case "bool":
			p.Options[o.Name] = true
		default:
			p.Options[o.Name] = o.Max
		}
	}
	ls := []backends.LoRA{{Name: "style", Weight: 0.5, File: backends.File{Digest: "sha256:ab", Path: "/x"}}}
	args := cliArgs(margs, nil, p, ls, runFiles{initImage: "i.png", mask: "m.png", loraDir: "loras", loras: []string{"ab.safetensors"}}, "out.png", false)
	check(spec.CLI, args)
	for _, f := range []string{spec.FlagBatchCount, spec.FlagInitImg, spec.FlagMask, spec.FlagStrength, spec.FlagLoraModelDir, "--clip-skip", "--vae-tiling"} {
		if !slices.Contains(args, f) {
			t.Errorf("%s missing from %v", f, args)
		}
	}
	if prompt, _ := argValue(args, spec.FlagPrompt); prompt != p.Prompt+"<lora:ab.safetensors:0.5>" {
		t.Errorf("prompt %q lacks the LoRA's tag", prompt)
	}
}

func TestProgressParsing(t *testing.T) {
	var prog progressLog
	o := &engineOutput{}
	o.setJob(4, prog.fn)
	w, e := o.stream(0), o.stream(1)
	// Split writes, loading bars with other totals, ANSI escapes, a bar
	// redrawn for the same step, and log lines in between.
	for _, chunk := range []string{
		"[INFO ] loading\n", "\r  |====| 10/37 - 1.0it/s\x1b[K", "\r  |=====| 37/37 - 1.0it/s\x1b[K\n",
		"\r  |=>   | 1/4 - 2.10s/it\x1b[K", "\r  |=>   | 1/4 - 2.", "05s/it\x1b[K",
		"\r  |==>  | 2/4 - 2.0s/it\x1b[K\r  |===> | 3/4 - 1.9s/it\x1b[K", "\r  |====| 4/4 - 1.9s/it\x1b[K\n",
	} {
		w.Write([]byte(chunk))
	}
	e.Write([]byte("[ERROR] model.cpp:10 - first\n[WARN ] x\n"))
	w.Write([]byte("[INFO ] done\n"))
	if got, want := prog.String(), "1/4 2/4 3/4 4/4"; got != want {
		t.Errorf("progress %q, want %q", got, want)
	}
	if got := o.lastError(); got != "[ERROR] model.cpp:10 - first" {
		t.Errorf("last error %q", got)
	}
	if strings.Contains(o.tailText(), "it/s") {
		t.Errorf("progress bars kept in the tail: %q", o.tailText())
	}
}

// Config.NoMmap, the benchmark knob: the engine runs without --mmap, in
// both modes, and the weight load it then logs (a read) is reported.
func TestNoMmap(t *testing.T) {
	for _, mode := range []string{ModeProcess, ModeServer} {
		t.Run(mode, func(t *testing.T) {
			log := engineLog(t)
			b := newBackend(t, Config{Mode: mode, NoMmap: true})
			m, _ := model(t, "sd15", "model")
			var load time.Duration
			ctx := backends.WithPhases(t.Context(), func(name string, d time.Duration) {
				if name == "engine_load" {
					load = d
				}
			})
			if _, err := b.Generate(ctx, m, params(), nil); err != nil {
				t.Fatal(err)
			}
			runs := log()
			if len(runs) == 0 || slices.Contains(runs[0].Args, "--mmap") {
				t.Errorf("engine runs %+v: want a first run without --mmap", runs)
			}
			if load != 820*time.Millisecond {
				t.Errorf("engine_load %v, want the 0.82s the engine logged", load)
			}
		})
	}
}
