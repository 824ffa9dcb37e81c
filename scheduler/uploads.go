package scheduler

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/uploads"
)

// createUpload is POST /v1/uploads: the body is the image itself (PNG or
// JPEG), or multipart/form-data whose first file part is. The image is
// checked (uploads.Decode) and stored under its digest; the answer is 201
// with {"ref","width","height","format","bytes"}. A body over the limit
// gets 413, one that is not a usable image 400, both naming "image".
func (s *Server) createUpload(w http.ResponseWriter, r *http.Request) {
	data, err := s.readUpload(w, r)
	if err == nil {
		var info uploads.Info
		if info, _, err = s.uploads.Put(r.Context(), data); err == nil {
			w.Header().Set("Location", "/v1/uploads/"+info.Ref)
			writeJSON(w, http.StatusCreated, info)
			return
		}
	}
	var fe *job.FieldError
	switch {
	case errors.Is(err, uploads.ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err)
	case errors.Is(err, uploads.ErrNoStore):
		writeError(w, http.StatusServiceUnavailable, err)
	case errors.As(err, &fe):
		writeError(w, http.StatusBadRequest, err)
	default:
		writeError(w, http.StatusBadGateway, fmt.Errorf("store the upload: %w", err))
	}
}

// readUpload reads the image of an upload request, at most the store's
// limit.
func (s *Server) readUpload(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := s.uploads.MaxBytes
	if limit <= 0 {
		limit = uploads.DefaultMaxBytes
	}
	// Room for a multipart envelope; the image itself is held to limit.
	r.Body = http.MaxBytesReader(w, r.Body, limit+64<<10)
	tooLarge := func(err error) error {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return fmt.Errorf("%w: %w", uploads.ErrTooLarge, &job.FieldError{Field: "image", Message: fmt.Sprintf("is larger than %d bytes", limit)})
		}
		return err
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "multipart/form-data" {
		data, err := s.uploads.ReadLimited("image", r.Body)
		return data, tooLarge(err)
	}
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, &job.FieldError{Field: "image", Message: "multipart body: " + err.Error()}
	}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, &job.FieldError{Field: "image", Message: "the multipart body has no file part; send the image as a file (e.g. curl -F image=@in.png)"}
		}
		if err != nil {
			return nil, tooLarge(fmt.Errorf("%w", &job.FieldError{Field: "image", Message: "multipart body: " + err.Error()}))
		}
		if part.FileName() == "" {
			part.Close()
			continue
		}
		data, err := s.uploads.ReadLimited("image", part)
		part.Close()
		return data, tooLarge(err)
	}
}

// getImageK is GET /v1/jobs/{id}/images/{k}: image k (0-based) of a
// finished job.
func (s *Server) getImageK(w http.ResponseWriter, r *http.Request) {
	k, err := strconv.Atoi(r.PathValue("k"))
	if err != nil || k < 0 || k >= job.MaxN {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("image index %q: want 0..%d", r.PathValue("k"), job.MaxN-1), Field: "k"})
		return
	}
	s.serveImage(w, r, r.PathValue("id"), k)
}

// serveImage answers image k of job id from the outputs bucket: 404 until
// the job succeeded, or for a k beyond its images.
func (s *Server) serveImage(w http.ResponseWriter, r *http.Request, id string, k int) {
	rec := s.lookupFor(w, r, id)
	if rec == nil {
		return
	}
	if rec.Status != job.StatusSucceeded || rec.Result == nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("job %q has no image yet (status %s)", id, rec.Status))
		return
	}
	out := rec.Result
	switch {
	case k < len(rec.Outputs):
		out = &rec.Outputs[k]
	case k > 0:
		n := max(len(rec.Outputs), 1)
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("job %q has %d image(s), 0..%d", id, n, n-1), Field: "k"})
		return
	}
	obj, err := s.cfg.S3.GetObject(r.Context(), &s3.GetObjectInput{Bucket: aws.String(out.Bucket), Key: aws.String(out.Key)})
	if err != nil {
		if s3x.IsNotFound(err) {
			writeError(w, http.StatusNotFound, fmt.Errorf("image of job %q is gone from %s", id, out.URL))
			return
		}
		writeError(w, http.StatusBadGateway, fmt.Errorf("read image from %s: %w", out.URL, err))
		return
	}
	defer obj.Body.Close()
	ct := out.ContentType
	if !strings.HasPrefix(ct, "image/") {
		ct = "image/png"
	}
	w.Header().Set("Content-Type", ct)
	if obj.ContentLength != nil {
		w.Header().Set("Content-Length", strconv.FormatInt(*obj.ContentLength, 10))
	}
	if _, err := io.Copy(w, obj.Body); err != nil {
		s.log.Warn("image copy interrupted", "job", id, "err", err)
	}
}
