package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/modelformat"
	"github.com/genfleet/genfleet/scheduler"
)

// writeSD1LoRA writes a LoRA for SD 1.x in the layout LoRA trainers
// (kohya's sd-scripts) write and stable-diffusion.cpp reads: for each of a
// few attention projections of the UNet's first down block,
// lora_unet_<diffusers path>.lora_down.weight [rank, in] and
// .lora_up.weight [out, rank], F32, random values from seed.
func writeSD1LoRA(t *testing.T, path string, seed uint64) {
	t.Helper()
	const rank, dim = 4, 320
	rng := rand.New(rand.NewPCG(seed, 1))
	var specs []modelformat.TensorSpec
	for _, layer := range []string{"attn1_to_q", "attn1_to_k", "attn1_to_v", "attn2_to_q"} {
		base := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_" + layer
		for _, f := range []struct {
			suffix string
			shape  []int64
		}{{".lora_down.weight", []int64{rank, dim}}, {".lora_up.weight", []int64{dim, rank}}} {
			n := f.shape[0] * f.shape[1]
			data := make([]byte, 4*n)
			for i := range n {
				binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(rng.Float64()-0.5)))
			}
			specs = append(specs, modelformat.TensorSpec{Name: base + f.suffix, DType: "F32", Shape: f.shape,
				Write: func(w io.Writer) error { _, err := w.Write(data); return err }})
		}
	}
	var buf bytes.Buffer
	if err := modelformat.WriteSafetensors(&buf, map[string]string{"ss_network_dim": "4"}, specs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRealStableDiffusionCppFeatures runs the generation features on a
// real stable-diffusion.cpp build (GENFLEET_SDCPP_CLI and
// GENFLEET_SDCPP_SERVER, as TestRealStableDiffusionCpp): on a random-weight
// SD 1.x checkpoint, with sd-cli (a process per job) and sd-server, a job of
// two images (the engine's batch count) whose second image is the job of
// the next seed alone, a LoRA from the cache (another image, the engine
// loading the LoRA without complaint), and image to image with a mask, a
// strength and engine options, two images again each the job of its seed
// alone (the engine run per image). Images are 64×64, one step.
func TestRealStableDiffusionCppFeatures(t *testing.T) {
	cli, srv := os.Getenv("GENFLEET_SDCPP_CLI"), os.Getenv("GENFLEET_SDCPP_SERVER")
	if cli == "" || srv == "" {
		t.Skip("set GENFLEET_SDCPP_CLI and GENFLEET_SDCPP_SERVER to a stable-diffusion.cpp build's sd-cli and sd-server to run it")
	}
	fl := newFleetWith(t, 1<<20, func(c *scheduler.Config) {
		c.Pool = "cpu"
		c.Uploads = s3x.URL{Bucket: outputsBucket, Key: "uploads/"}
	})
	dir := t.TempDir()
	s3flags := []string{"--registry", "s3://" + modelsBucket + "/", "--s3-endpoint", fl.s3.Endpoint,
		"--s3-access-key", fl.s3.Config.AccessKey, "--s3-secret-key", fl.s3.Config.SecretKey}
	model := filepath.Join(dir, "sd1.gguf")
	for _, args := range [][]string{
		{"models", "make", "--arch", "sd1", "--dtype", "q4_0", "--out", model},
		append([]string{"models", "push", model, "s3://" + modelsBucket + "/blobs/sd1.gguf", "--name", "sd1", "--engine", "sdcpp"}, s3flags...),
	} {
		if code, out, stderr := runCLI(args...); code != 0 {
			t.Fatalf("genfleet %s: %d\n%s\n%s", strings.Join(args, " "), code, out, stderr)
		}
	}
	lora := filepath.Join(dir, "ink.safetensors")
	writeSD1LoRA(t, lora, 3)
	if _, err := fl.reg.PushSpec(t.Context(), modelcache.Spec{Name: "ink", Engine: "sdcpp", Kind: modelcache.KindLoRA},
		[]modelcache.PushFile{{Path: lora, Dest: s3x.URL{Bucket: modelsBucket, Key: "loras/"}}}, nil); err != nil {
		t.Fatal(err)
	}
	init := fl.upload(pngImage(t, 64, 64, -1))
	mask := fl.upload(halfMask(t, 64, 64))
	body := func(seed int, extra string) string {
		return fmt.Sprintf(`{"model":"sd1","prompt":"a lovely cat","seed":%d,"width":64,"height":64,"steps":1%s}`, seed, extra)
	}
	done := func(id string) job.Record {
		t.Helper()
		rec := fl.wait(id, 10*time.Minute, nil)
		if rec.Status != job.StatusSucceeded {
			t.Fatalf("job %s: %s attempt %d %q", id, rec.Status, rec.Attempt, rec.Error)
		}
		t.Logf("job %s: n=%d generate %.0f ms, engine_load %.0f ms", id, rec.Request.Images(), rec.Timings["generate"], rec.Timings["engine_load"])
		return rec
	}
	for _, mode := range []string{"process", "server"} {
		t.Run(mode, func(t *testing.T) {
			fl.startWorkerOn(mode+"host", t.TempDir(), "--backend", "sdcpp", "--sdcpp-mode", mode,
				"--sdcpp-cli", cli, "--sdcpp-server", srv, "--sdcpp-args", "--threads 2")
			defer fl.stopWorkers()
			batch := fl.submit(body(5, `,"n":2`))
			alone := fl.submit(body(6, ""))
			withLoRA := fl.submit(body(5, `,"loras":[{"model":"ink","weight":1}]`))
			editOpts := `,"init_image":"` + init + `","mask":"` + mask + `","strength":0.5,"options":{"clip_skip":2,"vae_tiling":true}`
			edit := fl.submit(body(5, `,"n":2`+editOpts))
			editAlone := fl.submit(body(6, editOpts))
			rec := done(batch)
			if len(rec.Outputs) != 2 {
				t.Fatalf("outputs %+v", rec.Outputs)
			}
			done(alone)
			if !bytes.Equal(fl.imageK(batch, 1), fl.image(alone)) {
				t.Error("image 1 of the batch (seed 6) differs from the job with seed 6 alone")
			}
			done(withLoRA)
			if bytes.Equal(fl.image(withLoRA), fl.imageK(batch, 0)) {
				t.Error("the LoRA did not change the image")
			}
			done(edit)
			img, err := png.Decode(bytes.NewReader(fl.image(edit)))
			if err != nil || img.Bounds().Dx() != 64 || img.Bounds().Dy() != 64 {
				t.Errorf("image to image: %v %v", err, img)
			}
			done(editAlone)
			if !bytes.Equal(fl.imageK(edit, 1), fl.image(editAlone)) {
				t.Error("image 1 of the image-to-image job (seed 6) differs from the job with seed 6 alone")
			}
		})
	}
}
