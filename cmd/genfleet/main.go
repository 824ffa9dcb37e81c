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
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"

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
var errUsage = errors.New("usage")

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

// flags is a flag.FlagSet whose flags default to GENFLEET_* variables.
type flags struct {
	*flag.FlagSet
	// envErrs collects environment values that do not parse; parse
	// reports them, so GENFLEET_CONCURRENCY=lots is an error, not a default.
	envErrs *[]error
}

func newFlags(name string, stderr io.Writer) flags {
	fs := flag.NewFlagSet("genfleet "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return flags{FlagSet: fs, envErrs: new([]error)}
}

func (f flags) badEnv(env, val string, err error) {
	*f.envErrs = append(*f.envErrs, fmt.Errorf("%s=%q: %w", env, val, err))
}

// knownEnv records every GENFLEET_* variable a flag reads, so tests can
// check deployment files against the binary's own flag table.
var (
	knownEnvMu sync.Mutex
	knownEnv   = map[string]bool{}
)

func envOr(env, def string) string {
	knownEnvMu.Lock()
	knownEnv[env] = true
	knownEnvMu.Unlock()
	if v, ok := os.LookupEnv(env); ok {
		return v
	}
	return def
}

// envName records env as known and returns it.
func envName(env string) string {
	envOr(env, "")
	return env
}

func (f flags) str(name, env, def, usage string) *string {
	return f.String(name, envOr(env, def), usage+" (env "+env+")")
}

func (f flags) integer(name, env string, def int, usage string) *int {
	v := def
	if s, ok := os.LookupEnv(envName(env)); ok {
		if n, err := strconv.Atoi(s); err == nil {
			v = n
		} else {
			f.badEnv(env, s, err)
		}
	}
	return f.Int(name, v, usage+" (env "+env+")")
}

func (f flags) boolean(name, env string, def bool, usage string) *bool {
	v := def
	if s, ok := os.LookupEnv(envName(env)); ok {
		if b, err := strconv.ParseBool(s); err == nil {
			v = b
		} else {
			f.badEnv(env, s, err)
		}
	}
	return f.Bool(name, v, usage+" (env "+env+")")
}

func (f flags) duration(name, env string, def time.Duration, usage string) *time.Duration {
	v := def
	if s, ok := os.LookupEnv(envName(env)); ok {
		if d, err := time.ParseDuration(s); err == nil {
			v = d
		} else {
			f.badEnv(env, s, err)
		}
	}
	return f.Duration(name, v, usage+" (env "+env+")")
}

// parse parses args and rejects stray positional arguments beyond want.
func (f flags) parse(args []string, want int) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if len(*f.envErrs) > 0 {
		return errors.Join(*f.envErrs...)
	}
	if f.NArg() > want {
		fmt.Fprintf(f.Output(), "unexpected arguments: %q\n", f.Args()[want:])
		return errUsage
	}
	return nil
}

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
		redis:       f.str("redis", "GENFLEET_REDIS", "127.0.0.1:6379", "Redis address host:port or redis://[:password@]host:port[/db]"),
		redisPass:   f.str("redis-password", "GENFLEET_REDIS_PASSWORD", "", "Redis password, for a host:port --redis (KEDA's Redis scaler reads the same two variables)"),
		redisTLS:    f.boolean("redis-tls", "GENFLEET_REDIS_TLS", false, "connect to Redis over TLS (a rediss:// --redis always does), verifying the server's certificate"),
		redisTLSCA:  f.str("redis-tls-ca", "GENFLEET_REDIS_TLS_CA", "", "PEM file of the CA that signed Redis's certificate; empty uses the system roots"),
		s3Endpoint:  f.str("s3-endpoint", "GENFLEET_S3_ENDPOINT", "", "S3 endpoint URL; empty means AWS S3"),
		s3Region:    f.str("s3-region", "GENFLEET_S3_REGION", "us-east-1", "S3 region"),
		s3Access:    f.str("s3-access-key", "GENFLEET_S3_ACCESS_KEY", "", "S3 access key; empty uses the AWS default credential chain"),
		s3Secret:    f.str("s3-secret-key", "GENFLEET_S3_SECRET_KEY", "", "S3 secret key"),
		s3PathStyle: f.boolean("s3-path-style", "GENFLEET_S3_PATH_STYLE", true, "address buckets by path (needed by most S3-compatible servers)"),
		registry:    f.str("registry", "GENFLEET_REGISTRY", "s3://genfleet-models/", "model registry: manifests live at <registry>manifests/<name>.json"),
		outputs:     f.str("outputs", "GENFLEET_OUTPUTS", "s3://genfleet-outputs/outputs/", "bucket and prefix for output images"),
		uploads:     f.str("uploads", "GENFLEET_UPLOADS", "", "bucket and prefix of uploaded input images (init images, masks); default: uploads/ in the --outputs bucket"),
		maxUpload:   f.str("max-upload-size", "GENFLEET_MAX_UPLOAD_SIZE", "16MiB", "largest input image file taken (uploads and s3:// refs)"),
		logLevel:    f.str("log-level", "GENFLEET_LOG_LEVEL", "info", "log level: debug, info, warn, error"),
	}
}

func (c *common) logger(stderr io.Writer) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*c.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
}

func (c *common) redisOpt() (asynq.RedisConnOpt, error) {
	addr := *c.redis
	if strings.Contains(addr, "://") {
		opt, err := asynq.ParseRedisURI(addr)
		if err != nil {
			// The URI may hold a password: name the flag, not the value.
			return nil, fmt.Errorf("--redis: not a valid Redis URI: %w", redactURIError(err, addr))
		}
		if o, ok := opt.(asynq.RedisClientOpt); ok && (*c.redisTLS || o.TLSConfig != nil) {
			host, _, _ := strings.Cut(o.Addr, ":")
			if o.TLSConfig, err = c.redisTLSConfig(host); err != nil {
				return nil, err
			}
			return o, nil
		}
		if *c.redisTLS {
			return nil, fmt.Errorf("--redis-tls works with host:port, redis:// and rediss:// addresses, not %T", opt)
		}
		return opt, nil
	}
	if addr == "" {
		return nil, errors.New("--redis is empty")
	}
	opt := asynq.RedisClientOpt{Addr: addr, Password: *c.redisPass}
	if *c.redisTLS {
		host, _, _ := strings.Cut(addr, ":")
		tc, err := c.redisTLSConfig(host)
		if err != nil {
			return nil, err
		}
		opt.TLSConfig = tc
	}
	return opt, nil
}

// redisTLSConfig verifies the server as host (TLS 1.2 or later), against
// --redis-tls-ca when given.
func (c *common) redisTLSConfig(host string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if *c.redisTLSCA != "" {
		pem, err := os.ReadFile(*c.redisTLSCA)
		if err != nil {
			return nil, fmt.Errorf("--redis-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--redis-tls-ca %s: no PEM certificate in it", *c.redisTLSCA)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// redactURIError removes the password of uri from err's message.
func redactURIError(err error, uri string) error {
	u, perr := url.Parse(uri)
	if perr != nil || u.User == nil {
		if perr != nil {
			return errors.New("unparsable URI")
		}
		return err
	}
	if pw, ok := u.User.Password(); ok && pw != "" {
		return errors.New(strings.ReplaceAll(err.Error(), pw, "xxxxx"))
	}
	return err
}

func (c *common) s3Config() s3x.Config {
	return s3x.Config{Endpoint: *c.s3Endpoint, Region: *c.s3Region, AccessKey: *c.s3Access, SecretKey: *c.s3Secret, PathStyle: *c.s3PathStyle}
}

// s3Client returns the S3 client the flags describe. When neither the
// flags nor the AWS credential chain hold credentials, the error says which
// flags to set rather than what the chain tried last.
func (c *common) s3Client(ctx context.Context) (*s3.Client, error) {
	cl, err := s3x.NewClient(ctx, c.s3Config())
	if errors.Is(err, s3x.ErrNoCredentials) {
		keys := "--s3-access-key and --s3-secret-key (GENFLEET_S3_ACCESS_KEY, GENFLEET_S3_SECRET_KEY)"
		if *c.s3Endpoint == "" {
			return nil, fmt.Errorf("no S3 endpoint and %w: for an S3-compatible server (MinIO, versitygw, the one `genfleet dev` prints) "+
				"set --s3-endpoint (GENFLEET_S3_ENDPOINT) and %s; for AWS S3 set those keys or AWS credentials "+
				"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, an instance or pod role)", err, keys)
		}
		return nil, fmt.Errorf("S3 endpoint %s: %w: set %s", *c.s3Endpoint, err, keys)
	}
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	return cl, nil
}

func (c *common) registryURL() (s3x.URL, error) {
	u, err := s3x.ParseURL(*c.registry)
	if err != nil {
		return s3x.URL{}, fmt.Errorf("--registry: %w", err)
	}
	if u.Key != "" && !strings.HasSuffix(u.Key, "/") {
		u.Key += "/"
	}
	return u, nil
}

func (c *common) outputsURL() (s3x.URL, error) {
	u, err := s3x.ParseURL(*c.outputs)
	if err != nil {
		return s3x.URL{}, fmt.Errorf("--outputs: %w", err)
	}
	if u.Key != "" && !strings.HasSuffix(u.Key, "/") {
		u.Key += "/"
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
	u, err := s3x.ParseURL(*c.uploads)
	if err != nil {
		return s3x.URL{}, 0, fmt.Errorf("--uploads: %w", err)
	}
	if u.Key != "" && !strings.HasSuffix(u.Key, "/") {
		u.Key += "/"
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
