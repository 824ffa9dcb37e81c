package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/genfleet/genfleet/job"
)

func cmdSubmit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("submit", stderr)
	api := f.str("api", "GENFLEET_API", "http://127.0.0.1:8080", "scheduler API base URL")
	apiToken := f.str("api-token", "GENFLEET_API_TOKEN", "", "bearer token the scheduler requires (prefer the environment: flags show in ps)")
	model := f.String("model", "", "model name or s3://bucket/key (required)")
	prompt := f.String("prompt", "", "prompt (required)")
	negative := f.String("negative-prompt", "", "negative prompt")
	seed := f.Int64("seed", 0, "seed; same seed, same image")
	width := f.Int("width", 512, "width in pixels (64..2048, multiple of 8; of 64 for sdcpp models)")
	height := f.Int("height", 512, "height in pixels (64..2048, multiple of 8; of 64 for sdcpp models)")
	steps := f.Int("steps", 20, "steps (1..200)")
	guidance := f.Float64("guidance", job.DefaultGuidance, "guidance scale")
	sampler := f.String("sampling-method", "", "engine sampler, e.g. euler_a (sdcpp models only; default: the engine's)")
	sched := f.String("scheduler", "", "engine sigma schedule, e.g. karras (sdcpp models only; default: the engine's)")
	n := f.Int("n", 1, fmt.Sprintf("images to make (1..%d), with seeds seed, seed+1, …", job.MaxN))
	initImage := f.String("init-image", "", "image to start from (image to image): a PNG or JPEG FILE, uploaded first, or an upload:sha256:… or s3:// ref; its size is the job's unless --width/--height say otherwise")
	mask := f.String("mask", "", "inpainting mask (FILE or ref like --init-image): light parts are changed, black parts kept; needs --init-image")
	strength := f.Float64("strength", job.DefaultStrength, "how far the init image is changed, 0 (kept) to 1 (replaced); needs --init-image")
	var loras loraFlags
	f.Var(&loras, "lora", "apply a LoRA, `NAME[:WEIGHT]` (weight default 1); repeat for several")
	var options optionFlags
	f.Var(&options, "option", "engine option `NAME=VALUE` (docs/engines.md), e.g. clip_skip=2; repeat for several")
	wait := f.Bool("wait", false, "wait until the job ends, showing progress")
	out := f.String("o", "", "write the PNG to this file (implies --wait; its directory is checked before the job is submitted); with --n above 1, image k (k ≥ 1) goes to FILE-k.png")
	idem := f.String("idempotency-key", "", "Idempotency-Key header: the same key with the same request returns the same job; with another request it is refused (422)")
	timeout := f.Duration("timeout", 30*time.Minute, "give up waiting after this long")
	if err := f.parse(args, 0); err != nil {
		return err
	}
	req := job.Request{Model: *model, Prompt: *prompt, NegativePrompt: *negative, Seed: *seed,
		Width: *width, Height: *height, Steps: *steps, Guidance: *guidance, OutputFormat: job.FormatPNG,
		SamplingMethod: *sampler, Scheduler: *sched, N: job.Count(*n), LoRAs: loras, Options: options}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if set["strength"] {
		req.Strength = job.Float(*strength)
	}
	base := strings.TrimSuffix(*api, "/")
	up := uploader{base: base, token: *apiToken}
	if *initImage != "" {
		// Check what can be checked before anything is uploaded.
		req.InitImage = "s3://placeholder/x"
		if *mask != "" {
			req.Mask = req.InitImage
		}
	}
	if err := req.Validate(); err != nil {
		return fmt.Errorf("--%s", strings.ReplaceAll(err.Error(), "_", "-"))
	}
	if *out != "" {
		// Before the job is submitted: finding out after it ran wastes it.
		if err := checkOutputPath(*out); err != nil {
			return err
		}
	}
	if *initImage != "" {
		var err error
		var size [2]int
		if req.InitImage, size, err = up.ref(ctx, "init-image", *initImage); err != nil {
			return err
		}
		// The image's size is the job's, unless the flags say otherwise.
		if size[0] > 0 && !set["width"] && !set["height"] {
			req.Width, req.Height = size[0], size[1]
		}
		if *mask != "" {
			if req.Mask, _, err = up.ref(ctx, "mask", *mask); err != nil {
				return err
			}
		}
	}
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/jobs", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	setToken(hreq, *apiToken)
	if *idem != "" {
		hreq.Header.Set("Idempotency-Key", *idem)
	}
	var created struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if err := doJSON(hreq, http.StatusAccepted, &created); err != nil {
		return err
	}
	if *out == "" && !*wait {
		fmt.Fprintln(stdout, created.ID)
		return nil
	}
	fmt.Fprintf(stderr, "job %s queued\n", created.ID)

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var rec job.Record
	lastLine := ""
	for {
		rec = job.Record{}
		greq, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/jobs/"+created.ID, nil)
		setToken(greq, *apiToken)
		if err := doJSON(greq, http.StatusOK, &rec); err != nil {
			return err
		}
		line := string(rec.Status)
		if rec.Progress != nil {
			line = fmt.Sprintf("%s step %d/%d", rec.Status, rec.Progress.Step, rec.Progress.Steps)
		}
		if line != lastLine {
			fmt.Fprintf(stderr, "job %s %s\n", created.ID, line)
			lastLine = line
		}
		if rec.Status.Terminal() {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting for job %s (last status %s): %w", created.ID, rec.Status, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if rec.Status != job.StatusSucceeded {
		return fmt.Errorf("job %s %s: %s", created.ID, rec.Status, rec.Error)
	}
	fmt.Fprintln(stdout, created.ID)
	if *out == "" {
		return nil
	}
	for k := range max(len(rec.Outputs), 1) {
		path := imagePath(*out, k)
		if err := download(ctx, base+"/v1/jobs/"+created.ID+"/images/"+strconv.Itoa(k), *apiToken, path); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wrote %s\n", path)
	}
	return nil
}

// imagePath is where -o out puts image k of a job: out itself for the
// first, out with "-k" before its extension for the others.
func imagePath(out string, k int) string {
	if k == 0 {
		return out
	}
	ext := filepath.Ext(out)
	return strings.TrimSuffix(out, ext) + "-" + strconv.Itoa(k) + ext
}

// download writes the body of a GET of url to path, through a temp file
// and a rename, so a failed download leaves nothing half-written.
func download(ctx context.Context, url, token, path string) error {
	ireq, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	setToken(ireq, token)
	resp, err := http.DefaultClient.Do(ireq)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET image: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".genfleet-*.png")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, resp.Body); err != nil {
		tmp.Close()
		return fmt.Errorf("download image: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// checkOutputPath checks that the image can be written to path: it is not
// a directory, and its directory exists and takes a new file (the check
// creates and removes the kind of temp file the download is written to).
func checkOutputPath(path string) error {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("-o %s is a directory; give a file name, e.g. %s", path, filepath.Join(path, "out.png"))
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("-o %s: directory %s does not exist; nothing was submitted", path, dir)
	case err != nil:
		return fmt.Errorf("-o %s: %w; nothing was submitted", path, err)
	case !st.IsDir():
		return fmt.Errorf("-o %s: %s is not a directory; nothing was submitted", path, dir)
	}
	tmp, err := os.CreateTemp(dir, ".genfleet-*.png")
	if err != nil {
		return fmt.Errorf("-o %s: cannot write in %s: %w; nothing was submitted", path, dir, err)
	}
	tmp.Close()
	return os.Remove(tmp.Name())
}

// setToken adds "Authorization: Bearer token" to req unless token is empty.
func setToken(req *http.Request, token string) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
}

// doJSON sends req and decodes a JSON answer with status want into v;
// any other status becomes an error carrying the API's message.
func doJSON(req *http.Request, want int, v any) error {
	return doJSONWith(http.DefaultClient, req, want, v)
}

// doJSONWith is doJSON with a given client.
func doJSONWith(client *http.Client, req *http.Request, want int, v any) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		var e struct {
			Error string `json:"error"`
			Field string `json:"field"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s: %s", req.Method, req.URL.Path, resp.Status, e.Error)
		}
		return fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, resp.Status)
	}
	return json.Unmarshal(b, v)
}
