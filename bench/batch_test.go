package bench

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/backends/sdcpp"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/modelformat"
)

// A tiny Batch on the test's Redis and S3: both sides run every image,
// and the figures are consistent with each other.
func TestBatchSmall(t *testing.T) {
	rs := testenv.Redis(t)
	s3 := testenv.S3Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Batch(ctx, BatchOptions{Redis: asynq.RedisClientOpt{Addr: rs.Addr}, S3: s3.Config,
		ModelSize: 1 << 20, Images: 3, Width: 64, Height: 64, Steps: 1, Rounds: 2}, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Images != 3 || res.Rounds != 2 || len(res.RoundRatios) != 2 {
		t.Fatalf("result %+v does not follow the options", res)
	}
	for k, v := range map[string]float64{"batch": res.BatchImagesPerS, "single": res.SingleImagesPerS, "ratio": res.Ratio,
		"single acquire": res.SingleAcquireMSPerImage, "batch generate": res.BatchGenerateMSPerImage} {
		if !(v > 0) {
			t.Errorf("%s = %v, want > 0", k, v)
		}
	}
	// One acquire for the batch's three images, three for the singles.
	if !(res.BatchAcquireMSPerImage < res.SingleAcquireMSPerImage) {
		t.Errorf("acquire per image: batch %v, single %v", res.BatchAcquireMSPerImage, res.SingleAcquireMSPerImage)
	}
	if _, err := Batch(ctx, BatchOptions{Images: 1}, nil); err == nil {
		t.Error("--images 1 accepted")
	}
}

// Batch on stable-diffusion.cpp's stand-in, one process per job: the
// batch starts the engine once for its n images, the singles n times.
func TestBatchSdcppStandIn(t *testing.T) {
	rs := testenv.Redis(t)
	s3 := testenv.S3Server(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "sd-cli")
	if out, err := exec.Command("go", "build", "-o", bin, "../backends/sdcpp/testdata/fakesd").CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in engine: %v\n%s", err, out)
	}
	help, _ := filepath.Abs("../backends/sdcpp/testdata")
	t.Setenv("FAKESD_HELP_DIR", help)
	model := filepath.Join(dir, "sd.safetensors")
	var specs []modelformat.TensorSpec
	for _, n := range []string{"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
		"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"} {
		specs = append(specs, modelformat.TensorSpec{Name: n, DType: "F32", Shape: []int64{1},
			Write: func(w io.Writer) error { _, err := w.Write(make([]byte, 4)); return err }})
	}
	var buf bytes.Buffer
	if err := modelformat.WriteSafetensors(&buf, nil, specs); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(model, buf.Bytes(), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Batch(ctx, BatchOptions{Redis: asynq.RedisClientOpt{Addr: rs.Addr}, S3: s3.Config,
		Images: 3, Width: 64, Height: 64, Steps: 1, Rounds: 1,
		Sdcpp: &sdcpp.Config{CLI: bin, Mode: sdcpp.ModeProcess, TmpDir: t.TempDir()}, SdcppModel: model}, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Engine != "sdcpp/process" || res.ModelBytes != int64(buf.Len()) || !(res.Ratio > 0) {
		t.Errorf("result %+v", res)
	}
}
