package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
)

// standInServer builds the sdcpp backend's stand-in engine and returns it
// linked as sd-server; worker processes find its help texts through the
// environment.
func standInServer(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "fakesd")
	if out, err := exec.Command("go", "build", "-o", bin, "../backends/sdcpp/testdata/fakesd").CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in engine: %v\n%s", err, out)
	}
	srv := filepath.Join(dir, "sd-server")
	if err := os.Symlink(bin, srv); err != nil {
		t.Fatal(err)
	}
	help, err := filepath.Abs("../backends/sdcpp/testdata")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKESD_HELP_DIR", help)
	return srv
}

// ShareEngine's plumbing, with the stand-in engine (which reads the
// model's header only, so its memory says nothing about sharing): two
// workers per mode on real Redis and S3, each runs its job on an engine
// server of its own; the engines are found and measured; the run without
// --mmap really ran the engine without it (the stand-in logs a read, 0.82
// s, instead of a mapping, 0.20 s); nothing of the engines outlives the
// run.
func TestShareEngineStandIn(t *testing.T) {
	srv := standInServer(t)
	rd := testenv.Redis(t)
	s3 := testenv.S3Server(t)
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny-sd.safetensors")
	var specs []modelformat.TensorSpec
	for _, n := range []string{"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
		"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"} {
		specs = append(specs, modelformat.TensorSpec{Name: n, DType: "F32", Shape: []int64{1024},
			Write: func(w io.Writer) error { _, err := w.Write(make([]byte, 4096)); return err }})
	}
	var buf bytes.Buffer
	if err := modelformat.WriteSafetensors(&buf, nil, specs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(model, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log strings.Builder
	res, err := ShareEngine(ctx, ShareEngineOptions{
		Redis: asynq.RedisClientOpt{Addr: rd.Addr}, S3: s3.Config, Procs: 2, Server: srv,
		EngineArgs: "--threads 1", ModelFile: model, Dir: dir, Executable: genfleetBinary(t),
		JobTimeout: time.Minute, Verbose: true,
	}, &log)
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Engine != "sdcpp" || res.EngineServer != "sd-server" || res.Procs != 2 || res.SizeBytes != int64(buf.Len()) {
		t.Errorf("engine %q server %q procs %d size %d: want sdcpp, sd-server, the options and the model's size", res.Engine, res.EngineServer, res.Procs, res.SizeBytes)
	}
	for _, m := range []struct {
		name                                 string
		pss, rss, model, own, workers        int64
		ratio, start, load, firstAnswer, log float64
	}{
		{"mmap", res.MmapPSSBytes, res.MmapRSSBytes, res.MmapModelPSSBytes, res.MmapOwnBytes, res.MmapWorkerPSSBytes,
			res.MmapPSSRatio, res.MmapStartMS, res.MmapLoadMS, res.MmapFirstAnswerMS, 210},
		{"nommap", res.NoMmapPSSBytes, res.NoMmapRSSBytes, res.NoMmapModelPSSBytes, res.NoMmapOwnBytes, res.NoMmapWorkerPSSBytes,
			res.NoMmapPSSRatio, res.NoMmapStartMS, res.NoMmapLoadMS, res.NoMmapFirstAnswerMS, 820},
	} {
		if m.pss <= 0 || m.rss < m.pss || m.workers <= 0 {
			t.Errorf("%s: engines' PSS %d RSS %d, workers' PSS %d: want PSS above 0 and at most RSS", m.name, m.pss, m.rss, m.workers)
		}
		if m.ratio != round3(float64(m.pss)/float64(res.SizeBytes)) || m.own != (m.pss-m.model)/2 {
			t.Errorf("%s: ratio %v, own %d: want PSS over the model, (PSS − model's share) per engine", m.name, m.ratio, m.own)
		}
		if m.load != m.log {
			t.Errorf("%s: load %v ms, want the %v ms the engine logged", m.name, m.load, m.log)
		}
		if m.start <= 0 || m.firstAnswer < m.start {
			t.Errorf("%s: start %v ms, first answer %v ms: want a start, and the answer after it", m.name, m.start, m.firstAnswer)
		}
	}
	if want := res.MmapPSSRatio <= ShareEngineTarget; res.TargetsMet != want {
		t.Errorf("targets_met %v with ratio %v", res.TargetsMet, res.MmapPSSRatio)
	}
	if n := strings.Count(log.String(), ": engine process "); n != 4 {
		t.Errorf("%d engine processes measured, want 2 per mode", n)
	}
	// No engine server outlives the run.
	bin, _ := filepath.EvalSymlinks(srv)
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, exe := range exes {
		if target, err := os.Readlink(exe); err == nil && target == bin {
			t.Errorf("engine process %s still runs", filepath.Dir(exe))
		}
	}
}

// The process measures: CPU time, start time, descendants, and the PSS of
// a file's mapping, on this test process and a child.
func TestShareEngineProcFigures(t *testing.T) {
	// Against getrusage: burn 200 ms of CPU, both must see it.
	rusageMS := func() float64 {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
	}
	before, err := procCPUMS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ru0 := rusageMS()
	for x := 0; rusageMS()-ru0 < 200; x++ {
		_ = x * x
	}
	after, err := procCPUMS(os.Getpid())
	if d, want := after-before, rusageMS()-ru0; err != nil || d < want-30 || d > want+30 {
		t.Errorf("CPU %v ms, then %v ms (%v): %v ms apart, getrusage says %v", before, after, err, d, want)
	}
	// A child that maps a 4 MiB blob and touches every page: one of
	// Share's holders (this test binary, started again).
	root, man, cleanup, err := scratchCache(t.Context(), t.TempDir(), 4<<20, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	c, err := modelcache.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	path, err := blobPath(c, man.Files[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	child := exec.Command(exe)
	child.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d mmap", shareChildEnv, root, man.Files[0].Digest, 4<<20))
	stdin, _ := child.StdinPipe()
	out, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); child.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); !strings.HasPrefix(line, "ready") {
		t.Fatalf("holder said %q: %v", line, err)
	}
	kids, err := descendants(os.Getpid())
	if err != nil || !slices.Contains(kids, child.Process.Pid) {
		t.Errorf("descendants %v (%v), want the child %d among them", kids, err, child.Process.Pid)
	}
	if s1, err := procStart(child.Process.Pid); err != nil || s1 == "" {
		t.Errorf("start time %q, %v", s1, err)
	}
	if pss, err := mappedPSS(child.Process.Pid, path); err != nil || pss < 3<<20 || pss > 4<<20 {
		t.Errorf("PSS of the child's mapping of the file: %d bytes (%v), want about 4 MiB", pss, err)
	}
}

func TestShareEngineRejects(t *testing.T) {
	for _, tc := range []struct {
		o    ShareEngineOptions
		says string
	}{
		{ShareEngineOptions{Procs: 0, Server: "sd-server"}, "--procs must be at least 1"},
		{ShareEngineOptions{Procs: 3}, "--sdcpp-server or set GENFLEET_SDCPP_SERVER"},
		{ShareEngineOptions{Procs: 3, Server: filepath.Join(t.TempDir(), "sd-server")}, "GENFLEET_SDCPP_SERVER"},
	} {
		if _, err := ShareEngine(context.Background(), tc.o, nil); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("ShareEngine(%+v) = %v, want an error saying %q", tc.o, err, tc.says)
		}
	}
}

// TestShareEngineReal runs ShareEngine on a real stable-diffusion.cpp
// build (set GENFLEET_SDCPP_SERVER to its sd-server; GENFLEET_SDCPP_ARGS,
// if set, are passed on): three workers per mode on a random-weight SD 1.x
// checkpoint (2.1 GB, f16). With --mmap the engines share one copy of the
// weights, within ShareEngineTarget of the model; without it each holds
// its own. On two cores it takes 3 to 8 minutes: run it with -timeout 30m.
func TestShareEngineReal(t *testing.T) {
	srv := os.Getenv("GENFLEET_SDCPP_SERVER")
	if srv == "" {
		t.Skip("set GENFLEET_SDCPP_SERVER to a stable-diffusion.cpp build's sd-server to run it")
	}
	rd := testenv.Redis(t)
	s3 := testenv.S3Server(t)
	res, err := ShareEngine(t.Context(), ShareEngineOptions{
		Redis: asynq.RedisClientOpt{Addr: rd.Addr}, S3: s3.Config, Procs: 3, Server: srv,
		EngineArgs: os.Getenv("GENFLEET_SDCPP_ARGS"), Dir: t.TempDir(), Executable: genfleetBinary(t),
	}, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.MmapPSSRatio > ShareEngineTarget || !res.TargetsMet {
		t.Errorf("with --mmap three engines' summed PSS is %.2f× the model, want at most %v×", res.MmapPSSRatio, ShareEngineTarget)
	}
	if res.MmapModelPSSBytes < res.SizeBytes*8/10 || res.NoMmapModelPSSBytes != 0 {
		t.Errorf("the model file's mappings: %d bytes of PSS with --mmap, %d without; want most of the model (%d), then none",
			res.MmapModelPSSBytes, res.NoMmapModelPSSBytes, res.SizeBytes)
	}
	if res.NoMmapPSSRatio < 2.5 {
		t.Errorf("without --mmap three engines' summed PSS is %.2f× the model, want a copy each (≥ 2.5×)", res.NoMmapPSSRatio)
	}
}
