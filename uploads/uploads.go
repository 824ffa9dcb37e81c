// Package uploads holds the input images of jobs, their init images and
// masks. POST /v1/uploads stores an image in S3 under the sha256 of its
// bytes (content-addressed, like the model cache's blobs) and answers its
// ref, "upload:sha256:<hex>"; a job names an input image by such a ref or
// by an s3://bucket/key. The scheduler checks a job's images with Load
// before it accepts the job (they exist, decode, are PNG or JPEG of the
// job's size, the mask the init image's size); the worker loads them again
// for the backend, since a producer may enqueue straight into Redis.
//
// Errors that retrying cannot mend (a missing object, bytes that are not
// an image, a wrong size) are *job.FieldError values naming the job's
// field; others (S3 unreachable) are not, and may pass.
package uploads

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // the formats an input image may have
	_ "image/png"
	"io"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
)

// DefaultMaxBytes is the largest image file the store takes by default.
const DefaultMaxBytes = 16 << 20

// Store is where uploaded images live: Root.Key + "sha256-<hex>" in
// Root.Bucket.
type Store struct {
	S3 *s3.Client
	// Root is the bucket and key prefix of uploads, e.g.
	// s3://genfleet-outputs/uploads/.
	Root s3x.URL
	// MaxBytes limits an image file, uploaded or read. Default
	// DefaultMaxBytes.
	MaxBytes int64
}

// Image is an input image, read and checked.
type Image struct {
	// Data is the file; Format "png" or "jpeg".
	Data   []byte
	Format string
	// SHA256 is the hex sha256 of Data.
	SHA256 string
	// Image is Data decoded.
	Image image.Image
}

// Width and Height are the image's size.
func (im *Image) Width() int  { return im.Image.Bounds().Dx() }
func (im *Image) Height() int { return im.Image.Bounds().Dy() }

// Ref is the upload ref of the image's bytes.
func (im *Image) Ref() string { return job.UploadRef(im.SHA256) }

// Info is the answer to an upload.
type Info struct {
	Ref    string `json:"ref"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	Format string `json:"format"`
	Bytes  int    `json:"bytes"`
}

var (
	// ErrTooLarge is wrapped by the error for an image file over MaxBytes.
	ErrTooLarge = errors.New("image file too large")
	// ErrNoStore means the store has no Root bucket: uploads are off.
	ErrNoStore = errors.New("no uploads location configured (--uploads)")
)

func (s *Store) maxBytes() int64 {
	if s.MaxBytes > 0 {
		return s.MaxBytes
	}
	return DefaultMaxBytes
}

// key is the object key of the upload whose bytes hash to hex.
func (s *Store) key(hex string) string {
	p := s.Root.Key
	if p != "" && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p + "sha256-" + hex
}

// Decode checks that data, the value of field, is a PNG or JPEG whose size
// a job may have (job.MinSize..job.MaxSize, multiples of job.SizeMultiple)
// and decodes it. It reads the header before decoding, so a file that
// claims a huge size is refused without allocating for it. Errors are
// *job.FieldError on field.
func Decode(field string, data []byte) (*Image, error) {
	format := sniff(data)
	if format == "" {
		return nil, &job.FieldError{Field: field, Message: "is not a PNG or JPEG image"}
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("is not a readable %s image: %v", strings.ToUpper(format), err)}
	}
	for _, d := range [...]struct {
		what string
		v    int
	}{{"width", cfg.Width}, {"height", cfg.Height}} {
		if d.v < job.MinSize || d.v > job.MaxSize || d.v%job.SizeMultiple != 0 {
			return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("is %dx%d; an image's %s must be %d..%d and a multiple of %d, as a job's",
				cfg.Width, cfg.Height, d.what, job.MinSize, job.MaxSize, job.SizeMultiple)}
		}
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("is not a readable %s image: %v", strings.ToUpper(format), err)}
	}
	sum := sha256.Sum256(data)
	return &Image{Data: data, Format: format, SHA256: hex.EncodeToString(sum[:]), Image: img}, nil
}

// sniff names the format from the magic bytes: "png", "jpeg" or "".
func sniff(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return "png"
	case bytes.HasPrefix(b, []byte("\xff\xd8\xff")):
		return "jpeg"
	}
	return ""
}

// ReadLimited reads r, refusing more than s's MaxBytes with an error
// wrapping ErrTooLarge that names field.
func (s *Store) ReadLimited(field string, r io.Reader) ([]byte, error) {
	limit := s.maxBytes()
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: %w", ErrTooLarge, &job.FieldError{Field: field, Message: fmt.Sprintf("is larger than %d bytes", limit)})
	}
	return data, nil
}

// Put checks data (Decode, field "image") and stores it under its digest,
// unless an object is there already (same key, same bytes). It returns
// what the upload answers.
func (s *Store) Put(ctx context.Context, data []byte) (Info, *Image, error) {
	if s.Root.Bucket == "" {
		return Info{}, nil, ErrNoStore
	}
	if int64(len(data)) > s.maxBytes() {
		return Info{}, nil, fmt.Errorf("%w: %w", ErrTooLarge, &job.FieldError{Field: "image", Message: fmt.Sprintf("is larger than %d bytes", s.maxBytes())})
	}
	img, err := Decode("image", data)
	if err != nil {
		return Info{}, nil, err
	}
	key := s.key(img.SHA256)
	if _, err := s3x.Head(ctx, s.S3, s3x.URL{Bucket: s.Root.Bucket, Key: key}); err != nil {
		if !s3x.IsNotFound(err) {
			return Info{}, nil, fmt.Errorf("check s3://%s/%s: %w", s.Root.Bucket, key, err)
		}
		_, err := s.S3.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(s.Root.Bucket), Key: aws.String(key),
			Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
			ContentType: aws.String("image/" + img.Format),
		})
		if err != nil {
			return Info{}, nil, fmt.Errorf("store upload at s3://%s/%s: %w", s.Root.Bucket, key, err)
		}
	}
	return Info{Ref: img.Ref(), Width: img.Width(), Height: img.Height(), Format: img.Format, Bytes: len(data)}, img, nil
}

// Load reads and decodes the image ref names, the value of field: an
// upload ref (whose bytes must still hash to it) or an s3:// ref.
func (s *Store) Load(ctx context.Context, field, ref string) (*Image, error) {
	if err := job.ValidateImageRef(field, ref); err != nil {
		return nil, err
	}
	u := s3x.URL{Bucket: s.Root.Bucket}
	want, isUpload := job.UploadDigest(ref)
	if isUpload && s.Root.Bucket == "" {
		return nil, &job.FieldError{Field: field, Message: "this fleet has no uploads location configured (--uploads), so upload refs cannot be read; use an s3:// ref"}
	}
	if isUpload {
		u.Key = s.key(want)
	} else {
		var err error
		if u, err = s3x.ParseURL(ref); err != nil {
			return nil, &job.FieldError{Field: field, Message: err.Error()}
		}
	}
	out, err := s.S3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(u.Bucket), Key: aws.String(u.Key)})
	if s3x.IsNotFound(err) {
		if isUpload {
			return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("no upload %s (upload the image with POST /v1/uploads first)", ref)}
		}
		return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("no object at %s", u)}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", field, u, err)
	}
	defer out.Body.Close()
	data, err := s.ReadLimited(field, out.Body)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("%s: read %s: %w", field, u, err)
	}
	img, err := Decode(field, data)
	if err != nil {
		return nil, err
	}
	if isUpload && img.SHA256 != want {
		return nil, &job.FieldError{Field: field, Message: fmt.Sprintf("the bytes at %s hash to sha256:%s, not to the ref; upload the image again", u, img.SHA256)}
	}
	return img, nil
}

// LoadJob loads and checks req's init image and mask: each must be of the
// job's width and height (the mask so of the init image's). It returns
// nil images for a request without them.
func (s *Store) LoadJob(ctx context.Context, req *job.Request) (init, mask *Image, err error) {
	if req.InitImage == "" {
		return nil, nil, nil
	}
	if init, err = s.Load(ctx, "init_image", req.InitImage); err != nil {
		return nil, nil, err
	}
	if init.Width() != req.Width || init.Height() != req.Height {
		return nil, nil, &job.FieldError{Field: "init_image", Message: fmt.Sprintf("is %dx%d, the job asks for %dx%d; set width and height to the image's size",
			init.Width(), init.Height(), req.Width, req.Height)}
	}
	if req.Mask == "" {
		return init, nil, nil
	}
	if mask, err = s.Load(ctx, "mask", req.Mask); err != nil {
		return nil, nil, err
	}
	if mask.Width() != init.Width() || mask.Height() != init.Height() {
		return nil, nil, &job.FieldError{Field: "mask", Message: fmt.Sprintf("is %dx%d, the init image is %dx%d; a mask must be the init image's size",
			mask.Width(), mask.Height(), init.Width(), init.Height())}
	}
	return init, mask, nil
}
