// Package s3x builds S3 clients from genfleet's configuration and parses
// s3://bucket/key references. It is shared by the CLI, the scheduler, the
// worker and the model cache so that every part talks to S3 the same way.
package s3x

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// Config says how to reach an S3-compatible server.
type Config struct {
	// Endpoint is the server's base URL, e.g. "http://127.0.0.1:7070".
	// Empty means AWS S3 itself (region-derived endpoint).
	Endpoint string
	// Region defaults to "us-east-1".
	Region string
	// AccessKey and SecretKey; when both are empty the SDK's default
	// credential chain (AWS_* environment, shared config, instance role) is used.
	AccessKey string
	SecretKey string
	// PathStyle addresses buckets as endpoint/bucket/key rather than
	// bucket.endpoint/key. S3-compatible servers usually need it; default true
	// in genfleet's flags.
	PathStyle bool
}

// ErrNoCredentials means that cfg has no keys and the SDK's default
// credential chain found none either.
var ErrNoCredentials = errors.New("no S3 credentials")

// NewClient returns an S3 client for cfg. Checksums are computed and validated
// only where S3 requires them, which keeps the client compatible with
// S3-compatible servers that do not implement flexible checksums.
//
// Without keys in cfg the SDK's default credential chain is asked for
// credentials once, here, so that a machine with none fails now with an
// error wrapping ErrNoCredentials, rather than at the first request with
// the chain's last word (usually that no EC2 instance role was found). One
// key without the other is an error too.
func NewClient(ctx context.Context, cfg Config) (*s3.Client, error) {
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		return nil, errors.New("S3 access key without secret key, or the other way round: give both or neither")
	}
	region := cfg.Region
	if region == "" {
		region = "us-east-1"
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(region),
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConnsPerHost = 64
			tr.IdleConnTimeout = 90 * time.Second
		})),
	}
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 config: %w", err)
	}
	if cfg.AccessKey == "" {
		if awsCfg.Credentials == nil {
			return nil, ErrNoCredentials
		}
		if _, err := awsCfg.Credentials.Retrieve(ctx); err != nil {
			return nil, fmt.Errorf("%w (the AWS credential chain found none: %v)", ErrNoCredentials, err)
		}
	}
	return s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
	}), nil
}

// Connect is NewClient for genfleet's commands: when neither cfg nor the
// AWS credential chain holds credentials, its error (still wrapping
// ErrNoCredentials) ends with which settings to set, the command-line
// flags with their GENFLEET_* variables or AWS's own, rather than with
// what the chain tried last.
func Connect(ctx context.Context, cfg Config) (*s3.Client, error) {
	cl, err := NewClient(ctx, cfg)
	if errors.Is(err, ErrNoCredentials) {
		keys := "--s3-access-key and --s3-secret-key (GENFLEET_S3_ACCESS_KEY, GENFLEET_S3_SECRET_KEY)"
		if cfg.Endpoint == "" {
			return nil, fmt.Errorf("no S3 endpoint and %w: for an S3-compatible server (MinIO, versitygw, the one `genfleet dev` prints) "+
				"set --s3-endpoint (GENFLEET_S3_ENDPOINT) and %s; for AWS S3 set those keys or AWS credentials "+
				"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, an instance or pod role)", err, keys)
		}
		return nil, fmt.Errorf("S3 endpoint %s: %w: set %s", cfg.Endpoint, err, keys)
	}
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	return cl, nil
}

// URL is a parsed s3://bucket/key reference. Key may be empty or end in "/"
// when the URL names a prefix.
type URL struct {
	Bucket string
	Key    string
}

func (u URL) String() string { return "s3://" + u.Bucket + "/" + u.Key }

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// ValidBucket reports whether name is a valid S3 bucket name.
func ValidBucket(name string) bool {
	return bucketRE.MatchString(name) && !strings.Contains(name, "..")
}

// ParseURL parses "s3://bucket/key". It rejects invalid bucket names and
// keys with empty, "." or ".." path segments, so that a reference can never
// climb out of the prefix it names.
func ParseURL(s string) (URL, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return URL{}, fmt.Errorf("%q is not an s3:// URL", s)
	}
	bucket, key, _ := strings.Cut(rest, "/")
	if !ValidBucket(bucket) {
		return URL{}, fmt.Errorf("%q: invalid bucket name %q", s, bucket)
	}
	if key != "" {
		segs := strings.Split(strings.TrimSuffix(key, "/"), "/")
		for _, seg := range segs {
			if seg == "" || seg == "." || seg == ".." {
				return URL{}, fmt.Errorf("%q: key has an empty, \".\" or \"..\" segment", s)
			}
		}
		if len(key) > 1024 {
			return URL{}, fmt.Errorf("%q: key longer than 1024 bytes", s)
		}
	}
	return URL{Bucket: bucket, Key: key}, nil
}

// ParsePrefix is ParseURL for a bucket and key prefix: a key that is not
// empty gets a trailing "/" when it lacks one.
func ParsePrefix(s string) (URL, error) {
	u, err := ParseURL(s)
	if err == nil && u.Key != "" && !strings.HasSuffix(u.Key, "/") {
		u.Key += "/"
	}
	return u, err
}

// IsNotFound reports whether err is S3's answer for a missing bucket or key.
func IsNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var nb *types.NoSuchBucket
	if errors.As(err, &nsk) || errors.As(err, &nf) || errors.As(err, &nb) {
		return true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound", "NoSuchBucket", "404":
			return true
		}
	}
	return false
}

// Object is what HeadObject reports about an object.
type Object struct {
	Size int64
	// ETag as S3 returns it, quotes included.
	ETag string
	// SHA256 is the lowercase hex SHA-256 of the whole object when S3
	// holds one: the object was uploaded with a SHA-256 checksum, which S3
	// checked against the bytes it received. Empty when it has none, has
	// another algorithm's, or has the composite checksum of a multipart
	// upload (a hash of the parts' hashes, not of the object).
	SHA256 string
}

// Head returns the size, ETag and full-object SHA-256 of the object at u,
// asking S3 for its checksum (checksum mode). A missing bucket or object
// yields an error for which IsNotFound is true.
func Head(ctx context.Context, c *s3.Client, u URL) (Object, error) {
	out, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &u.Bucket, Key: &u.Key, ChecksumMode: types.ChecksumModeEnabled})
	if err != nil {
		return Object{}, fmt.Errorf("head %s: %w", u, err)
	}
	o := Object{Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag)}
	if out.ChecksumType != types.ChecksumTypeComposite {
		o.SHA256 = fullObjectSHA256(aws.ToString(out.ChecksumSHA256))
	}
	return o, nil
}

// fullObjectSHA256 returns the hex of a base64 SHA-256 checksum header, or
// "" when v is not one: empty, or a composite checksum ("<base64>-<parts>").
func fullObjectSHA256(v string) string {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) != sha256.Size {
		return ""
	}
	return hex.EncodeToString(b)
}

// EnsureBucket creates bucket if it does not exist yet.
func EnsureBucket(ctx context.Context, c *s3.Client, bucket string) error {
	if _, err := c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &bucket}); err == nil {
		return nil
	}
	_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket})
	if err != nil {
		var owned *types.BucketAlreadyOwnedByYou
		var exists *types.BucketAlreadyExists
		if errors.As(err, &owned) || errors.As(err, &exists) {
			return nil
		}
		return fmt.Errorf("create bucket %q: %w", bucket, err)
	}
	return nil
}
