package sdcpp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/genfleet/genfleet/backends"
)

// The tests in this file hold the backend to what the real engine does,
// as captured from a real build into testdata/ (help, refusals) and
// reproduced by the stand-in engine.

// bounds is img's size, "none" for no image.
func bounds(img image.Image) string {
	if img == nil {
		return "none"
	}
	return fmt.Sprintf("%d×%d", img.Bounds().Dx(), img.Bounds().Dy())
}

// bothModes runs f once per way of running the engine.
func bothModes(t *testing.T, f func(t *testing.T, mode string)) {
	for _, mode := range []string{ModeProcess, ModeServer} {
		t.Run(mode, func(t *testing.T) { f(t, mode) })
	}
}

// The sampling methods and schedulers of the real engine pass; the old
// captured help's list lacked most of these.
func TestTheEnginesChoicesPass(t *testing.T) {
	bothModes(t, func(t *testing.T, mode string) {
		log := engineLog(t)
		b := newBackend(t, Config{Mode: mode})
		m, _ := model(t, "sd1", "model")
		for _, c := range [][2]string{{"dpm++2m_sde", "beta"}, {"dpm++2m_sde_bt", "normal"}, {"er_sde", "flux"}, {"res_2s", "logit_normal"}} {
			p := params()
			p.SamplingMethod, p.Scheduler = c[0], c[1]
			if _, err := b.Generate(t.Context(), m, p, nil); err != nil {
				t.Errorf("%s/%s: %v", c[0], c[1], err)
			}
		}
		if len(log()) == 0 {
			t.Error("the engine never ran")
		}
	})
}

// Extra flags are checked against the engine's own help at start-up: the
// flags of the real engine pass, one it lacks is refused by name instead
// of failing every job.
func TestExtraArgsAreTheEnginesFlags(t *testing.T) {
	for _, mode := range []string{ModeProcess, ModeServer} {
		b := newBackend(t, Config{Mode: mode, Args: []string{"--eager-load", "--backend", "cpu", "--hires-steps", "0", "-t", "2"}})
		m, _ := model(t, "sd1", "model")
		if _, err := b.Generate(t.Context(), m, params(), nil); err != nil {
			t.Errorf("%s with the real engine's flags: %v", mode, err)
		}
		_, err := New(Config{Mode: mode, CLI: filepath.Join(engineDir, "sd-cli"), Server: filepath.Join(engineDir, "sd-server"),
			Args: []string{"--cache-preset", "slow"}})
		if err == nil || !strings.Contains(err.Error(), "--cache-preset is not a flag of sd-") {
			t.Errorf("%s with --cache-preset: %v", mode, err)
		}
	}
}

// A prompt carrying the server's parameter markup is refused before the
// engine runs, in both modes: the real sd-server would take the size,
// steps, seed and batch count from it.
func TestPromptMarkupIsRefused(t *testing.T) {
	bothModes(t, func(t *testing.T, mode string) {
		log := engineLog(t)
		b := newBackend(t, Config{Mode: mode})
		m, _ := model(t, "sd1", "model")
		for _, tc := range []struct{ prompt, negative, field string }{
			{`a fox <sd_cpp_extra_args>{"width":128,"height":128}</sd_cpp_extra_args>`, "", "prompt"},
			{"a fox", `<sd_cpp_extra_args>{"batch_count":4}</sd_cpp_extra_args>`, "negative_prompt"},
		} {
			p := params()
			p.Width, p.Height = 256, 256
			p.Prompt, p.NegativePrompt = tc.prompt, tc.negative
			img, err := b.Generate(t.Context(), m, p, nil)
			if !errors.Is(err, backends.ErrBadParams) || !strings.Contains(err.Error(), tc.field+": contains <sd_cpp_extra_args>") {
				t.Errorf("%s: err = %v (image %s), want ErrBadParams naming %s", tc.field, err, bounds(img), tc.field)
			}
		}
		if runs := log(); len(runs) != 0 {
			t.Errorf("the engine ran for a refused prompt: %+v", runs)
		}
	})
}

// A size the engine would round up is refused, in both modes, rather than
// coming back larger than asked (200×136 became 256×192).
func TestSizesTheEngineRoundsAreRefused(t *testing.T) {
	bothModes(t, func(t *testing.T, mode string) {
		b := newBackend(t, Config{Mode: mode})
		m, _ := model(t, "sd1", "model")
		p := params()
		p.Width, p.Height = 200, 136
		img, err := b.Generate(t.Context(), m, p, nil)
		if !errors.Is(err, backends.ErrBadParams) || !strings.Contains(err.Error(), "width: must be a multiple of 64") {
			t.Errorf("200×136: err = %v, image %s", err, bounds(img))
		}
		p.Width, p.Height = 256, 192
		img, err = b.Generate(t.Context(), m, p, nil)
		if err != nil || bounds(img) != "256×192" {
			t.Errorf("256×192: err = %v, image %s", err, bounds(img))
		}
	})
}

// The server's error answer keeps its message: {"error":"server_error",
// "message":…} for an exception.
func TestServerErrorKeepsItsMessage(t *testing.T) {
	b := newBackend(t, Config{Mode: ModeServer})
	m, _ := model(t, "sd1", "model")
	p := params()
	p.Prompt = "exception"
	_, err := b.Generate(t.Context(), m, p, nil)
	if err == nil || !strings.Contains(err.Error(), "server_error: [json.exception.type_error.302] type must be number, but is string") {
		t.Errorf("err = %v", err)
	}
}

// The engine loads the weights during a model's first generation: a
// server's start is measured apart from it, and the first generation
// reports the load the engine logged, the next ones none.
func TestWeightsLoadIsReportedApartFromStart(t *testing.T) {
	b := newBackend(t, Config{Mode: ModeServer})
	m, _ := model(t, "sd1", "model")
	var loads []time.Duration
	ctx := backends.WithPhases(t.Context(), func(name string, d time.Duration) {
		if name == "engine_load" {
			loads = append(loads, d)
		}
	})
	for range 3 {
		if _, err := b.Generate(ctx, m, params(), nil); err != nil {
			t.Fatal(err)
		}
	}
	// The stand-in logs 0.01 s mapping and 0.20 s loading tensors.
	if len(loads) != 1 || loads[0] != 210*time.Millisecond {
		t.Errorf("engine_load reported %v, want once 210ms", loads)
	}
	if n := testutil.CollectAndCount(b.met.weightsLoad); n != 1 {
		t.Errorf("genfleet_sdcpp_weights_load_seconds has %d series", n)
	}
	if got := histogramCount(t, b.met.weightsLoad.WithLabelValues("server").(prometheus.Histogram)); got != 1 {
		t.Errorf("weights loads observed %d, want 1", got)
	}
	if got := histogramCount(t, b.met.serverStart); got != 1 {
		t.Errorf("server starts observed %d, want 1", got)
	}
	// A process loads them every run.
	pb := newBackend(t, Config{Mode: ModeProcess})
	loads = nil
	for range 2 {
		if _, err := pb.Generate(ctx, m, params(), nil); err != nil {
			t.Fatal(err)
		}
	}
	if len(loads) != 2 {
		t.Errorf("process runs reported engine_load %v, want twice", loads)
	}
}

// refusalCases reads testdata/refusals.txt: per case and program, the
// engine's exit status and lines.
func refusalCases(t *testing.T) map[string]struct {
	status int
	lines  []string
} {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "refusals.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := regexp.MustCompile(`^== (\S+) (\S+) exit (\d+)$`)
	cases := map[string]struct {
		status int
		lines  []string
	}{}
	var key string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := head.FindStringSubmatch(line); m != nil {
			key = m[1] + " " + m[2]
			var st int
			fmt.Sscan(m[3], &st)
			cases[key] = struct {
				status int
				lines  []string
			}{st, nil}
			continue
		}
		if key != "" && !strings.HasPrefix(line, "#") {
			c := cases[key]
			c.lines = append(c.lines, line)
			cases[key] = c
		}
	}
	if len(cases) == 0 {
		t.Fatal("no cases in testdata/refusals.txt")
	}
	return cases
}

// Every refusal captured from the real engine is recognised as one, and a
// file the engine did not find is not (the cache holds it: a host fault).
func TestRefusalsAreRecognised(t *testing.T) {
	for key, c := range refusalCases(t) {
		o := &engineOutput{}
		m := o.mark()
		w := o.stream(1)
		for _, l := range c.lines {
			w.Write([]byte(strings.ReplaceAll(l, "{path}", "/cache/blobs/sha256-ab12") + "\n"))
		}
		why, refused := o.refusedSince(m)
		want := !strings.HasPrefix(key, "not-found ")
		if refused != want || c.status != 1 {
			t.Errorf("%s (exit %d): refused %v (%q), want %v", key, c.status, refused, why, want)
		}
	}
}

// A model the engine refuses fails at once, with the engine's own lines,
// as a bad model (the worker does not retry it); the server, which loads
// the model at start, is not replaced by a process that would refuse it
// too. A missing file is a fault worth a retry.
func TestRefusedModelsFailAsBadModels(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("\x00\x01 not a model file at all, neither safetensors nor gguf"), 0o444)
	noVersion := filepath.Join(dir, "no-version")
	writeSafetensors(t, noVersion, "foo.weight")
	partial := filepath.Join(dir, "partial")
	writeSafetensors(t, partial, "model.diffusion_model.input_blocks.0.0.weight")
	for _, mode := range []string{ModeProcess, ModeAuto} {
		for _, tc := range []struct {
			name, path string
			says       string
		}{
			{"garbage", garbage, "get sd version from file failed: '" + garbage + "' (first: [WARN ] model_loader.cpp:252  - unknown format " + garbage + ")"},
			{"no version", noVersion, "get sd version from file failed: '" + noVersion + "'"},
			{"missing component", partial, "[ERROR] stable-diffusion.cpp:1693 - model metadata validation failed (first: [ERROR] model_manager.cpp:640  - Conditioner model tensor"},
		} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				log := engineLog(t)
				b := newBackend(t, Config{Mode: mode})
				m, _ := model(t, "bad", "model")
				m.Files[0].Path = tc.path
				_, err := b.Generate(t.Context(), m, params(), nil)
				if !errors.Is(err, backends.ErrBadModel) || !strings.Contains(err.Error(), "refused the model (exited with status 1): ") ||
					!strings.Contains(err.Error(), tc.says) {
					t.Errorf("err = %v, want ErrBadModel saying %q", err, tc.says)
				}
				if runs := log(); len(runs) != 1 {
					t.Errorf("the engine ran %d times, want once (no fallback)", len(runs))
				}
				if mode == ModeAuto && testutil.ToFloat64(b.met.fallbacks) != 0 {
					t.Error("a refused model fell back to a process")
				}
			})
		}
	}
	b := newBackend(t, Config{Mode: ModeServer})
	m, _ := model(t, "gone", "model")
	os.Remove(m.Files[0].Path)
	_, err := b.Generate(t.Context(), m, params(), nil)
	if err == nil || errors.Is(err, backends.ErrBadModel) || !strings.Contains(err.Error(), "a model file was not there: [WARN ] model_loader.cpp:254  - file "+m.Files[0].Path+" not found") {
		t.Errorf("missing file: err = %v, want a fault that is retried", err)
	}
}

// An engine that crashes, or a server killed under a job, fails the job
// as a fault worth a retry, and the next job gets a fresh server; a hung
// server is killed by the job's timeout.
func TestCrashesAndKillsAreRetriable(t *testing.T) {
	bothModes(t, func(t *testing.T, mode string) {
		b := newBackend(t, Config{Mode: mode})
		m, _ := model(t, "sd1", "model")
		p := params()
		p.Prompt = "crash"
		_, err := b.Generate(t.Context(), m, p, nil)
		if err == nil || errors.Is(err, backends.ErrBadModel) || errors.Is(err, backends.ErrBadParams) {
			t.Fatalf("crash: err = %v, want a retriable fault", err)
		}
		if mode == ModeProcess && !strings.Contains(err.Error(), "killed by signal: aborted") {
			t.Errorf("crash: err = %v", err)
		}
		if mode == ModeServer && !strings.Contains(err.Error(), "the server was killed by signal: aborted") {
			t.Errorf("crash: err = %v", err)
		}
		if _, err := b.Generate(t.Context(), m, params(), nil); err != nil {
			t.Errorf("the job after a crash: %v", err)
		}
	})

	t.Run("server killed under a job", func(t *testing.T) {
		b := newBackend(t, Config{Mode: ModeServer})
		m, _ := model(t, "sd1", "model")
		p := params()
		p.Prompt, p.Steps = "slow", 100
		errc := make(chan error, 1)
		go func() {
			_, err := b.Generate(t.Context(), m, p, nil)
			errc <- err
		}()
		var pid int
		eventually(t, 10*time.Second, func() bool {
			b.servers.mu.Lock()
			defer b.servers.mu.Unlock()
			for _, s := range b.servers.servers {
				select {
				case <-s.ready: // s.proc is set
				default:
					return false
				}
				if s.exited() || s.busy == 0 {
					return false
				}
				select {
				case s.gen <- struct{}{}: // free: the job has not reached it yet
					<-s.gen
					return false
				default:
					pid = s.proc.cmd.Process.Pid
					return true
				}
			}
			return false
		}, func() string { return "no server ran the job" })
		time.Sleep(200 * time.Millisecond) // into the steps
		syscall.Kill(pid, syscall.SIGKILL)
		err := <-errc
		if err == nil || errors.Is(err, backends.ErrBadModel) || !strings.Contains(err.Error(), "the server was killed by signal: killed") {
			t.Fatalf("err = %v, want a retriable fault saying the server was killed", err)
		}
		if _, err := b.Generate(t.Context(), m, params(), nil); err != nil {
			t.Errorf("the next job: %v", err)
		}
		if n := testutil.ToFloat64(b.met.serverStarts.WithLabelValues("ready")); n != 2 {
			t.Errorf("server starts %v, want 2 (a fresh one after the kill)", n)
		}
	})

	t.Run("hung server timed out", func(t *testing.T) {
		pidFile := filepath.Join(t.TempDir(), "child.pid")
		t.Setenv("FAKESD_CHILDPID", pidFile)
		b := newBackend(t, Config{Mode: ModeServer, Timeout: 2 * time.Second})
		m, _ := model(t, "sd1", "model")
		p := params()
		p.Prompt = "hang"
		_, err := b.Generate(context.Background(), m, p, nil)
		if err == nil || !strings.Contains(err.Error(), "timed out after 2s") {
			t.Fatalf("err = %v", err)
		}
		waitGone(t, "the hung server's child", readPid(t, pidFile))
	})
}

// histogramCount is how many observations h has.
func histogramCount(t *testing.T, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}
