package modelcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/genfleet/genfleet/internal/s3x"
)

// Source is the cache's boundary to S3. It is small so that tests can wrap
// the real one to count calls or inject faults.
type Source interface {
	// Head returns the object's size and ETag. A missing bucket or object
	// yields an error wrapping ErrNotFound.
	Head(ctx context.Context, bucket, key string) (ObjectInfo, error)
	// Get streams the object. When ifMatchETag is not empty the request is
	// pinned to that ETag (If-Match), and an object replaced since yields an
	// error wrapping ErrChanged, so bytes of two versions never mix. A
	// missing object yields an error wrapping ErrNotFound.
	Get(ctx context.Context, bucket, key, ifMatchETag string) (io.ReadCloser, error)
	// GetRange streams the n bytes of the object that start at off (n > 0,
	// off+n within the object), pinned to ifMatchETag like Get. A server
	// that answers with other bytes than those asked for (ignoring Range)
	// yields an error rather than a body.
	GetRange(ctx context.Context, bucket, key, ifMatchETag string, off, n int64) (io.ReadCloser, error)
	// Put stores size bytes read from body at bucket/key, replacing any
	// object there atomically. body may be read more than once (it is rewound
	// with Seek), e.g. to sign the payload.
	Put(ctx context.Context, bucket, key string, body io.ReadSeeker, size int64) error
	// List returns the keys under prefix, in S3's (lexical) order.
	List(ctx context.Context, bucket, prefix string) ([]string, error)
}

// ObjectInfo is what Head reports about an object.
type ObjectInfo struct {
	Size int64
	// ETag as S3 returns it, quotes included; pass it back to Get unchanged.
	ETag string
}

// Uploads of at least multipartThreshold bytes go up in parts of
// defaultPartSize (S3 refuses a single PUT over 5 GiB, and model files are
// often larger).
const (
	multipartThreshold = 512 << 20
	defaultPartSize    = 64 << 20
	maxParts           = 10000
)

// s3Source is the Source backed by an S3 client.
type s3Source struct {
	c         *s3.Client
	threshold int64 // uploads of this size or more use multipart
	partSize  int64 // minimum part size of a multipart upload
}

var _ Source = (*s3Source)(nil)

// NewS3Source returns a Source that talks to S3 through c.
func NewS3Source(c *s3.Client) Source {
	return &s3Source{c: c, threshold: multipartThreshold, partSize: defaultPartSize}
}

func (s *s3Source) Head(ctx context.Context, bucket, key string) (ObjectInfo, error) {
	out, err := s.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return ObjectInfo{}, s3Error("head", bucket, key, err)
	}
	return ObjectInfo{Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag)}, nil
}

func (s *s3Source) Get(ctx context.Context, bucket, key, ifMatchETag string) (io.ReadCloser, error) {
	in := &s3.GetObjectInput{Bucket: &bucket, Key: &key}
	if ifMatchETag != "" {
		in.IfMatch = &ifMatchETag
	}
	out, err := s.c.GetObject(ctx, in)
	if err != nil {
		return nil, s3Error("get", bucket, key, err)
	}
	return out.Body, nil
}

func (s *s3Source) GetRange(ctx context.Context, bucket, key, ifMatchETag string, off, n int64) (io.ReadCloser, error) {
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("get %s: invalid range of %d bytes at %d", s3x.URL{Bucket: bucket, Key: key}, n, off)
	}
	rng := fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	in := &s3.GetObjectInput{Bucket: &bucket, Key: &key, Range: &rng}
	if ifMatchETag != "" {
		in.IfMatch = &ifMatchETag
	}
	out, err := s.c.GetObject(ctx, in)
	if err != nil {
		return nil, s3Error("get", bucket, key, err)
	}
	cr := aws.ToString(out.ContentRange)
	if aws.ToInt64(out.ContentLength) != n || !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-%d/", off, off+n-1)) {
		out.Body.Close()
		return nil, fmt.Errorf("get %s: asked for %s, got %d bytes with Content-Range %q",
			s3x.URL{Bucket: bucket, Key: key}, rng, aws.ToInt64(out.ContentLength), cr)
	}
	return out.Body, nil
}

func (s *s3Source) Put(ctx context.Context, bucket, key string, body io.ReadSeeker, size int64) error {
	if size >= s.threshold {
		return s.putMultipart(ctx, bucket, key, body, size)
	}
	_, err := s.c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &bucket, Key: &key, Body: body, ContentLength: &size,
	})
	if err != nil {
		return s3Error("put", bucket, key, err)
	}
	return nil
}

// putMultipart uploads body in parts, one at a time, and aborts the upload
// on any failure so that no parts are left behind to be billed.
func (s *s3Source) putMultipart(ctx context.Context, bucket, key string, body io.Reader, size int64) (err error) {
	partSize := max(s.partSize, (size+maxParts-1)/maxParts)
	up, err := s.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return s3Error("start multipart upload to", bucket, key, err)
	}
	defer func() {
		if err != nil {
			// The upload's own ctx may be what failed; aborting must still happen.
			_, _ = s.c.AbortMultipartUpload(context.WithoutCancel(ctx), &s3.AbortMultipartUploadInput{
				Bucket: &bucket, Key: &key, UploadId: up.UploadId,
			})
		}
	}()
	buf := make([]byte, partSize)
	var parts []types.CompletedPart
	for done, n := int64(0), int32(1); done < size; n++ {
		chunk := buf[:min(partSize, size-done)]
		if _, err := io.ReadFull(body, chunk); err != nil {
			return fmt.Errorf("put s3://%s/%s: read part %d: %w", bucket, key, n, err)
		}
		out, err := s.c.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: &bucket, Key: &key, UploadId: up.UploadId,
			PartNumber: aws.Int32(n), Body: bytes.NewReader(chunk), ContentLength: aws.Int64(int64(len(chunk))),
		})
		if err != nil {
			return s3Error(fmt.Sprintf("upload part %d of", n), bucket, key, err)
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n)})
		done += int64(len(chunk))
	}
	_, err = s.c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &bucket, Key: &key, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		return s3Error("complete multipart upload to", bucket, key, err)
	}
	return nil
}

func (s *s3Source) List(ctx context.Context, bucket, prefix string) ([]string, error) {
	var keys []string
	p := s3.NewListObjectsV2Paginator(s.c, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s3Error("list", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys, nil
}

// s3Error wraps an SDK error, adding ErrNotFound or ErrChanged where S3's
// answer means that.
func s3Error(op, bucket, key string, err error) error {
	u := s3x.URL{Bucket: bucket, Key: key}
	switch {
	case s3x.IsNotFound(err):
		return fmt.Errorf("%s %s: %w: %w", op, u, ErrNotFound, err)
	case isPreconditionFailed(err):
		return fmt.Errorf("%s %s: %w (ETag no longer matches): %w", op, u, ErrChanged, err)
	}
	return fmt.Errorf("%s %s: %w", op, u, err)
}

func isPreconditionFailed(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "PreconditionFailed" {
		return true
	}
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == 412
}
