package scheduler

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
)

// Limits of GET /v1/jobs/{id}/thumbnail.
const (
	thumbDefault = 256 // width without ?w=
	thumbMin     = 16
	thumbMax     = 1024
	// thumbMaxInput bounds the output read from S3 and its pixel count:
	// outputs are at most 2048×2048 (job.Request's limits).
	thumbMaxInput  = 64 << 20
	thumbMaxPixels = 4096 * 4096
)

// getThumbnail answers GET /v1/jobs/{id}/thumbnail?w=N: the job's image
// scaled down to N pixels wide (default 256, 16..1024, never up), as PNG,
// made on request from the output in S3. An output never changes once
// written, so the answer carries an ETag made from the output's sha256 and
// the width, answers a matching If-None-Match with 304, and may be cached
// for a day.
func (s *Server) getThumbnail(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	width := thumbDefault
	if v := r.URL.Query().Get("w"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < thumbMin || n > thumbMax {
			writeError(w, http.StatusBadRequest, &job.FieldError{Field: "w", Message: fmt.Sprintf("%q is not a width from %d to %d", v, thumbMin, thumbMax)})
			return
		}
		width = n
	}
	rec := s.lookupFor(w, r, id)
	switch {
	case rec == nil:
		return
	case rec.Status != job.StatusSucceeded || rec.Result == nil:
		writeError(w, http.StatusNotFound, fmt.Errorf("job %q has no image yet (status %s)", id, rec.Status))
		return
	}
	out := rec.Result
	etag := ""
	if out.SHA256 != "" {
		etag = `"` + strings.TrimPrefix(out.SHA256, "sha256:") + "-w" + strconv.Itoa(width) + `"`
		w.Header().Set("ETag", etag)
		w.Header().Set("Cache-Control", "private, max-age=86400")
		if match := r.Header.Get("If-None-Match"); match != "" && etagMatches(match, etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	obj, err := s.cfg.S3.GetObject(r.Context(), &s3.GetObjectInput{Bucket: aws.String(out.Bucket), Key: aws.String(out.Key)})
	if err != nil {
		w.Header().Del("ETag")
		if s3x.IsNotFound(err) {
			writeError(w, http.StatusNotFound, fmt.Errorf("image of job %q is gone from %s", id, out.URL))
			return
		}
		writeError(w, http.StatusBadGateway, fmt.Errorf("read image from %s: %w", out.URL, err))
		return
	}
	defer obj.Body.Close()
	thumb, err := thumbnail(io.LimitReader(obj.Body, thumbMaxInput), width)
	if err != nil {
		w.Header().Del("ETag")
		w.Header().Del("Cache-Control")
		writeError(w, http.StatusBadGateway, fmt.Errorf("image of job %q at %s: %w", id, out.URL, err))
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Content-Length", strconv.Itoa(len(thumb)))
	_, _ = w.Write(thumb)
}

// etagMatches reports whether an If-None-Match header value names etag
// (or is "*").
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// thumbnail decodes the PNG in r and encodes it again at most width
// pixels wide, keeping its aspect ratio; each pixel of the result is the
// mean of the source pixels it covers (a box filter, which is what
// downscaling by a large factor needs to avoid aliasing).
func thumbnail(r io.Reader, width int) ([]byte, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not a PNG: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > thumbMaxPixels {
		return nil, fmt.Errorf("a %d×%d PNG is not one genfleet makes", cfg.Width, cfg.Height)
	}
	src, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not a PNG: %w", err)
	}
	dst := boxScale(src, width)
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, dst); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// boxScale returns src scaled to width pixels wide (not more than src's
// own width) with a box filter.
func boxScale(src image.Image, width int) *image.NRGBA {
	b := src.Bounds()
	sw, sh := b.Dx(), b.Dy()
	dw := min(width, sw)
	dh := max(1, (sh*dw+sw/2)/sw)
	dst := image.NewNRGBA(image.Rect(0, 0, dw, dh))
	for y := range dh {
		y0, y1 := b.Min.Y+y*sh/dh, b.Min.Y+(y+1)*sh/dh
		for x := range dw {
			x0, x1 := b.Min.X+x*sw/dw, b.Min.X+(x+1)*sw/dw
			var r, g, bl, a, n uint64
			for sy := y0; sy < y1; sy++ {
				for sx := x0; sx < x1; sx++ {
					c := color.NRGBA64Model.Convert(src.At(sx, sy)).(color.NRGBA64)
					r, g, bl, a = r+uint64(c.R), g+uint64(c.G), bl+uint64(c.B), a+uint64(c.A)
					n++
				}
			}
			if n == 0 {
				continue
			}
			dst.SetNRGBA(x, y, color.NRGBA{R: uint8(r / n >> 8), G: uint8(g / n >> 8), B: uint8(bl / n >> 8), A: uint8(a / n >> 8)})
		}
	}
	return dst
}
