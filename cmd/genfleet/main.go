// Command genfleet runs image-generation jobs on a fleet of workers. One
// binary, several roles:
//
//	genfleet dev         the whole fleet in one process tree, no services needed
//	genfleet scheduler   the HTTP API
//	genfleet worker      a worker process
//	genfleet submit      submit a job through the API
//	genfleet models      make, push, register, inspect and list models
//
// Every flag has a GENFLEET_* environment fallback; `genfleet CMD -h` lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/envflag"
	"github.com/genfleet/genfleet/internal/redisx"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/modelcache"
)

const usage = `genfleet — run image-generation jobs on a fleet of GPU and CPU workers.

Usage: genfleet COMMAND [flags]

Commands:
  dev         run the whole fleet locally: embedded Redis and S3, a demo model,
              the scheduler and two worker processes sharing one model cache
  scheduler   serve the HTTP API (jobs, models, health, metrics)
  worker      run a worker process
  submit      submit a job through the API, optionally wait and save the PNG
  models      make | push | register | inspect | ls reference and registered models
  cache       ls | pull | verify | gc | rm this host's model cache
  bench       measure genfleet against its anchors (genfleet bench -h)

Run 'genfleet COMMAND -h' for a command's flags; each flag also reads the
GENFLEET_* environment variable named in its help.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks a command-line mistake; the message has been printed.
var errUsage = envflag.ErrUsage

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "dev":
		err = cmdDev(ctx, args[1:], stdout, stderr)
	case "scheduler":
		err = cmdScheduler(ctx, args[1:], stderr)
	case "worker":
		err = cmdWorker(ctx, args[1:], stderr)
	case "submit":
		err = cmdSubmit(ctx, args[1:], stdout, stderr)
	case "models":
		err = cmdModels(ctx, args[1:], stdout, stderr)
	case "bench":
		err = cmdBench(ctx, args[1:], stdout, stderr)
	case "cache":
		err = cmdCache(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "genfleet: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		return 2
	default:
		fmt.Fprintf(stderr, "genfleet %s: %v\n", args[0], err)
		return 1
	}
}

// flags is a command's flag set: each flag's default may come from the
// GENFLEET_* variable its help names.
type flags = *envflag.FlagSet

func newFlags(name string, stderr io.Writer) flags { return envflag.New("genfleet "+name, stderr) }

// common holds the connection flags every role shares.
type common struct {
	redis       *string
	redisPass   *string
	redisTLS    *bool
	redisTLSCA  *string
	s3Endpoint  *string
	s3Region    *string
	s3Access    *string
	s3Secret    *string
	s3PathStyle *bool
	registry    *string
	outputs     *string
	uploads     *string
	maxUpload   *string
	logLevel    *string
}

func addCommon(f flags) *common {
	return &common{
		redis:       f.EnvString("redis", "GENFLEET_REDIS", "127.0.0.1:6379", "Redis address host:port or redis://[:password@]host:port[/db]"),
		redisPass:   f.EnvString("redis-password", "GENFLEET_REDIS_PASSWORD", "", "Redis password, for a host:port --redis (KEDA's Redis scaler reads the same two variables)"),
		redisTLS:    f.EnvBool("redis-tls", "GENFLEET_REDIS_TLS", false, "connect to Redis over TLS (a rediss:// --redis always does), verifying the server's certificate"),
		redisTLSCA:  f.EnvString("redis-tls-ca", "GENFLEET_REDIS_TLS_CA", "", "PEM file of the CA that signed Redis's certificate; empty uses the system roots"),
		s3Endpoint:  f.EnvString("s3-endpoint", "GENFLEET_S3_ENDPOINT", "", "S3 endpoint URL; empty means AWS S3"),
		s3Region:    f.EnvString("s3-region", "GENFLEET_S3_REGION", "us-east-1", "S3 region"),
		s3Access:    f.EnvString("s3-access-key", "GENFLEET_S3_ACCESS_KEY", "", "S3 access key; empty uses the AWS default credential chain"),
		s3Secret:    f.EnvString("s3-secret-key", "GENFLEET_S3_SECRET_KEY", "", "S3 secret key"),
		s3PathStyle: f.EnvBool("s3-path-style", "GENFLEET_S3_PATH_STYLE", true, "address buckets by path (needed by most S3-compatible servers)"),
		registry:    f.EnvString("registry", "GENFLEET_REGISTRY", "s3://genfleet-models/", "model registry: manifests live at <registry>manifests/<name>.json"),
		outputs:     f.EnvString("outputs", "GENFLEET_OUTPUTS", "s3://genfleet-outputs/outputs/", "bucket and prefix for output images"),
		uploads:     f.EnvString("uploads", "GENFLEET_UPLOADS", "", "bucket and prefix of uploaded input images (init images, masks); default: uploads/ in the --outputs bucket"),
		maxUpload:   f.EnvString("max-upload-size", "GENFLEET_MAX_UPLOAD_SIZE", "16MiB", "largest input image file taken (uploads and s3:// refs)"),
		logLevel:    f.EnvString("log-level", "GENFLEET_LOG_LEVEL", "info", "log level: debug, info, warn, error"),
	}
}

func (c *common) logger(stderr io.Writer) *slog.Logger { return newLogger(stderr, *c.logLevel) }

// newLogger logs text at level (debug, info, warn or error; info when it
// is none of them) to w.
func newLogger(w io.Writer, level string) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

func (c *common) redisOpt() (asynq.RedisConnOpt, error) {
	return redisx.Config{Addr: *c.redis, Password: *c.redisPass, TLS: *c.redisTLS, TLSCA: *c.redisTLSCA}.ConnOpt()
}

func (c *common) s3Config() s3x.Config {
	return s3x.Config{Endpoint: *c.s3Endpoint, Region: *c.s3Region, AccessKey: *c.s3Access, SecretKey: *c.s3Secret, PathStyle: *c.s3PathStyle}
}

// s3Client returns the S3 client the flags describe (s3x.Connect: without
// credentials, the error says which flags to set).
func (c *common) s3Client(ctx context.Context) (*s3.Client, error) {
	return s3x.Connect(ctx, c.s3Config())
}

func (c *common) registryURL() (s3x.URL, error) {
	u, err := s3x.ParsePrefix(*c.registry)
	if err != nil {
		return u, fmt.Errorf("--registry: %w", err)
	}
	return u, nil
}

func (c *common) outputsURL() (s3x.URL, error) {
	u, err := s3x.ParsePrefix(*c.outputs)
	if err != nil {
		return u, fmt.Errorf("--outputs: %w", err)
	}
	return u, nil
}

// uploadsURL is --uploads, or uploads/ in the --outputs bucket, and
// --max-upload-size in bytes.
func (c *common) uploadsURL() (s3x.URL, int64, error) {
	max, err := parseSize(*c.maxUpload)
	if err != nil || max <= 0 {
		return s3x.URL{}, 0, fmt.Errorf("--max-upload-size %q: want a positive size such as 16MiB", *c.maxUpload)
	}
	if *c.uploads == "" {
		out, err := c.outputsURL()
		if err != nil {
			return s3x.URL{}, 0, err
		}
		return s3x.URL{Bucket: out.Bucket, Key: "uploads/"}, max, nil
	}
	u, err := s3x.ParsePrefix(*c.uploads)
	if err != nil {
		return s3x.URL{}, 0, fmt.Errorf("--uploads: %w", err)
	}
	return u, max, nil
}

func (c *common) openRegistry(ctx context.Context) (*modelcache.Registry, *s3.Client, error) {
	root, err := c.registryURL()
	if err != nil {
		return nil, nil, err
	}
	cl, err := c.s3Client(ctx)
	if err != nil {
		return nil, nil, err
	}
	return &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: root}, cl, nil
}

// parseSize parses "64MiB", "4GiB", "1.5GB", "65536".
func parseSize(s string) (int64, error) { return units.ParseSize(s) }
