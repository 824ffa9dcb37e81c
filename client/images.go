package client

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
)

// Image returns image k (0-based) of job id, a PNG (GET
// /v1/jobs/{id}/images/{k}); the caller reads and closes it. Until the job
// has succeeded, for a k beyond its images and once the images are older
// than the scheduler's output retention, the error is an *Error with
// status 404.
func (c *Client) Image(ctx context.Context, id string, k int) (io.ReadCloser, error) {
	return c.get(ctx, jobPath(id)+"/images/"+strconv.Itoa(k))
}

// Thumbnail returns job id's first image scaled down to width pixels wide
// (GET /v1/jobs/{id}/thumbnail?w=width; 0 means the API's default, 256), a
// PNG the caller reads and closes.
func (c *Client) Thumbnail(ctx context.Context, id string, width int) (io.ReadCloser, error) {
	path := jobPath(id) + "/thumbnail"
	if width > 0 {
		path += "?w=" + strconv.Itoa(width)
	}
	return c.get(ctx, path)
}

// get returns the body of a 200 answer to GET path.
func (c *Client) get(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Upload is the API's answer to an upload: the ref a job names the image
// by (its init_image or mask) and what the API found the image to be.
type Upload struct {
	// Ref is "upload:sha256:<hex>".
	Ref    string `json:"ref"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	// Format is "png" or "jpeg".
	Format string `json:"format"`
	Bytes  int    `json:"bytes"`
}

// Upload uploads image, the bytes of a PNG or JPEG file, as an input
// image of jobs (POST /v1/uploads). The API stores it under its sha256,
// so uploading the same bytes again gives the same ref. An image the API
// cannot use is an *Error with status 400 and Field "image"; one over the
// scheduler's --max-upload-size, status 413.
func (c *Client) Upload(ctx context.Context, image []byte) (*Upload, error) {
	req, err := c.newRequest(ctx, http.MethodPost, "/v1/uploads", bytes.NewReader(image))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	var u Upload
	if err := c.decode(req, &u, http.StatusCreated); err != nil {
		return nil, err
	}
	return &u, nil
}
