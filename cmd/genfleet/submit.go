package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/job"
)

func cmdSubmit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("submit", stderr)
	apiURL := f.EnvString("api", "GENFLEET_API", "http://127.0.0.1:8080", "scheduler API base URL")
	apiToken := f.EnvString("api-token", "GENFLEET_API_TOKEN", "", "bearer token the scheduler requires (prefer the environment: flags show in ps)")
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
	wait := f.Bool("wait", false, "wait until the job ends, following its events: a progress bar on a terminal, one JSON object per event otherwise (on stderr)")
	out := f.String("o", "", "write the PNG to this file (implies --wait; its directory is checked before the job is submitted); with --n above 1, image k (k ≥ 1) goes to FILE-k.png")
	idem := f.String("idempotency-key", "", "Idempotency-Key header: the same key with the same request returns the same job; with another request it is refused (422)")
	timeout := f.Duration("timeout", 30*time.Minute, "give up waiting after this long")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	req := job.Request{Model: *model, Prompt: *prompt, NegativePrompt: *negative, Seed: *seed,
		Width: *width, Height: *height, Steps: *steps, Guidance: *guidance, OutputFormat: job.FormatPNG,
		SamplingMethod: *sampler, Scheduler: *sched, N: job.Count(*n), LoRAs: loras, Options: options}
	set := f.Visited()
	if set["strength"] {
		req.Strength = job.Float(*strength)
	}
	api := client.New(*apiURL, *apiToken)
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
		if req.InitImage, size, err = imageRef(ctx, api, "init-image", *initImage); err != nil {
			return err
		}
		// The image's size is the job's, unless the flags say otherwise.
		if size[0] > 0 && !set["width"] && !set["height"] {
			req.Width, req.Height = size[0], size[1]
		}
		if *mask != "" {
			if req.Mask, _, err = imageRef(ctx, api, "mask", *mask); err != nil {
				return err
			}
		}
	}
	created, err := api.Submit(ctx, req, client.IdempotencyKey(*idem))
	if err != nil {
		return err
	}
	if *out == "" && !*wait {
		fmt.Fprintln(stdout, created.ID)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	// The job's events as they happen; a scheduler without them is polled.
	v := &eventView{w: stderr, id: created.ID, tty: isTerminal(stderr)}
	rec, err := api.Follow(ctx, created.ID, v.show)
	v.end()
	if errors.Is(err, client.ErrNoEvents) {
		fmt.Fprintf(stderr, "job %s queued\n", created.ID)
		rec, err = api.Poll(ctx, created.ID, pollView(stderr, created.ID))
	}
	if err != nil {
		return fmt.Errorf("waiting for job %s: %w", created.ID, err)
	}
	if rec.Status != job.StatusSucceeded {
		return fmt.Errorf("job %s %s: %s", created.ID, rec.Status, rec.Error)
	}
	fmt.Fprintln(stdout, created.ID)
	if *out == "" {
		return nil
	}
	// Every image: the completed event lists them (outputs); n says how
	// many where it could not (the record was unreadable when it was sent).
	for k := range max(len(rec.Outputs), *n, 1) {
		path := imagePath(*out, k)
		if err := download(ctx, api, created.ID, k, path); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wrote %s\n", path)
	}
	return nil
}

// pollView shows job id's status on w as it changes, for Poll.
func pollView(w io.Writer, id string) func(*job.Record) {
	lastLine := ""
	return func(rec *job.Record) {
		line := string(rec.Status)
		if rec.Progress != nil {
			line = fmt.Sprintf("%s step %d/%d", rec.Status, rec.Progress.Step, rec.Progress.Steps)
		}
		if line != lastLine {
			fmt.Fprintf(w, "job %s %s\n", id, line)
			lastLine = line
		}
	}
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

// download writes image k of job id to path, through a temp file and a
// rename, so a failed download leaves nothing half-written.
func download(ctx context.Context, api *client.Client, id string, k int, path string) error {
	img, err := api.Image(ctx, id, k)
	if err != nil {
		return err
	}
	defer img.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".genfleet-*.png")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, img); err != nil {
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
