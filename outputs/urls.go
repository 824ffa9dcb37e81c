// Package outputs is what genfleet does with the images workers leave in
// the outputs bucket, besides serving them through the API: the URLs a
// job's status hands to clients (a presigned S3 GET, or the API's own
// image URL), and the retention sweep that deletes images older than the
// retention, for servers without S3 lifecycle rules (docs/jobs.md, "Image
// URLs and retention").
package outputs

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/defaults"
)

// URL modes (Config.Mode).
const (
	// ModePresigned hands out a presigned S3 GET of the image, valid for
	// Config.Expiry: clients fetch the bytes from S3, not through the API.
	ModePresigned = "presigned"
	// ModeAPI hands out the API's own image URLs
	// (<base>/v1/jobs/{id}/image, <base>/v1/jobs/{id}/images/{k}), for an
	// S3 that clients cannot reach.
	// It asks for the API's authentication like every other API URL.
	ModeAPI = "api"
	// ModeNone hands out no URL.
	ModeNone = "none"
)

// DefaultExpiry is how long a presigned URL is valid unless configured.
const DefaultExpiry = time.Hour

// MaxExpiry is the longest validity S3's signature (SigV4) allows.
const MaxExpiry = 7 * 24 * time.Hour

// Config configures URLs.
type Config struct {
	// Mode is ModePresigned (the default), ModeAPI or ModeNone.
	Mode string
	// S3 signs presigned URLs. It must be configured with the endpoint
	// clients reach S3 at, which may differ from the one the scheduler
	// uses (the signature covers the host). Required for ModePresigned.
	S3 *s3.Client
	// Expiry is how long a presigned URL is valid. Default DefaultExpiry,
	// at most MaxExpiry.
	Expiry time.Duration
	// PublicURL is the API's base URL as clients reach it
	// ("https://images.example.com"), for ModeAPI; empty: each caller
	// gives the base it knows (the request's), or none (a path).
	PublicURL string
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// URLs makes the image URLs of finished jobs.
type URLs struct {
	cfg     Config
	presign *s3.PresignClient
}

// NewURLs checks cfg and returns URLs.
func NewURLs(cfg Config) (*URLs, error) {
	defaults.Zero(&cfg.Mode, ModePresigned)
	defaults.Positive(&cfg.Expiry, DefaultExpiry)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	u := &URLs{cfg: cfg}
	switch cfg.Mode {
	case ModePresigned:
		if cfg.S3 == nil {
			return nil, errors.New("outputs: presigned image URLs need an S3 client")
		}
		if cfg.Expiry > MaxExpiry {
			return nil, fmt.Errorf("outputs: image URL expiry %v is longer than S3 allows for a presigned URL (%v)", cfg.Expiry, MaxExpiry)
		}
		u.presign = s3.NewPresignClient(cfg.S3, s3.WithPresignExpires(cfg.Expiry))
	case ModeAPI, ModeNone:
	default:
		return nil, fmt.Errorf("outputs: image URL mode %q: want %s, %s or %s", cfg.Mode, ModePresigned, ModeAPI, ModeNone)
	}
	if cfg.PublicURL != "" {
		p, err := url.Parse(cfg.PublicURL)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return nil, fmt.Errorf("outputs: public URL %q is not an http(s) URL", cfg.PublicURL)
		}
		u.cfg.PublicURL = strings.TrimSuffix(cfg.PublicURL, "/")
	}
	return u, nil
}

// Mode is the configured mode.
func (u *URLs) Mode() string { return u.cfg.Mode }

// Image returns the URL of image k (0-based) of job id, stored at
// bucket/key, and, for a presigned URL, when it stops working. In ModeAPI
// it is <base>/v1/jobs/{id}/image for the first image and
// <base>/v1/jobs/{id}/images/{k} for the others; base is the API's base URL
// as the caller's client reached it (used when no PublicURL is configured;
// empty gives a path). It returns "" in ModeNone.
func (u *URLs) Image(ctx context.Context, id string, k int, bucket, key, base string) (string, time.Time, error) {
	switch u.cfg.Mode {
	case ModePresigned:
		expires := u.cfg.Now().Add(u.cfg.Expiry).UTC().Truncate(time.Second)
		req, err := u.presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if err != nil {
			return "", time.Time{}, fmt.Errorf("presign s3://%s/%s: %w", bucket, key, err)
		}
		return req.URL, expires, nil
	case ModeAPI:
		if u.cfg.PublicURL != "" {
			base = u.cfg.PublicURL
		}
		path := "/image"
		if k > 0 {
			path = "/images/" + strconv.Itoa(k)
		}
		return strings.TrimSuffix(base, "/") + "/v1/jobs/" + url.PathEscape(id) + path, time.Time{}, nil
	}
	return "", time.Time{}, nil
}
