package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"

	"github.com/genfleet/genfleet/job"
)

// generationRequest is the body of POST /v1/images/generations: OpenAI's
// parameters, those genfleet has no use for taken and ignored, and
// genfleet's own (seed, steps, …) for clients that can send extra fields.
type generationRequest struct {
	Prompt         string `json:"prompt"`
	Model          string `json:"model"`
	N              *int   `json:"n"`
	Size           string `json:"size"`
	ResponseFormat string `json:"response_format"`
	OutputFormat   string `json:"output_format"`
	Stream         bool   `json:"stream"`
	// Taken and ignored: OpenAI's models' knobs that genfleet's engines
	// do not have.
	Quality           string `json:"quality"`
	Style             string `json:"style"`
	Background        string `json:"background"`
	Moderation        string `json:"moderation"`
	OutputCompression *int   `json:"output_compression"`
	PartialImages     *int   `json:"partial_images"`
	User              string `json:"user"`
	extensions
}

// extensions are genfleet's parameters beyond OpenAI's.
type extensions struct {
	NegativePrompt string         `json:"negative_prompt"`
	Seed           *int64         `json:"seed"`
	Steps          *int           `json:"steps"`
	Guidance       *float64       `json:"guidance"`
	SamplingMethod string         `json:"sampling_method"`
	Scheduler      string         `json:"scheduler"`
	LoRAs          []job.LoRA     `json:"loras"`
	Options        map[string]any `json:"options"`
}

// genfleetParams maps genfleet's fields to the OpenAI parameters they come
// from, for error messages.
var genfleetParams = map[string]string{"width": "size", "height": "size", "init_image": "image"}

// Generations is POST /v1/images/generations.
func (h *Handler) Generations(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	var gr generationRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&gr); err != nil {
		param := ""
		msg := "the request body is not the JSON of an image generation: " + err.Error()
		if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			param = strings.Trim(name, `"`)
			msg = "Unrecognized request argument supplied: " + param
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			param = te.Field
		}
		fail(w, http.StatusBadRequest, typeInvalid, param, "", msg, "")
		return
	}
	format, ok := h.checkCommon(w, gr.ResponseFormat, gr.OutputFormat, gr.Stream)
	if !ok {
		return
	}
	req, ok := h.request(w, gr.Model, gr.Prompt, gr.N, gr.Size, gr.extensions)
	if !ok {
		return
	}
	h.run(w, r, req, format, genfleetParams)
}

// checkCommon checks the parameters the two routes share and returns the
// response format.
func (h *Handler) checkCommon(w http.ResponseWriter, responseFormat, outputFormat string, stream bool) (string, bool) {
	switch {
	case stream:
		fail(w, http.StatusBadRequest, typeInvalid, "stream", "", "streaming is not supported: genfleet answers once the images are made", "")
		return "", false
	case outputFormat != "" && outputFormat != job.FormatPNG:
		fail(w, http.StatusBadRequest, typeInvalid, "output_format", "", fmt.Sprintf("output_format %q: genfleet makes png only", outputFormat), "")
		return "", false
	}
	switch responseFormat {
	case "", FormatB64:
		return FormatB64, true
	case FormatURL:
		return FormatURL, true
	}
	fail(w, http.StatusBadRequest, typeInvalid, "response_format", "", fmt.Sprintf("response_format %q: want %s or %s", responseFormat, FormatB64, FormatURL), "")
	return "", false
}

// request maps OpenAI's parameters and genfleet's extensions to a job
// request with its defaults; genfleet's API validates it. A request
// without a seed gets a random one, as OpenAI's images differ from call to
// call.
func (h *Handler) request(w http.ResponseWriter, model, prompt string, n *int, size string, x extensions) (*job.Request, bool) {
	if model == "" {
		model = h.cfg.DefaultModel
	}
	if m, ok := h.cfg.ModelAliases[model]; ok {
		model = m
	}
	if model == "" {
		fail(w, http.StatusBadRequest, typeInvalid, "model", "", "model is required: name a genfleet model (GET /v1/models lists them)", "")
		return nil, false
	}
	width, height, err := parseSize(size)
	if err != nil {
		fail(w, http.StatusBadRequest, typeInvalid, "size", "", err.Error(), "")
		return nil, false
	}
	req := job.Request{Model: model, Prompt: prompt, NegativePrompt: x.NegativePrompt, Width: width, Height: height,
		SamplingMethod: x.SamplingMethod, Scheduler: x.Scheduler, LoRAs: x.LoRAs, Options: x.Options}
	if n != nil {
		if *n < 1 || *n > job.MaxN {
			fail(w, http.StatusBadRequest, typeInvalid, "n", "", fmt.Sprintf("n must be between 1 and %d, got %d", job.MaxN, *n), "")
			return nil, false
		}
		req.N = job.Count(*n)
	}
	req.Seed = rand.Int64N(1 << 53)
	if x.Seed != nil {
		req.Seed = *x.Seed
	}
	req.ApplyDefaults()
	// Given values are kept as they are, 0 included, for the API to judge.
	if x.Steps != nil {
		req.Steps = *x.Steps
	}
	if x.Guidance != nil {
		req.Guidance = *x.Guidance
	}
	return &req, true
}

// postUpload uploads an input image through the API and returns its ref,
// width and height; on failure it has answered, naming param.
func (h *Handler) postUpload(w http.ResponseWriter, r *http.Request, data []byte, param string) (string, int, int, bool) {
	res, err := h.call(r.Context(), http.MethodPost, "/v1/uploads", data, http.Header{"Content-Type": {"application/octet-stream"}})
	if err != nil {
		fail(w, http.StatusInternalServerError, typeServer, param, "", err.Error(), "")
		return "", 0, 0, false
	}
	if res.code != http.StatusCreated {
		genfleetError(w, res, map[string]string{"image": param})
		return "", 0, 0, false
	}
	var info struct {
		Ref           string
		Width, Height int
	}
	if err := json.NewDecoder(bytes.NewReader(res.body)).Decode(&info); err != nil {
		fail(w, http.StatusInternalServerError, typeServer, param, "", "the upload's answer: "+err.Error(), "")
		return "", 0, 0, false
	}
	return info.Ref, info.Width, info.Height, true
}
