package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/internal/lineprefix"
	"github.com/genfleet/genfleet/internal/s3x"
)

// Credentials of the embedded S3 server; it listens on loopback only.
const (
	devAccessKey = "genfleet-dev"
	devSecretKey = "genfleet-dev-secret"
)

func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("dev", stderr)
	listen := f.EnvString("listen", "GENFLEET_LISTEN", "127.0.0.1:8080", "API listen address")
	workers := f.Int("workers", 2, "worker processes (they share one cache directory)")
	dir := f.String("dir", "", "directory for the shared model cache (default: a temporary directory removed on exit)")
	demoSize := f.String("demo-size", "32MiB", "size of the seeded demo model")
	logLevel := f.EnvString("log-level", "GENFLEET_LOG_LEVEL", "info", "log level: debug, info, warn, error")
	backendName := f.EnvString("backend", "GENFLEET_BACKEND", "cpu", "the workers' backend: "+fmt.Sprint(backends.Names())+" or auto (cuda where a GPU is usable, else cpu)")
	envFile := f.String("env-file", "", "also write the settings a second shell needs (export GENFLEET_… lines, for `. FILE`) to this file, mode 0600; it is removed when dev stops")
	apiToken := apiTokenFlag(f)
	allowUnauth := allowUnauthFlag(f)
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	// The in-process scheduler's routing and authentication settings.
	rf := addRoutingFlags(cli.NewFlags("dev-internal", io.Discard))
	rf.apiToken, rf.allowUnauth = apiToken, allowUnauth
	if err := checkAPIExposure(*listen, rf.apiTokens(), *allowUnauth); err != nil {
		return err
	}
	size, err := cli.ParseSize(*demoSize)
	if err != nil {
		return fmt.Errorf("--demo-size: %w", err)
	}
	log := cli.NewLogger(stderr, *logLevel)

	// The workers' backend, decided once here (so that "auto" means the
	// same for every worker) and the scheduler's pool with it.
	be, err := selectBackend(*backendName, log)
	if err != nil {
		return fmt.Errorf("--backend %s: %w", *backendName, err)
	}
	backend, pool, engines := be.Name(), be.DeviceClass(), be.Engines()
	if c, ok := be.(io.Closer); ok {
		_ = c.Close()
	}
	if !slices.Contains(engines, refgen.Engine) {
		return fmt.Errorf("--backend %s runs %v models, and dev seeds a model of the built-in engine (%s): use cpu, cuda or auto", backend, engines, refgen.Engine)
	}

	// Bind the API address first: a clash should fail before anything starts.
	apiLn, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (pick another with --listen)", *listen, err)
	}
	defer apiLn.Close()

	root := *dir
	if root == "" {
		if root, err = os.MkdirTemp("", "genfleet-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(root)
	} else if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}

	// Embedded Redis-protocol server.
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return fmt.Errorf("start embedded redis: %w", err)
	}
	defer mr.Close()

	// Embedded S3-protocol server, in memory.
	s3Ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	faker := gofakes3.New(s3mem.New(), gofakes3.WithLogger(gofakes3.DiscardLog()))
	s3Srv := &http.Server{Handler: faker.Server(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s3Srv.Serve(s3Ln) }()
	defer s3Srv.Close()
	s3Endpoint := "http://" + s3Ln.Addr().String()

	// The in-process scheduler's connection settings; the workers and a
	// second shell get the same ones through the environment (shellEnv).
	c := cli.AddCommon(cli.NewFlags("dev-internal", io.Discard))
	*c.Redis, *c.S3Endpoint, *c.S3AccessKey, *c.S3SecretKey, *c.LogLevel = mr.Addr(), s3Endpoint, devAccessKey, devSecretKey, *logLevel
	*c.S3Region, *c.S3PathStyle = "us-east-1", true
	url := "http://" + apiLn.Addr().String()
	shell := shellEnv(c, url)
	if *envFile != "" {
		if err := writeEnvFile(*envFile, shell); err != nil {
			return fmt.Errorf("--env-file: %w", err)
		}
		defer os.Remove(*envFile)
	}

	// Seed the demo model.
	fmt.Fprintf(stderr, "genfleet dev: making the %s demo model…\n", *demoSize)
	modelPath := filepath.Join(root, "demo.safetensors")
	if err := writeModel(modelPath, size, 1); err != nil {
		return fmt.Errorf("make demo model: %w", err)
	}
	reg, cl, err := c.OpenRegistry(ctx)
	if err != nil {
		return err
	}
	outputs, _ := c.OutputsURL()
	for _, b := range []string{reg.Root.Bucket, outputs.Bucket} {
		if err := s3x.EnsureBucket(ctx, cl, b); err != nil {
			return fmt.Errorf("embedded s3: %w", err)
		}
	}
	if _, err := reg.Push(ctx, modelPath, s3x.URL{Bucket: reg.Root.Bucket, Key: "blobs/demo.safetensors"}, "demo", nil); err != nil {
		return fmt.Errorf("push demo model: %w", err)
	}
	_ = os.Remove(modelPath)

	// Worker processes: this same binary, sharing one cache directory.
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	cacheDir := filepath.Join(root, "cache")
	var procs []*exec.Cmd
	var wg sync.WaitGroup
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		wg.Wait()
	}()
	for i := 1; i <= *workers; i++ {
		cmd := exec.Command(self, "worker", "--backend", backend,
			"--cache-dir", cacheDir, "--host-id", "dev", "--metrics-listen", "127.0.0.1:0",
			"--shutdown-timeout", "10s")
		cmd.Env = append(os.Environ(), "GENFLEET_LOG_LEVEL="+*logLevel)
		for _, kv := range shell {
			cmd.Env = append(cmd.Env, kv.name+"="+kv.value)
		}
		cmd.Stdout = stderr
		cmd.Stderr = lineprefix.New(stderr, fmt.Sprintf("worker-%d | ", i))
		// Own process group: Ctrl-C reaches the workers only through us, so
		// they stop after the API, in order. Pdeathsig stops them if we die.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start worker %d: %w", i, err)
		}
		procs = append(procs, cmd)
		wg.Add(1)
		go func() { defer wg.Done(); _ = cmd.Wait() }()
	}

	auth, signIn := "", ""
	if len(rf.apiTokens()) > 0 {
		auth = ` -H "Authorization: Bearer $GENFLEET_API_TOKEN"`
		signIn = " (sign in with the API token)"
	}
	var exports strings.Builder
	for _, kv := range shell {
		fmt.Fprintf(&exports, "  export %s=%s\n", kv.name, shellQuote(kv.value))
	}
	envHint := "genfleet dev --env-file FILE writes these lines to FILE for `. FILE`"
	if *envFile != "" {
		envHint = "or: . " + shellQuote(*envFile)
	}
	fmt.Fprintf(stdout, `
genfleet dev is running: API %s, %d %s worker processes sharing %s
  web page %s/ui/%s
  embedded redis %s, embedded s3 %s (model "demo" registered)

Try:
  curl -s -X POST %s/v1/jobs%s -H 'Content-Type: application/json' \
    -d '{"model":"demo","prompt":"a red fox","seed":7,"width":256,"height":256,"steps":4}'
  curl -s%s %s/v1/jobs/JOB_ID
  curl -s%s -o fox.png %s/v1/jobs/JOB_ID/image

In another shell, point genfleet at this fleet (%s):
%s
then:
  genfleet models ls
  genfleet models push my.safetensors s3://genfleet-models/blobs/my.safetensors --name my
  genfleet submit --model demo --prompt "a red fox" --seed 7 --width 256 --height 256 --steps 4 -o fox.png

Ctrl-C stops everything.
`, url, *workers, backend, cacheDir, url, signIn, mr.Addr(), s3Endpoint, url, auth, auth, url, auth, url, envHint, strings.TrimRight(exports.String(), "\n"))

	err = serveScheduler(ctx, c, apiLn, pool, rf, log)
	fmt.Fprintln(stderr, "genfleet dev: stopping")
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// envVar is one environment setting.
type envVar struct{ name, value string }

// shellEnv is what `genfleet models`, `genfleet submit` and the workers
// need to reach a dev fleet: its Redis, its S3 server and keys, the registry
// and outputs it uses, and its API. The API token is not among them: it is
// the user's own secret, and already in their hands.
func shellEnv(c *cli.Common, api string) []envVar {
	return []envVar{
		{"GENFLEET_REDIS", *c.Redis},
		{"GENFLEET_S3_ENDPOINT", *c.S3Endpoint},
		{"GENFLEET_S3_ACCESS_KEY", *c.S3AccessKey},
		{"GENFLEET_S3_SECRET_KEY", *c.S3SecretKey},
		{"GENFLEET_S3_REGION", *c.S3Region},
		{"GENFLEET_S3_PATH_STYLE", strconv.FormatBool(*c.S3PathStyle)},
		{"GENFLEET_REGISTRY", *c.Registry},
		{"GENFLEET_OUTPUTS", *c.Outputs},
		{"GENFLEET_API", api},
	}
}

// writeEnvFile writes vars to path as "export NAME=value" lines for a
// POSIX shell's ".", readable by the owner only. It writes a temporary
// file and renames it over path, so a reader never sees half of it.
func writeEnvFile(path string, vars []envVar) error {
	var b strings.Builder
	b.WriteString("# genfleet dev: the settings of a running dev fleet. Load with: . " + shellQuote(path) + "\n")
	for _, kv := range vars {
		fmt.Fprintf(&b, "export %s=%s\n", kv.name, shellQuote(kv.value))
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(b.String()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// shellQuote quotes s for a POSIX shell when it holds anything but
// letters, digits and -_./:@%+=, (addresses and URLs need no quotes).
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@%+=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
