package openai

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // formats an edit's image and mask may have
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"

	"github.com/genfleet/genfleet/job"
)

// editFields are the form fields of POST /v1/images/edits the handler
// reads (image and mask are files); others OpenAI defines are taken and
// ignored; anything else is refused.
var (
	editFields  = []string{"prompt", "model", "n", "size", "response_format", "output_format", "stream", "strength", "seed", "steps", "negative_prompt", "guidance"}
	editIgnored = []string{"quality", "background", "input_fidelity", "output_compression", "partial_images", "user"}
)

// Edits is POST /v1/images/edits: image to image, and inpainting with a
// mask. The image is the job's init image (uploaded through the API); the
// job has its size. OpenAI's mask marks the area to edit with
// transparency (alpha 0): it becomes genfleet's mask, white where the
// mask is transparent and black elsewhere. Without a "strength" field an
// edit with a mask regenerates the masked area fully (strength 1), one
// without a mask moves the whole image job.DefaultStrength of the way.
func (h *Handler) Edits(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxFormBytes)
	if err := r.ParseMultipartForm(8 << 20); err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			fail(w, http.StatusRequestEntityTooLarge, typeInvalid, "image", "", fmt.Sprintf("the request is larger than %d bytes", mb.Limit), "")
			return
		}
		fail(w, http.StatusBadRequest, typeInvalid, "", "", "an edit is a multipart/form-data request: "+err.Error(), "")
		return
	}
	defer r.MultipartForm.RemoveAll()
	form := r.MultipartForm
	for name := range form.Value {
		if !contains(editFields, name) && !contains(editIgnored, name) {
			fail(w, http.StatusBadRequest, typeInvalid, name, "", "Unrecognized request argument supplied: "+name, "")
			return
		}
	}
	images := append(form.File["image"], form.File["image[]"]...)
	for name := range form.File {
		if name != "image" && name != "image[]" && name != "mask" {
			fail(w, http.StatusBadRequest, typeInvalid, name, "", "Unrecognized request argument supplied: "+name, "")
			return
		}
	}
	if len(images) != 1 {
		fail(w, http.StatusBadRequest, typeInvalid, "image", "", fmt.Sprintf("an edit takes one image, got %d", len(images)), "")
		return
	}
	val := func(name string) string { return r.FormValue(name) }
	format, ok := h.checkCommon(w, val("response_format"), val("output_format"), val("stream") == "true")
	if !ok {
		return
	}
	var x extensions
	x.NegativePrompt = val("negative_prompt")
	var n *int
	for _, f := range []struct {
		name string
		set  func(string) error
	}{
		{"n", func(v string) error { i, err := strconv.Atoi(v); n = &i; return err }},
		{"seed", func(v string) error { i, err := strconv.ParseInt(v, 10, 64); x.Seed = &i; return err }},
		{"steps", func(v string) error { i, err := strconv.Atoi(v); x.Steps = &i; return err }},
		{"guidance", func(v string) error { g, err := strconv.ParseFloat(v, 64); x.Guidance = &g; return err }},
	} {
		if v := val(f.name); v != "" {
			if err := f.set(v); err != nil {
				fail(w, http.StatusBadRequest, typeInvalid, f.name, "", fmt.Sprintf("%s %q is not a number", f.name, v), "")
				return
			}
		}
	}
	req, ok := h.request(w, val("model"), val("prompt"), n, "", x)
	if !ok {
		return
	}
	data, err := readFile(images[0])
	if err != nil {
		fail(w, http.StatusBadRequest, typeInvalid, "image", "", err.Error(), "")
		return
	}
	ref, width, height, ok := h.postUpload(w, r, data, "image")
	if !ok {
		return
	}
	req.InitImage, req.Width, req.Height = ref, width, height
	if sw, sh, err := parseSize(val("size")); err != nil || (sw != 0 && (sw != width || sh != height)) {
		msg := fmt.Sprintf("size %q: an edit keeps the image's size, %dx%d", val("size"), width, height)
		if err != nil {
			msg = err.Error()
		}
		fail(w, http.StatusBadRequest, typeInvalid, "size", "", msg, "")
		return
	}
	strength := job.DefaultStrength
	if masks := form.File["mask"]; len(masks) > 0 {
		data, err := readFile(masks[0])
		if err == nil {
			data, err = genfleetMask(data, width, height)
		}
		if err != nil {
			fail(w, http.StatusBadRequest, typeInvalid, "mask", "", err.Error(), "")
			return
		}
		if req.Mask, _, _, ok = h.postUpload(w, r, data, "mask"); !ok {
			return
		}
		strength = 1
	}
	if v := val("strength"); v != "" {
		if strength, err = strconv.ParseFloat(v, 64); err != nil {
			fail(w, http.StatusBadRequest, typeInvalid, "strength", "", fmt.Sprintf("strength %q is not a number", v), "")
			return
		}
	}
	req.Strength = job.Float(strength)
	h.run(w, r, req, format, map[string]string{"width": "size", "height": "size", "init_image": "image"})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// readFile reads an uploaded form file.
func readFile(fh *multipart.FileHeader) ([]byte, error) {
	f, err := fh.Open()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// genfleetMask turns OpenAI's mask (transparent where the image is to be
// edited) into genfleet's (white where it is to be changed, black where
// kept), as a PNG. It must be the image's size and have a transparent
// pixel.
func genfleetMask(data []byte, width, height int) ([]byte, error) {
	m, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("the mask is not a PNG image: %v", err)
	}
	b := m.Bounds()
	if b.Dx() != width || b.Dy() != height {
		return nil, fmt.Errorf("the mask is %dx%d, the image %dx%d: they must be the same size", b.Dx(), b.Dy(), width, height)
	}
	out := image.NewGray(image.Rect(0, 0, width, height))
	edits := 0
	for y := range height {
		for x := range width {
			if _, _, _, a := m.At(b.Min.X+x, b.Min.Y+y).RGBA(); a == 0 {
				out.SetGray(x, y, color.Gray{255})
				edits++
			}
		}
	}
	if edits == 0 {
		return nil, errors.New("the mask has no fully transparent pixel: its transparent (alpha 0) area marks what to edit")
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, out); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
