// Package sdcpp is the "sdcpp" backend: it runs real diffusion models
// (SD 1.x/2.x, SDXL, SD3, Flux and the rest of stable-diffusion.cpp's
// families) with stable-diffusion.cpp's programs, out of process.
//
// The worker hands the backend the cached files' paths while it holds
// their leases; the engine gets --mmap (unless Config.NoMmap, a benchmark
// knob), so it maps the blobs read-only and every engine process on the
// host shares the page cache that genfleet's model cache fills. Two ways to run:
//
//   - one process per job: the command-line program (sd-cli; older
//     releases call it sd) with the job's flags, writing a PNG that the
//     backend reads back and decodes;
//   - a server per model (sd-server, Config.Server): started on first use,
//     kept while jobs for the model keep coming (Config.KeepAlive), so a GPU
//     worker does not load the weights again for every job. The server
//     holds its own leases on the files for as long as it runs.
//
// Either way the engine runs in a process group of its own: a cancelled or
// timed-out job kills the group. Step progress is parsed from the engine's
// output; a failure carries the engine's own last error line.
package sdcpp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // decode what the engine writes
	_ "image/png"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/sdcpp/spec"
	"github.com/genfleet/genfleet/internal/defaults"
)

// Engine is the engine name manifests of stable-diffusion.cpp models carry.
const Engine = spec.Engine

// Modes of running the engine.
const (
	ModeAuto    = "auto"    // a server per model when Config.Server is found, else a process per job
	ModeServer  = "server"  // a server per model; no fallback
	ModeProcess = "process" // a process per job
)

// Config configures the backend. The zero value looks the programs up in
// PATH.
type Config struct {
	// CLI is the command-line program: a path or a name looked up in PATH.
	// Default: "sd-cli", else "sd" (its name in older releases).
	CLI string
	// Server is the HTTP server program. Default: "sd-server" when found
	// in PATH.
	Server string
	// Mode is ModeAuto (default), ModeServer or ModeProcess.
	Mode string
	// Args are extra flags for every engine run, e.g. ["--threads", "8"],
	// ["--clip-on-cpu"] or ["--vae-tiling"].
	Args []string
	// DeviceClass is the pool the backend serves. Default "sdcpp".
	DeviceClass string
	// Timeout bounds one generation; the engine is killed after it.
	// Default 30 minutes.
	Timeout time.Duration
	// KeepAlive is how long a server with no jobs stays up. Default 5m.
	KeepAlive time.Duration
	// MaxServers is how many servers (models) may run at once; a new one
	// stops the least recently used idle one first. Default 1.
	MaxServers int
	// StartTimeout bounds how long a server may take to load its model and
	// answer. Default 10 minutes.
	StartTimeout time.Duration
	// NoMmap runs the engine without --mmap: each engine process then
	// reads the weights into memory of its own instead of sharing the
	// page cache. A benchmark knob (genfleet bench share --backend sdcpp
	// measures both); a fleet wants the default, false.
	NoMmap bool
	// TmpDir holds each one-shot run's output. Default os.TempDir().
	TmpDir string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Backend runs stable-diffusion.cpp. Safe for concurrent use; Close stops
// its servers.
type Backend struct {
	cfg     Config
	cli     string // "" when only the server runs
	server  string // "" when no server runs
	log     *slog.Logger
	servers *serverPool
	met     *metrics
}

var _ backends.Backend = (*Backend)(nil)

func init() {
	backends.Register("sdcpp", func() (backends.Backend, error) { return New(Config{}) })
}

// New finds the engine's programs and checks that they know --mmap. It
// returns an error wrapping backends.ErrUnavailable when neither program
// is usable, saying why.
func New(cfg Config) (*Backend, error) {
	defaults.Zero(&cfg.Mode, ModeAuto)
	switch cfg.Mode {
	case ModeAuto, ModeServer, ModeProcess:
	default:
		return nil, fmt.Errorf("sdcpp: mode %q: want %s, %s or %s", cfg.Mode, ModeAuto, ModeServer, ModeProcess)
	}
	defaults.Zero(&cfg.DeviceClass, "sdcpp")
	defaults.Positive(&cfg.Timeout, 30*time.Minute)
	defaults.Positive(&cfg.KeepAlive, 5*time.Minute)
	defaults.Positive(&cfg.MaxServers, 1)
	defaults.Positive(&cfg.StartTimeout, 10*time.Minute)
	defaults.Zero(&cfg.TmpDir, os.TempDir())
	defaults.Zero(&cfg.Logger, slog.Default())
	for _, a := range cfg.Args {
		if a == spec.FlagOutput || a == "-o" || a == spec.FlagListenPort || a == spec.FlagListenIP || a == "-l" {
			return nil, fmt.Errorf("sdcpp: extra argument %s is set by genfleet itself", a)
		}
	}
	b := &Backend{cfg: cfg, log: cfg.Logger.With("backend", "sdcpp")}
	b.met = newMetrics(b)
	var why []string
	if cfg.Mode != ModeServer {
		names := []string{cfg.CLI}
		if cfg.CLI == "" {
			names = []string{"sd-cli", "sd"}
		}
		p, err := findEngine(names, cfg.Args, b.log)
		if errors.Is(err, errBadArgs) {
			return nil, err
		}
		if err != nil {
			why = append(why, "command-line program: "+err.Error())
		}
		b.cli = p
	}
	if cfg.Mode != ModeProcess {
		names := []string{cfg.Server}
		if cfg.Server == "" {
			names = []string{"sd-server"}
		}
		p, err := findEngine(names, cfg.Args, b.log)
		if errors.Is(err, errBadArgs) {
			return nil, err
		}
		if err != nil && (cfg.Mode == ModeServer || cfg.Server != "") {
			why = append(why, "server: "+err.Error())
		}
		b.server = p
	}
	switch {
	case cfg.Mode == ModeServer && b.server == "",
		cfg.Mode == ModeProcess && b.cli == "",
		b.cli == "" && b.server == "":
		return nil, fmt.Errorf("sdcpp: stable-diffusion.cpp not usable (%s): %w", strings.Join(why, "; "), backends.ErrUnavailable)
	}
	if len(why) > 0 {
		b.log.Warn("stable-diffusion.cpp partly usable", "problems", strings.Join(why, "; "))
	}
	if b.server != "" {
		b.servers = newServerPool(b)
	}
	return b, nil
}

// Name returns "sdcpp".
func (*Backend) Name() string { return "sdcpp" }

// DeviceClass returns Config.DeviceClass ("sdcpp" by default).
func (b *Backend) DeviceClass() string { return b.cfg.DeviceClass }

// Engines returns ["sdcpp"].
func (*Backend) Engines() []string { return []string{Engine} }

// Features returns the engine's: init images, masks and LoRAs
// (spec.Features; jobs.go says how each is passed).
func (*Backend) Features() []string { return spec.Features }

// Programs returns the command-line program and the server program in use
// ("" for one that is not).
func (b *Backend) Programs() (cli, server string) { return b.cli, b.server }

// Close stops every engine server.
func (b *Backend) Close() error {
	if b.servers != nil {
		b.servers.close()
	}
	return nil
}

var _ backends.Batcher = (*Backend)(nil)

// Generate runs the engine on m for one image of p, seed p.Seed
// (GenerateBatch with p.N 1).
func (b *Backend) Generate(ctx context.Context, m backends.Model, p backends.Params, progress backends.ProgressFunc) (image.Image, error) {
	p.N = 1
	imgs, err := b.GenerateBatch(ctx, m, p, progress)
	if err != nil {
		return nil, err
	}
	return imgs[0], nil
}

// GenerateBatch runs the engine on m for the p.N images of p, image k
// with seed p.Seed+k and the image the job of that seed alone makes: a
// text-to-image job in one run (the engine's batch count); one with an
// init image in a run per image, since the engine samples the init
// image's latent once per batch, with the first seed (jobs.go). Progress
// is the engine's step progress over all images. A model or parameters the
// engine cannot take yield errors wrapping backends.ErrBadModel or
// backends.ErrBadParams before anything runs; an engine failure carries
// the engine's last error line.
func (b *Backend) GenerateBatch(ctx context.Context, m backends.Model, p backends.Params, progress backends.ProgressFunc) ([]image.Image, error) {
	if err := checkParams(m, p); err != nil {
		return nil, err
	}
	margs, err := modelArgs(m)
	if err != nil {
		return nil, err
	}
	n := images(p)
	if p.InitImage == nil || n == 1 {
		return b.run(ctx, m, margs, p, progress)
	}
	imgs := make([]image.Image, 0, n)
	for k := range n {
		q := p
		q.N, q.Seed = 1, p.Seed+int64(k)
		var prog backends.ProgressFunc
		if progress != nil {
			prog = func(step, total int) { progress(k*total+step, n*total) }
		}
		img, err := b.run(ctx, m, margs, q, prog)
		if err != nil {
			return nil, fmt.Errorf("image %d of %d (seed %d): %w", k+1, n, q.Seed, err)
		}
		imgs = append(imgs, img...)
	}
	return imgs, nil
}

// run is one engine run for p: on the model's server, or a process.
func (b *Backend) run(ctx context.Context, m backends.Model, margs []string, p backends.Params, progress backends.ProgressFunc) ([]image.Image, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, b.cfg.Timeout, fmt.Errorf("sdcpp: generation timed out after %v", b.cfg.Timeout))
	defer cancel()
	if b.servers != nil {
		imgs, err := b.servers.generate(ctx, m, margs, p, progress)
		if !errors.Is(err, errNoServer) {
			b.count(ctx, "server", err)
			return imgs, err
		}
		if b.cli == "" {
			return nil, err
		}
		b.met.fallbacks.Inc()
		b.log.Warn("engine server not available; running a process for this job", "model", m.Name, "reason", err.Error())
	}
	imgs, err := b.runOnce(ctx, m, margs, p, progress)
	b.count(ctx, "process", err)
	return imgs, err
}

// count records a generation's outcome.
func (b *Backend) count(ctx context.Context, mode string, err error) {
	outcome := "ok"
	switch {
	case err == nil:
	case ctx.Err() != nil:
		outcome = "killed"
	case errors.Is(err, errBadOutput):
		outcome = "bad_output"
	default:
		outcome = "engine_error"
	}
	b.met.runs.WithLabelValues(mode, outcome).Inc()
}

// errBadOutput marks an engine that ended well but whose image is missing
// or unreadable.
var errBadOutput = errors.New("engine output unusable")

// runOnce runs the command-line program for one job.
func (b *Backend) runOnce(ctx context.Context, m backends.Model, margs []string, p backends.Params, progress backends.ProgressFunc) ([]image.Image, error) {
	dir, err := os.MkdirTemp(b.cfg.TmpDir, "genfleet-sdcpp-")
	if err != nil {
		return nil, fmt.Errorf("sdcpp: %w", err)
	}
	defer os.RemoveAll(dir)
	rf, err := writeRunFiles(dir, m, p)
	if err != nil {
		return nil, err
	}
	outPath := filepath.Join(dir, "output.png")
	out := &engineOutput{}
	out.setBatch(sampledSteps(p), images(p), progress)
	start := out.mark()
	proc, err := startProcess(b.cli, cliArgs(margs, b.cfg.Args, p, m.LoRAs, rf, outPath, b.cfg.NoMmap), dir, out)
	if err != nil {
		return nil, fmt.Errorf("sdcpp: start %s: %w", b.cli, err)
	}
	select {
	case <-proc.done:
	case <-ctx.Done():
		proc.stop()
		return nil, fmt.Errorf("sdcpp: engine killed: %w", context.Cause(ctx))
	}
	if proc.err != nil {
		b.log.Debug("engine output", "tail", out.tailText())
		return nil, engineExit("sdcpp: "+filepath.Base(b.cli), proc, out, start)
	}
	if err := loraTrouble(filepath.Base(b.cli), out, start); err != nil {
		return nil, err
	}
	b.reportLoad(ctx, "process", out, start)
	var imgs []image.Image
	for _, path := range outputPaths(outPath, images(p)) {
		data, err := readOutput(path)
		if err != nil {
			return nil, fmt.Errorf("sdcpp: %s exited 0 but %w (%s)%s: %w", filepath.Base(b.cli), err, filepath.Base(path), lastLine(out), errBadOutput)
		}
		img, err := decodeImage(data, lastLine(out))
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

// loraTrouble is the error for a run in which the engine, after m, did not
// find a LoRA (a fault of the host: the worker holds the files; retried)
// or could not load one (the file is no LoRA it reads; not retried). The
// engine itself only warns and goes on without the LoRA.
func loraTrouble(prog string, out *engineOutput, m outputMark) error {
	line, missing, failed := out.loraSince(m)
	switch {
	case failed:
		return fmt.Errorf("sdcpp: %s could not load a LoRA: %s: %w", prog, line, backends.ErrBadModel)
	case missing:
		return fmt.Errorf("sdcpp: %s did not find a LoRA file: %s", prog, line)
	}
	return nil
}

// refused is the error for an engine that refused the model's files: it
// wraps backends.ErrBadModel, so the job fails without a retry, and
// carries the engine's own lines.
func refused(prog, status, why string) error {
	return fmt.Errorf("sdcpp: %s refused the model (%s): %s: %w", prog, status, why, backends.ErrBadModel)
}

// engineExit is the error for an engine process that ended with a
// failure (what names it): a refusal of the model (refused), a model file
// it did not find (a fault of the host, retried), or any other failure,
// with the engine's last error line (retried).
func engineExit(what string, proc *process, out *engineOutput, m outputMark) error {
	if why, ok := out.refusedSince(m); ok {
		return refused(strings.TrimPrefix(what, "sdcpp: "), proc.status(), why)
	}
	if line, ok := out.missingSince(m); ok {
		return fmt.Errorf("%s %s: a model file was not there: %s", what, proc.status(), line)
	}
	return proc.exitError(what)
}

// reportLoad reports the weights' load time the engine logged since m,
// if it loaded any: a metric, and the job's engine_load timing. It
// returns the time and whether the engine loaded weights.
func (b *Backend) reportLoad(ctx context.Context, mode string, out *engineOutput, m outputMark) (time.Duration, bool) {
	d, ok := out.loadedSince(m)
	if ok {
		b.met.weightsLoad.WithLabelValues(mode).Observe(d.Seconds())
		backends.ReportPhase(ctx, "engine_load", d)
	}
	return d, ok
}

// maxOutputBytes bounds an output image read back from the engine.
const maxOutputBytes = 1 << 30

func readOutput(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errors.New("wrote no image")
	}
	if err != nil {
		return nil, fmt.Errorf("its image cannot be read: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxOutputBytes+1))
	if err != nil {
		return nil, fmt.Errorf("its image cannot be read: %w", err)
	}
	if len(data) > maxOutputBytes {
		return nil, fmt.Errorf("its image is larger than %d bytes", maxOutputBytes)
	}
	return data, nil
}

// decodeImage decodes the engine's output; said is what the engine said
// about it (" (engine said: …)" or "").
func decodeImage(data []byte, said string) (image.Image, error) {
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("sdcpp: the engine's output (%d bytes) is not an image: %v%s: %w", len(data), err, said, errBadOutput)
	}
	return img, nil
}

func lastLine(out *engineOutput) string {
	if l := out.lastError(); l != "" {
		return " (engine said: " + l + ")"
	}
	return ""
}
