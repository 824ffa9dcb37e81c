package main

// The generation features end to end, on real Redis and S3 with a worker
// process on the built-in engine: several images per job, image to image
// and inpainting from uploads, LoRAs from the model cache. Each through the
// API, `genfleet submit` and a raw asynq producer.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// newFeatureFleet is a fleet whose scheduler keeps uploads where the
// worker processes look for them (uploads/ in the outputs bucket), with a
// reference LoRA registered as "style" and one worker process running.
func newFeatureFleet(t *testing.T) *fleet {
	t.Helper()
	fl := newFleetWith(t, 1<<20, func(c *scheduler.Config) {
		c.Pool = "cpu"
		c.Uploads = s3x.URL{Bucket: outputsBucket, Key: "uploads/"}
		c.MaxUploadBytes = 256 << 10
	})
	lora := filepath.Join(t.TempDir(), "style.safetensors")
	if err := writeAtomic(lora, func(w io.Writer) error { return refgen.MakeLoRA(w, refgen.LoRAOptions{Seed: 4}) }); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.reg.PushSpec(t.Context(), modelcache.Spec{Name: "style", Kind: modelcache.KindLoRA},
		[]modelcache.PushFile{{Path: lora, Dest: s3x.URL{Bucket: modelsBucket, Key: "loras/"}}}, nil); err != nil {
		t.Fatal(err)
	}
	fl.startWorker("--max-upload-size", "256KiB")
	return fl
}

// pngImage encodes a w×h picture: a gradient, or one grey level.
func pngImage(t *testing.T, w, h int, grey int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.NRGBA{uint8(4 * x), uint8(4 * y), 128, 255}
			if grey >= 0 {
				c = color.NRGBA{uint8(grey), uint8(grey), uint8(grey), 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// halfMask is white (changed) on its right half, black (kept) on its left.
func halfMask(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, w, h))
	for y := range h {
		for x := w / 2; x < w; x++ {
			img.SetGray(x, y, color.Gray{255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// upload uploads data (POST /v1/uploads) and returns its ref.
func (fl *fleet) upload(data []byte) string {
	fl.t.Helper()
	info, err := fl.client().Upload(fl.t.Context(), data)
	if err != nil || info.Ref == "" {
		fl.t.Fatalf("upload: %+v %v", info, err)
	}
	return info.Ref
}

func (fl *fleet) succeed(id string) job.Record {
	fl.t.Helper()
	rec := fl.wait(id, 90*time.Second, nil)
	if rec.Status != job.StatusSucceeded {
		fl.t.Fatalf("job %s: %s %q", id, rec.Status, rec.Error)
	}
	return rec
}

func (fl *fleet) imageK(id string, k int) []byte {
	fl.t.Helper()
	img, err := fl.client().Image(fl.t.Context(), id, k)
	if err != nil {
		fl.t.Fatalf("image %d of %s: %v", k, id, err)
	}
	defer img.Close()
	b, err := io.ReadAll(img)
	if err != nil {
		fl.t.Fatalf("image %d of %s: %v", k, id, err)
	}
	return b
}

// wantRefused submits body and checks the answer's status and field.
func (fl *fleet) wantRefused(body string, code int, field string) {
	fl.t.Helper()
	got, b := fl.do("POST", "/v1/jobs", body)
	var e struct{ Error, Field string }
	_ = json.Unmarshal(b, &e)
	if got != code || e.Field != field {
		fl.t.Errorf("POST %s = %d %s; want %d naming %q", body, got, b, code, field)
	}
}

func TestGenerationFeatures(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFeatureFleet(t)
	const size = 64
	base := func(seed int, extra string) string {
		return fmt.Sprintf(`{"model":"demo","prompt":"a red fox","seed":%d,"width":%d,"height":%d,"steps":3%s}`, seed, size, size, extra)
	}

	// Several images per job: n images with seeds seed…seed+n-1, each the
	// bytes of a job with that seed alone; /image is the first.
	many := fl.submit(base(7, `,"n":3`))
	single := fl.submit(base(8, ""))
	rec := fl.succeed(many)
	if len(rec.Outputs) != 3 || rec.Result == nil || *rec.Result != rec.Outputs[0] {
		t.Fatalf("outputs %+v, result %+v", rec.Outputs, rec.Result)
	}
	for k, o := range rec.Outputs {
		if o.Seed != int64(7+k) || o.Width != size {
			t.Errorf("output %d: %+v", k, o)
		}
	}
	fl.succeed(single)
	if !bytes.Equal(fl.imageK(many, 1), fl.image(single)) {
		t.Error("image 1 of the n=3 job (seed 8) differs from the job with seed 8 alone")
	}
	if !bytes.Equal(fl.imageK(many, 0), fl.image(many)) || bytes.Equal(fl.imageK(many, 0), fl.imageK(many, 2)) {
		t.Error("/image is not image 0, or two seeds gave one image")
	}
	if _, ok := rec.Timings["acquire"]; !ok {
		t.Errorf("timings %v", rec.Timings)
	}
	for path, code := range map[string]int{"/images/3": 404, "/images/x": 400, "/images/-1": 400} {
		if got, b := fl.do("GET", "/v1/jobs/"+many+path, ""); got != code {
			t.Errorf("GET %s = %d %s, want %d", path, got, b, code)
		}
	}

	// Image to image and inpainting from uploads.
	init := fl.upload(pngImage(t, size, size, -1))
	mask := fl.upload(halfMask(t, size, size))
	img2img := fl.submit(base(7, `,"init_image":"`+init+`","strength":0.6`))
	inpaint := fl.submit(base(7, `,"init_image":"`+init+`","mask":"`+mask+`","strength":1`))
	again := fl.submit(base(7, `,"init_image":"`+init+`","strength":0.6`))
	for _, id := range []string{img2img, inpaint, again} {
		fl.succeed(id)
	}
	txt := fl.image(many)
	if a, b := fl.image(img2img), fl.image(again); !bytes.Equal(a, b) || bytes.Equal(a, txt) {
		t.Error("image to image is not reproducible, or ignores the init image")
	}
	in, err := png.Decode(bytes.NewReader(fl.image(inpaint)))
	if err != nil {
		t.Fatal(err)
	}
	txtImg, _ := png.Decode(bytes.NewReader(txt))
	initImg, _ := png.Decode(bytes.NewReader(pngImage(t, size, size, -1)))
	for _, p := range []image.Point{{3, 5}, {size/2 - 1, size - 1}} { // kept: the init image
		if toNRGBA(in.At(p.X, p.Y)) != toNRGBA(initImg.At(p.X, p.Y)) {
			t.Errorf("inpainting changed the masked-out pixel %v", p)
		}
	}
	for _, p := range []image.Point{{size/2 + 1, 3}, {size - 1, size - 1}} { // changed: the generated picture
		if toNRGBA(in.At(p.X, p.Y)) != toNRGBA(txtImg.At(p.X, p.Y)) {
			t.Errorf("inpainting at strength 1 did not regenerate pixel %v", p)
		}
	}

	// A LoRA from the model cache: other bytes than without it, the same
	// twice; the heartbeat reports it.
	withLoRA := fl.submit(base(7, `,"loras":[{"model":"style","weight":0.8}]`))
	withLoRA2 := fl.submit(base(7, `,"loras":[{"model":"style","weight":0.8}]`))
	fl.succeed(withLoRA)
	fl.succeed(withLoRA2)
	if a := fl.image(withLoRA); bytes.Equal(a, txt) || !bytes.Equal(a, fl.image(withLoRA2)) {
		t.Error("the LoRA did not change the image, or not reproducibly")
	}
	lm, err := fl.reg.Resolve(t.Context(), "style")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fl.cacheDir, "blobs", "sha256-"+strings.TrimPrefix(lm.Files[0].Digest, "sha256:"))); err != nil {
		t.Errorf("the LoRA is not in the host's cache: %v", err)
	}
	waitFor(t, 10*time.Second, "the heartbeat to list the LoRA", func() bool {
		_, b := fl.do("GET", "/v1/workers", "")
		return strings.Contains(string(b), `"ref": "style"`) && strings.Contains(string(b), `"kind": "lora"`)
	})

	// The same features through `genfleet submit`: files are uploaded, the
	// images written to out.png and out-1.png.
	dir := t.TempDir()
	initFile, maskFile := filepath.Join(dir, "in.png"), filepath.Join(dir, "mask.png")
	os.WriteFile(initFile, pngImage(t, size, size, -1), 0o644)
	os.WriteFile(maskFile, halfMask(t, size, size), 0o644)
	out := filepath.Join(dir, "out.png")
	var stdout, stderr bytes.Buffer
	if rc := run([]string{"submit", "--api", fl.api.URL, "--model", "demo", "--prompt", "a red fox", "--seed", "7", "--steps", "3",
		"--n", "2", "--init-image", initFile, "--mask", maskFile, "--strength", "1", "--lora", "style:0.8", "-o", out, "--timeout", "90s"}, &stdout, &stderr); rc != 0 {
		t.Fatalf("genfleet submit = %d: %s", rc, stderr.String())
	}
	cliID := strings.TrimSpace(stdout.String())
	cliRec := fl.get(cliID)
	if cliRec.Request.N != 2 || cliRec.Request.Width != size || cliRec.Request.InitImage != init || cliRec.Request.Mask != mask ||
		len(cliRec.Request.LoRAs) != 1 || cliRec.Request.LoRAs[0] != (job.LoRA{Model: "style", Weight: 0.8}) {
		t.Fatalf("the CLI's job asked for %+v", cliRec.Request)
	}
	for k, p := range []string{out, filepath.Join(dir, "out-1.png")} {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, fl.imageK(cliID, k)) {
			t.Errorf("%s: %v, or not image %d", p, err, k)
		}
	}

	// A raw asynq producer: hand-written JSON with every feature runs the
	// same job as the API.
	apiID := fl.submit(base(7, `,"n":2,"init_image":"`+init+`","mask":"`+mask+`","strength":1,"loras":[{"model":"style","weight":0.8}]`))
	raw := asynq.NewClient(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer raw.Close()
	payload := `{"v":1,"request":` + base(7, `,"n":2,"init_image":"`+init+`","mask":"`+mask+`","strength":1,"loras":[{"model":"style","weight":0.8}]`) + `}`
	if _, err := raw.Enqueue(asynq.NewTask(job.TaskType, []byte(payload)), asynq.TaskID("raw-features-1"), asynq.Queue("pool:cpu")); err != nil {
		t.Fatal(err)
	}
	bad := `{"v":1,"request":` + base(7, `,"loras":[{"model":"demo2"}]`) + `}`
	if _, err := raw.Enqueue(asynq.NewTask(job.TaskType, []byte(bad)), asynq.TaskID("raw-features-bad"), asynq.Queue("pool:cpu"), asynq.MaxRetry(3)); err != nil {
		t.Fatal(err)
	}
	fl.succeed(apiID)
	fl.succeed("raw-features-1")
	for k := range 2 {
		a, r, c := fl.imageK(apiID, k), fl.imageK("raw-features-1", k), fl.imageK(cliID, k)
		if !bytes.Equal(a, r) || !bytes.Equal(a, c) {
			t.Errorf("image %d differs between the API, a raw asynq producer and the CLI", k)
		}
	}
	badRec := fl.wait("raw-features-bad", 60*time.Second, nil)
	if badRec.Status != job.StatusFailed || !strings.Contains(badRec.Error, "loras[0].model") || !strings.Contains(badRec.Error, "not retried") {
		t.Errorf("a raw job with an unknown LoRA: %s %q", badRec.Status, badRec.Error)
	}

	// What the API refuses, naming the field.
	if _, err := fl.reg.Push(t.Context(), writeTempModel(t), s3x.URL{Bucket: modelsBucket, Key: "blobs/"}, "demo2", nil); err != nil {
		t.Fatal(err)
	}
	small := fl.upload(pngImage(t, size, size+8, 40))
	fl.wantRefused(base(1, `,"init_image":"`+small+`"`), 400, "init_image")
	fl.wantRefused(base(1, `,"init_image":"`+init+`","mask":"`+small+`"`), 400, "mask")
	fl.wantRefused(base(1, `,"init_image":"`+job.UploadRef(strings.Repeat("0", 64))+`"`), 400, "init_image")
	fl.wantRefused(base(1, `,"init_image":"s3://`+outputsBucket+`/nothing.png"`), 400, "init_image")
	fl.wantRefused(base(1, `,"strength":0.5`), 400, "strength")
	fl.wantRefused(base(1, `,"n":17`), 400, "n")
	fl.wantRefused(base(1, `,"loras":[{"model":"nope"}]`), 404, "loras[0].model")
	fl.wantRefused(base(1, `,"loras":[{"model":"demo2"}]`), 400, "loras[0].model")
	fl.wantRefused(`{"model":"style","prompt":"x"}`, 400, "model")
	fl.wantRefused(base(1, `,"options":{"clip_skip":2}`), 400, "options.clip_skip")
	// A batch checks each job as a single submit does: the same answers,
	// item by item, and the valid one beside them is queued and runs.
	refused := []struct {
		body  string
		code  int
		field string
	}{
		{base(1, `,"init_image":"`+small+`"`), 400, "init_image"},
		{base(1, `,"init_image":"`+job.UploadRef(strings.Repeat("0", 64))+`"`), 400, "init_image"},
		{base(1, `,"init_image":"`+init+`","mask":"`+small+`"`), 400, "mask"},
		{base(1, `,"loras":[{"model":"nope"}]`), 404, "loras[0].model"},
		{base(1, `,"loras":[{"model":"demo2"}]`), 400, "loras[0].model"},
		{`{"model":"style","prompt":"x"}`, 400, "model"},
		{base(1, `,"options":{"clip_skip":2}`), 400, "options.clip_skip"},
	}
	items := []string{`{"request":` + base(7, `,"n":2,"init_image":"`+init+`","loras":[{"model":"style","weight":0.8}],"priority":"high"`) + `}`}
	for _, r := range refused {
		items = append(items, `{"request":`+r.body+`}`)
	}
	code, br := fl.batch(`{"jobs":[` + strings.Join(items, ",") + `]}`)
	if code != http.StatusOK || len(br.Jobs) != len(items) || br.Queued != 1 || br.Failed != len(refused) {
		t.Fatalf("batch: %d %+v", code, br)
	}
	for i, r := range refused {
		if got := br.Jobs[i+1]; got.Code != r.code || got.Field != r.field || got.ID != "" {
			t.Errorf("batch item %d (%s) = %+v; want %d naming %q, as a single submit", i+1, r.body, got, r.code, r.field)
		}
	}
	if br.Jobs[0].Queue != "pool:cpu:high" {
		t.Errorf("the batch's valid job went to %q, want pool:cpu:high", br.Jobs[0].Queue)
	}
	if rec := fl.succeed(br.Jobs[0].ID); len(rec.Outputs) != 2 {
		t.Errorf("the batch's job has outputs %+v, want 2", rec.Outputs)
	}
	for name, tc := range map[string]struct {
		body, ctype string
		code        int
	}{
		"not an image": {"hello", "text/plain", 400},
		"too large":    {strings.Repeat("x", 300<<10), "image/png", 413},
		"too small":    {string(pngImage(t, 32, 32, 0)), "image/png", 400},
	} {
		code, b := fl.do("POST", "/v1/uploads", tc.body, "Content-Type", tc.ctype)
		if code != tc.code || !strings.Contains(string(b), `"field": "image"`) {
			t.Errorf("upload %s: %d %s, want %d naming image", name, code, b, tc.code)
		}
	}
	// A multipart upload (what curl -F sends) is taken too.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	fw, _ := mw.CreateFormFile("image", "in.png")
	fw.Write(pngImage(t, size, size, -1))
	mw.Close()
	code, b := fl.do("POST", "/v1/uploads", mp.String(), "Content-Type", mw.FormDataContentType())
	if code != http.StatusCreated || !strings.Contains(string(b), init) {
		t.Errorf("multipart upload: %d %s, want the ref %s", code, b, init)
	}
	fl.stopWorkers()
}

func toNRGBA(c color.Color) color.NRGBA { return color.NRGBAModel.Convert(c).(color.NRGBA) }

func writeTempModel(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "demo2.safetensors")
	if err := writeModel(p, 1<<16, 2); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFor polls cond until it holds, failing after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
