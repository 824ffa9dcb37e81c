package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
)

// The generation features on stable-diffusion.cpp (the stand-in engine):
// n images, image to image with a mask, a LoRA from the cache and engine
// options, through the API to a worker that runs the engine's server, the
// CLI to one that runs a process per job, and a raw asynq producer; the
// same job gives the same images whichever way it came and whichever
// program ran it. What the engine cannot take is refused at submit.
func TestSdcppGenerationFeatures(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	engine := standInEngine(t)
	engineLog := filepath.Join(t.TempDir(), "engine.log")
	t.Setenv("FAKESD_LOG", engineLog)
	fl := newFleetWith(t, 1<<20, func(c *scheduler.Config) {
		c.Pool = "cpu"
		c.Uploads = s3x.URL{Bucket: outputsBucket, Key: "uploads/"}
	})
	dir := t.TempDir()
	files := map[string]string{"diffusion_model": "unet.gguf", "vae": "ae.safetensors", "clip_l": "clip_l.safetensors"}
	var push []modelcache.PushFile
	for role, name := range files {
		p := filepath.Join(dir, name)
		writeTensors(t, p, 4000)
		push = append(push, modelcache.PushFile{Path: p, Role: role, Dest: s3x.URL{Bucket: modelsBucket, Key: "blobs/sdm/"}})
	}
	if _, err := fl.reg.PushModel(t.Context(), "sdm", "sdcpp", push, nil); err != nil {
		t.Fatal(err)
	}
	lora := filepath.Join(dir, "ink.safetensors")
	writeTensors(t, lora, 800)
	if _, err := fl.reg.PushSpec(t.Context(), modelcache.Spec{Name: "ink", Engine: "sdcpp", Kind: modelcache.KindLoRA},
		[]modelcache.PushFile{{Path: lora, Dest: s3x.URL{Bucket: modelsBucket, Key: "loras/"}}}, nil); err != nil {
		t.Fatal(err)
	}
	refgenLoRA := filepath.Join(dir, "style.safetensors")
	if code, _, stderr := runCLI("models", "make", "--arch", "refgen-lora", "--out", refgenLoRA); code != 0 {
		t.Fatal(stderr)
	}
	if _, err := fl.reg.PushSpec(t.Context(), modelcache.Spec{Name: "style", Kind: modelcache.KindLoRA},
		[]modelcache.PushFile{{Path: refgenLoRA, Dest: s3x.URL{Bucket: modelsBucket, Key: "loras/"}}}, nil); err != nil {
		t.Fatal(err)
	}
	sdWorker := func(mode string) {
		fl.startWorkerOn("sd-"+mode, t.TempDir(), "--backend", "sdcpp", "--sdcpp-mode", mode,
			"--sdcpp-cli", filepath.Join(engine, "sd-cli"), "--sdcpp-server", filepath.Join(engine, "sd-server"))
	}

	const size = 64
	init := fl.upload(pngImage(t, size, size, -1))
	mask := fl.upload(halfMask(t, size, size))
	features := `,"n":2,"init_image":"` + init + `","mask":"` + mask + `","strength":0.5,"loras":[{"model":"ink","weight":0.7}],"options":{"clip_skip":2,"vae_tiling":true}`
	body := func(seed int, extra string) string {
		return fmt.Sprintf(`{"model":"sdm","prompt":"an ink fox","seed":%d,"width":%d,"height":%d,"steps":4%s}`, seed, size, size, extra)
	}

	// The API, on a worker running the engine's server.
	sdWorker("server")
	apiID := fl.submit(body(7, features))
	alone := fl.submit(body(8, strings.Replace(features, `"n":2,`, "", 1)))
	rec := fl.succeed(apiID)
	fl.succeed(alone)
	if len(rec.Outputs) != 2 || rec.Worker.Backend != "sdcpp" || rec.Queue != "pool:sdcpp" {
		t.Fatalf("record %+v", rec)
	}
	if !bytes.Equal(fl.imageK(apiID, 1), fl.image(alone)) {
		t.Error("image 1 of the n=2 job is not the job with seed 8 alone")
	}
	// A text-to-image job of two images: the engine's batch, one request.
	plain := fl.submit(body(7, `,"n":2`))
	fl.succeed(plain)
	if bytes.Equal(fl.image(plain), fl.image(apiID)) {
		t.Error("the features did not change the image")
	}
	fl.stopWorkers()

	// The CLI and a raw asynq producer, on a worker running a process per
	// job: the same images.
	sdWorker("process")
	imgDir := t.TempDir()
	initFile, maskFile := filepath.Join(imgDir, "in.png"), filepath.Join(imgDir, "mask.png")
	os.WriteFile(initFile, pngImage(t, size, size, -1), 0o644)
	os.WriteFile(maskFile, halfMask(t, size, size), 0o644)
	var stdout, stderr bytes.Buffer
	if rc := run([]string{"submit", "--api", fl.api.URL, "--model", "sdm", "--prompt", "an ink fox", "--seed", "7", "--steps", "4",
		"--n", "2", "--init-image", initFile, "--mask", maskFile, "--strength", "0.5", "--lora", "ink:0.7",
		"--option", "clip_skip=2", "--option", "vae_tiling=true", "--wait", "--timeout", "90s"}, &stdout, &stderr); rc != 0 {
		t.Fatalf("genfleet submit = %d: %s", rc, stderr.String())
	}
	cliID := strings.TrimSpace(stdout.String())
	raw := asynq.NewClient(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer raw.Close()
	if _, err := raw.Enqueue(asynq.NewTask(job.TaskType, []byte(`{"v":1,"request":`+body(7, features)+`}`)), asynq.TaskID("raw-sd-1"), asynq.Queue("pool:sdcpp")); err != nil {
		t.Fatal(err)
	}
	fl.succeed("raw-sd-1")
	plainCLI := fl.submit(body(7, `,"n":2`))
	fl.succeed(plainCLI)
	for k := range 2 {
		a := fl.imageK(apiID, k)
		if !bytes.Equal(a, fl.imageK(cliID, k)) || !bytes.Equal(a, fl.imageK("raw-sd-1", k)) {
			t.Errorf("image %d differs between the API (engine server), the CLI and a raw producer (engine processes)", k)
		}
		if !bytes.Equal(fl.imageK(plain, k), fl.imageK(plainCLI, k)) {
			t.Errorf("image %d of the text-to-image batch differs between the engine's server and its command-line program", k)
		}
	}
	fl.stopWorkers()

	// What the engine gets, in its own terms.
	logData, _ := os.ReadFile(engineLog)
	for _, want := range []string{`"img2img"`, `"batch_size=2"`, `"--batch-count","2"`, `"--strength","0.5"`, `"--clip-skip","2"`, `"--vae-tiling"`, `.safetensors:0.7\u003e`, `"--lora-model-dir"`} {
		if !bytes.Contains(logData, []byte(want)) {
			t.Errorf("the engine's log lacks %s", want)
		}
	}

	// Refused at submit, naming the field.
	fl.wantRefused(body(1, `,"options":{"threads":8}`), 400, "options.threads")
	fl.wantRefused(body(1, `,"options":{"clip_skip":1.5}`), 400, "options.clip_skip")
	fl.wantRefused(body(1, `,"loras":[{"model":"style"}]`), 400, "loras[0].model")
	fl.wantRefused(strings.Replace(body(1, ""), "an ink fox", "a fox <lora:/etc/passwd:1>", 1), 400, "prompt")
	code, b := fl.do("GET", "/v1/jobs/"+apiID, "")
	var got job.Record
	if code != 200 || json.Unmarshal(b, &got) != nil || got.Request.Options["clip_skip"] != 2.0 {
		t.Errorf("the record's request: %d %s", code, b)
	}
}
