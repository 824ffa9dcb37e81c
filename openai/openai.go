// Package openai serves OpenAI's images API on genfleet, so that clients
// written for it (the openai npm and Python packages, and the many tools
// built on them) generate with a fleet by changing their base URL:
//
//	POST /v1/images/generations   JSON: prompt, model, n, size, response_format, …
//	POST /v1/images/edits         multipart: image, mask, prompt, model, n, size, …
//
// Each request becomes one genfleet job (n images, seeds seed…seed+n-1),
// submitted through genfleet's own API (Config.API) so that it is checked,
// routed and recorded like any other; the handler waits for the job, as
// OpenAI's clients expect, and answers OpenAI's response shape with the
// images as base64 (b64_json, the default) or as URLs of genfleet's image
// endpoint (url). A job that is not done within the wait is answered 504
// with the job's id, and keeps running: the client can poll
// GET /v1/jobs/{id}. Errors have OpenAI's shape,
// {"error": {"message", "type", "param", "code"}}.
//
// The package knows nothing of Redis or S3: it speaks HTTP to the API
// handler it is given.
package openai

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/genfleet/genfleet/job"
)

// Config configures the handler. API is required.
type Config struct {
	// API is genfleet's API handler, reached in process and without
	// authentication (the caller authenticates requests to this package's
	// routes): jobs are submitted (POST /v1/jobs), uploads made
	// (POST /v1/uploads), jobs read (GET /v1/jobs/{id}) and images fetched
	// (GET /v1/jobs/{id}/images/{k}) through it.
	API http.Handler
	// DefaultModel is the genfleet model of a request that names none.
	// Default "": such a request is refused, naming "model".
	DefaultModel string
	// ModelAliases maps model names clients send (OpenAI's own, such as
	// "dall-e-3" or "gpt-image-1", which tools often send unasked) to the
	// genfleet models that run them. A name not in it is taken as a
	// genfleet model.
	ModelAliases map[string]string
	// Wait is how long a request waits for its job before it is answered
	// 504 (the job keeps running). A client may ask for less with the
	// X-Genfleet-Wait header (seconds or a Go duration); OpenAI's SDKs
	// send their own timeout in X-Stainless-Timeout (seconds), and the
	// handler answers a few seconds before it. Default 5 minutes.
	Wait time.Duration
	// Poll is how often a waiting request reads its job. Default 100ms.
	Poll time.Duration
	// MaxFormBytes bounds an edits request's multipart body. Default
	// 48 MiB.
	MaxFormBytes int64
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Handler serves the routes.
type Handler struct {
	cfg Config
	log *slog.Logger
}

// New returns the handler of cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.API == nil {
		return nil, errors.New("openai: Config.API is required")
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 5 * time.Minute
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 100 * time.Millisecond
	}
	if cfg.MaxFormBytes <= 0 {
		cfg.MaxFormBytes = 48 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Handler{cfg: cfg, log: cfg.Logger.With("api", "openai")}, nil
}

// Response formats of the images.
const (
	FormatB64 = "b64_json"
	FormatURL = "url"
)

// imagesResponse is OpenAI's ImagesResponse, plus the genfleet job's id.
type imagesResponse struct {
	Created      int64       `json:"created"`
	Data         []imageData `json:"data"`
	OutputFormat string      `json:"output_format"`
	Size         string      `json:"size"`
	Usage        usage       `json:"usage"`
	// JobID is the genfleet job that made the images (not in OpenAI's
	// shape; clients ignore it).
	JobID string `json:"job_id"`
}

type imageData struct {
	B64JSON       string `json:"b64_json,omitempty"`
	URL           string `json:"url,omitempty"`
	RevisedPrompt string `json:"revised_prompt,omitempty"`
}

// usage is OpenAI's token usage: genfleet counts none.
type usage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
	TotalTokens  int `json:"total_tokens"`
}

// apiError is the body of an error answer, in OpenAI's shape.
type apiError struct {
	Error errorBody `json:"error"`
}

type errorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
	// JobID names the genfleet job of a 504 or a failed job.
	JobID string `json:"job_id,omitempty"`
}

// Error types.
const (
	typeInvalid = "invalid_request_error"
	typeServer  = "server_error"
	typeTimeout = "timeout"
)

// fail answers code with an OpenAI error.
func fail(w http.ResponseWriter, code int, typ, param, errCode, msg string, jobID string) {
	b := errorBody{Message: msg, Type: typ, JobID: jobID}
	if param != "" {
		b.Param = &param
	}
	if errCode != "" {
		b.Code = &errCode
	}
	if code == http.StatusGatewayTimeout || jobID != "" {
		// A retry would submit the job again: it is still running (504),
		// or failed for a reason a retry does not mend.
		w.Header().Set("X-Should-Retry", "false")
	}
	writeJSON(w, code, apiError{Error: b})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// genfleetError turns an error answer of genfleet's API into an OpenAI one,
// mapping the field to the OpenAI parameter it came from.
func genfleetError(w http.ResponseWriter, res *response, params map[string]string) {
	var e struct{ Error, Field string }
	_ = json.Unmarshal(res.body, &e)
	if e.Error == "" {
		e.Error = strings.TrimSpace(string(res.body))
	}
	param := e.Field
	if p, ok := params[e.Field]; ok {
		param = p
	}
	typ, code := typeInvalid, ""
	switch {
	case res.code == http.StatusNotFound && (strings.HasPrefix(e.Field, "model") || strings.HasPrefix(e.Field, "loras")):
		code = "model_not_found"
	case res.code >= 500:
		typ = typeServer
	}
	if res.code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", res.header.Get("Retry-After"))
	}
	fail(w, res.code, typ, param, code, e.Error, "")
}

// response is an answer of the API handler.
type response struct {
	code   int
	header http.Header
	body   []byte
}

// recorder is a ResponseWriter that keeps what is written to it.
type recorder struct {
	code   int
	header http.Header
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}

// call sends a request to the API handler in process.
func (h *Handler) call(ctx context.Context, method, path string, body []byte, header http.Header) (*response, error) {
	req, err := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.RequestURI = path
	for k, v := range header {
		req.Header[k] = v
	}
	rec := &recorder{header: http.Header{}}
	h.cfg.API.ServeHTTP(rec, req)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return &response{code: rec.code, header: rec.header, body: rec.body.Bytes()}, nil
}

// parseSize reads OpenAI's "WxH"; "" and "auto" give 0, 0.
func parseSize(s string) (int, int, error) {
	if s == "" || s == "auto" {
		return 0, 0, nil
	}
	ws, hs, ok := strings.Cut(s, "x")
	w, err1 := strconv.Atoi(ws)
	h, err2 := strconv.Atoi(hs)
	if !ok || err1 != nil || err2 != nil || w <= 0 || h <= 0 {
		return 0, 0, fmt.Errorf("size %q: want WIDTHxHEIGHT, e.g. 512x512, or auto", s)
	}
	return w, h, nil
}

// waitFor returns how long r may wait for its job.
func (h *Handler) waitFor(r *http.Request) time.Duration {
	d := h.cfg.Wait
	if v := r.Header.Get("X-Genfleet-Wait"); v != "" {
		if x, err := time.ParseDuration(v); err == nil && x > 0 {
			d = min(d, x)
		} else if s, err := strconv.ParseFloat(v, 64); err == nil && s > 0 {
			d = min(d, time.Duration(s*float64(time.Second)))
		}
	}
	if v := r.Header.Get("X-Stainless-Timeout"); v != "" {
		// Answer before the client gives up: a client that times out
		// retries, which would submit the job again.
		if s, err := strconv.ParseFloat(v, 64); err == nil && s > 0 {
			margin := min(5*time.Second, time.Duration(s*float64(time.Second))/5)
			d = min(d, time.Duration(s*float64(time.Second))-margin)
		}
	}
	return d
}

// run submits req as a job, waits for it and answers with its images in
// format. params maps genfleet's field names to the OpenAI parameters
// they came from, for error messages.
func (h *Handler) run(w http.ResponseWriter, r *http.Request, req *job.Request, format string, params map[string]string) {
	body, err := json.Marshal(req)
	if err != nil {
		fail(w, http.StatusBadRequest, typeInvalid, "", "", err.Error(), "")
		return
	}
	hdr := http.Header{"Content-Type": {"application/json"}}
	if k := r.Header.Get("Idempotency-Key"); k != "" {
		hdr.Set("Idempotency-Key", k)
	}
	ctx := r.Context()
	res, err := h.call(ctx, http.MethodPost, "/v1/jobs", body, hdr)
	if err != nil {
		fail(w, http.StatusInternalServerError, typeServer, "", "", err.Error(), "")
		return
	}
	if res.code != http.StatusAccepted {
		genfleetError(w, res, params)
		return
	}
	var created struct{ ID string }
	if err := json.Unmarshal(res.body, &created); err != nil || created.ID == "" {
		fail(w, http.StatusInternalServerError, typeServer, "", "", "the API's answer to the submit has no job id", "")
		return
	}
	id := created.ID
	w.Header().Set("X-Genfleet-Job", id)
	wait := h.waitFor(r)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	var rec job.Record
	for {
		res, err := h.call(ctx, http.MethodGet, "/v1/jobs/"+id, nil, nil)
		if err == nil && res.code == http.StatusOK {
			rec = job.Record{}
			if json.Unmarshal(res.body, &rec) == nil && rec.Status.Terminal() {
				break
			}
		}
		select {
		case <-ctx.Done():
			h.log.Info("client went away; the job keeps running", "job", id)
			return
		case <-deadline.C:
			fail(w, http.StatusGatewayTimeout, typeTimeout, "", "timeout",
				fmt.Sprintf("job %s did not finish within %v; it keeps running: poll GET /v1/jobs/%s and fetch its images from GET /v1/jobs/%s/images/{k}", id, wait, id, id), id)
			return
		case <-time.After(h.cfg.Poll):
		}
	}
	if rec.Status != job.StatusSucceeded {
		fail(w, http.StatusInternalServerError, typeServer, "", "job_"+string(rec.Status), fmt.Sprintf("job %s %s: %s", id, rec.Status, rec.Error), id)
		return
	}
	out := imagesResponse{Created: time.Now().Unix(), OutputFormat: job.FormatPNG, JobID: id,
		Size: fmt.Sprintf("%dx%d", req.Width, req.Height)}
	n := max(len(rec.Outputs), 1)
	for k := range n {
		d := imageData{}
		switch format {
		case FormatURL:
			d.URL = fmt.Sprintf("%s/v1/jobs/%s/images/%d", baseURL(r), id, k)
		default:
			res, err := h.call(ctx, http.MethodGet, fmt.Sprintf("/v1/jobs/%s/images/%d", id, k), nil, nil)
			if err != nil || res.code != http.StatusOK {
				msg := "read the image"
				if res != nil {
					msg = string(res.body)
				}
				fail(w, http.StatusBadGateway, typeServer, "", "", fmt.Sprintf("job %s: image %d: %s", id, k, msg), id)
				return
			}
			d.B64JSON = base64.StdEncoding.EncodeToString(res.body)
		}
		out.Data = append(out.Data, d)
	}
	writeJSON(w, http.StatusOK, out)
}

// baseURL is the scheme and host the client reached this server by.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	host := r.Host
	if fh := r.Header.Get("X-Forwarded-Host"); fh != "" {
		host = fh
	}
	return scheme + "://" + host
}
