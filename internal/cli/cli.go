// Package cli holds what genfleet's commands share: the flag set whose
// flags fall back to GENFLEET_* variables, the groups of flags several
// roles take (connections, cache, model loading, engines, peers, job
// lifecycle) with the configs they turn into, and the progress output of
// long transfers.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/envflag"
	"github.com/genfleet/genfleet/internal/redisx"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/modelcache"
)

// ErrUsage marks a command-line mistake; the message has been printed.
var ErrUsage = envflag.ErrUsage

// Flags is a command's flag set: each flag's default may come from the
// GENFLEET_* variable its help names.
type Flags = *envflag.FlagSet

// NewFlags returns the flag set of genfleet command name, printing to stderr.
func NewFlags(name string, stderr io.Writer) Flags { return envflag.New("genfleet "+name, stderr) }

// Common holds the connection flags every role shares.
type Common struct {
	Redis         *string
	RedisPassword *string
	RedisTLS      *bool
	RedisTLSCA    *string
	S3Endpoint    *string
	S3Region      *string
	S3AccessKey   *string
	S3SecretKey   *string
	S3PathStyle   *bool
	Registry      *string
	Outputs       *string
	Uploads       *string
	MaxUpload     *string
	LogLevel      *string
}

// AddCommon adds the connection flags to f.
func AddCommon(f Flags) *Common {
	return &Common{
		Redis:         f.EnvString("redis", "GENFLEET_REDIS", "127.0.0.1:6379", "Redis address host:port or redis://[:password@]host:port[/db]"),
		RedisPassword: f.EnvString("redis-password", "GENFLEET_REDIS_PASSWORD", "", "Redis password, for a host:port --redis (KEDA's Redis scaler reads the same two variables)"),
		RedisTLS:      f.EnvBool("redis-tls", "GENFLEET_REDIS_TLS", false, "connect to Redis over TLS (a rediss:// --redis always does), verifying the server's certificate"),
		RedisTLSCA:    f.EnvString("redis-tls-ca", "GENFLEET_REDIS_TLS_CA", "", "PEM file of the CA that signed Redis's certificate; empty uses the system roots"),
		S3Endpoint:    f.EnvString("s3-endpoint", "GENFLEET_S3_ENDPOINT", "", "S3 endpoint URL; empty means AWS S3"),
		S3Region:      f.EnvString("s3-region", "GENFLEET_S3_REGION", "us-east-1", "S3 region"),
		S3AccessKey:   f.EnvString("s3-access-key", "GENFLEET_S3_ACCESS_KEY", "", "S3 access key; empty uses the AWS default credential chain"),
		S3SecretKey:   f.EnvString("s3-secret-key", "GENFLEET_S3_SECRET_KEY", "", "S3 secret key"),
		S3PathStyle:   f.EnvBool("s3-path-style", "GENFLEET_S3_PATH_STYLE", true, "address buckets by path (needed by most S3-compatible servers)"),
		Registry:      f.EnvString("registry", "GENFLEET_REGISTRY", "s3://genfleet-models/", "model registry: manifests live at <registry>manifests/<name>.json"),
		Outputs:       f.EnvString("outputs", "GENFLEET_OUTPUTS", "s3://genfleet-outputs/outputs/", "bucket and prefix for output images"),
		Uploads:       f.EnvString("uploads", "GENFLEET_UPLOADS", "", "bucket and prefix of uploaded input images (init images, masks); default: uploads/ in the --outputs bucket"),
		MaxUpload:     f.EnvString("max-upload-size", "GENFLEET_MAX_UPLOAD_SIZE", "16MiB", "largest input image file taken (uploads and s3:// refs)"),
		LogLevel:      f.EnvString("log-level", "GENFLEET_LOG_LEVEL", "info", "log level: debug, info, warn, error"),
	}
}

// Logger logs at --log-level to stderr.
func (c *Common) Logger(stderr io.Writer) *slog.Logger { return NewLogger(stderr, *c.LogLevel) }

// NewLogger logs text at level (debug, info, warn or error; info when it
// is none of them) to w.
func NewLogger(w io.Writer, level string) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

// RedisOpt is the Redis connection the flags describe.
func (c *Common) RedisOpt() (asynq.RedisConnOpt, error) {
	return redisx.Config{Addr: *c.Redis, Password: *c.RedisPassword, TLS: *c.RedisTLS, TLSCA: *c.RedisTLSCA}.ConnOpt()
}

// S3Config is the S3 connection the flags describe.
func (c *Common) S3Config() s3x.Config {
	return s3x.Config{Endpoint: *c.S3Endpoint, Region: *c.S3Region, AccessKey: *c.S3AccessKey, SecretKey: *c.S3SecretKey, PathStyle: *c.S3PathStyle}
}

// S3Client returns the S3 client the flags describe (s3x.Connect: without
// credentials, the error says which flags to set).
func (c *Common) S3Client(ctx context.Context) (*s3.Client, error) {
	return s3x.Connect(ctx, c.S3Config())
}

// RegistryURL is --registry.
func (c *Common) RegistryURL() (s3x.URL, error) {
	u, err := s3x.ParsePrefix(*c.Registry)
	if err != nil {
		return u, fmt.Errorf("--registry: %w", err)
	}
	return u, nil
}

// OutputsURL is --outputs.
func (c *Common) OutputsURL() (s3x.URL, error) {
	u, err := s3x.ParsePrefix(*c.Outputs)
	if err != nil {
		return u, fmt.Errorf("--outputs: %w", err)
	}
	return u, nil
}

// UploadsURL is --uploads, or uploads/ in the --outputs bucket, and
// --max-upload-size in bytes.
func (c *Common) UploadsURL() (s3x.URL, int64, error) {
	max, err := ParseSize(*c.MaxUpload)
	if err != nil || max <= 0 {
		return s3x.URL{}, 0, fmt.Errorf("--max-upload-size %q: want a positive size such as 16MiB", *c.MaxUpload)
	}
	if *c.Uploads == "" {
		out, err := c.OutputsURL()
		if err != nil {
			return s3x.URL{}, 0, err
		}
		return s3x.URL{Bucket: out.Bucket, Key: "uploads/"}, max, nil
	}
	u, err := s3x.ParsePrefix(*c.Uploads)
	if err != nil {
		return s3x.URL{}, 0, fmt.Errorf("--uploads: %w", err)
	}
	return u, max, nil
}

// OpenRegistry returns the model registry at --registry and its S3 client.
func (c *Common) OpenRegistry(ctx context.Context) (*modelcache.Registry, *s3.Client, error) {
	root, err := c.RegistryURL()
	if err != nil {
		return nil, nil, err
	}
	cl, err := c.S3Client(ctx)
	if err != nil {
		return nil, nil, err
	}
	return &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: root}, cl, nil
}

// ParseSize parses "64MiB", "4GiB", "1.5GB", "65536".
func ParseSize(s string) (int64, error) { return units.ParseSize(s) }
