package worker

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/uploads"
)

// acquires is how many model acquires the worker has counted.
func (e *contractEnv) acquires(t *testing.T) float64 {
	var n float64
	for _, v := range []string{"hit", "miss", "waited"} {
		n += counterValue(t, e.metrics, "genfleet_worker_model_acquires_total", "result", v)
	}
	return n
}

func (e *contractEnv) pushLoRA(t *testing.T, name, engine string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".safetensors")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := refgen.MakeLoRA(f, refgen.LoRAOptions{Seed: 9}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := e.reg.PushSpec(t.Context(), modelcache.Spec{Name: name, Engine: engine, Kind: modelcache.KindLoRA},
		[]modelcache.PushFile{{Path: p, Dest: s3x.URL{Bucket: "models", Key: "loras/"}}}, nil); err != nil {
		t.Fatal(err)
	}
}

// noLoRAs is the cpu backend without LoRAs, as a backend of an engine
// without them would be.
type noLoRAs struct{ backends.Backend }

func (noLoRAs) Features() []string { return []string{backends.FeatureInitImage, backends.FeatureMask} }

// A job of n images acquires its model once, and each LoRA once; the
// record lists n outputs in seed order under the job's image keys.
func TestSeveralImagesAcquireTheModelOnce(t *testing.T) {
	e := newContractEnv(t)
	e.pushLoRA(t, "style", "")
	e.startWorker(t)
	e.enqueueRaw(t, "warm-1", payload("good"))
	waitSucceeded(t, e.store, "warm-1", time.Now().Add(60*time.Second))
	before := e.acquires(t)
	e.enqueueRaw(t, "many-1", `{"v":1,"request":{"model":"good","prompt":"a red fox","seed":5,"width":64,"height":64,"steps":1,"n":4,"loras":[{"model":"style","weight":0.5}]}}`)
	rec := waitSucceeded(t, e.store, "many-1", time.Now().Add(60*time.Second))
	if got := e.acquires(t) - before; got != 2 {
		t.Errorf("a job of 4 images with a LoRA counted %v acquires, want 2 (the model once, the LoRA once)", got)
	}
	if len(rec.Outputs) != 4 {
		t.Fatalf("outputs %+v", rec.Outputs)
	}
	for k, o := range rec.Outputs {
		want, _ := job.ImageKey("outputs/", "many-1", k)
		if o.Key != want || o.Seed != int64(5+k) {
			t.Errorf("output %d: key %q seed %d; want %q, %d", k, o.Key, o.Seed, want, 5+k)
		}
	}
	if _, ok := rec.Timings["loras"]; !ok {
		t.Errorf("timings %v lack the LoRAs' acquire", rec.Timings)
	}
}

// A producer that enqueues straight into Redis gets the scheduler's
// checks from the worker: a job no retry can mend fails at its first
// attempt, naming the field.
func TestGenerationErrorsFailAtFirstAttempt(t *testing.T) {
	e := newContractEnv(t)
	e.pushLoRA(t, "style", "")
	e.pushLoRA(t, "other-engine", "sdcpp")
	st := &uploads.Store{S3: e.s3.Client, Root: s3x.URL{Bucket: "outputs", Key: "uploads/"}}
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 64, 72)))
	info, _, err := st.Put(t.Context(), buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	be, _ := backends.New("cpu")
	e.startWorkerWith(t, noLoRAs{be})
	req := func(extra string) string {
		return `{"v":1,"request":{"model":"good","prompt":"x","seed":1,"width":64,"height":64,"steps":1` + extra + `}}`
	}
	missing := job.UploadRef(strings.Repeat("0", 64))
	tests := []struct {
		name, payload string
		want          []string
	}{
		{"model is a LoRA", `{"v":1,"request":{"model":"style","prompt":"x","width":64,"height":64,"steps":1}}`, []string{"model:", "is a lora", "not retried"}},
		{"LoRA is a model", req(`,"loras":[{"model":"good"}]`), []string{"loras[0].model", "not retried"}},
		{"LoRA of another engine", req(`,"loras":[{"model":"other-engine"}]`), []string{"loras[0].model", "engine sdcpp", "not retried"}},
		{"backend without LoRAs", req(`,"loras":[{"model":"style"}]`), []string{"loras: backend cpu does not take loras", "not retried"}},
		{"missing upload", req(`,"init_image":"` + missing + `"`), []string{"init_image", "no upload", "not retried"}},
		{"init image of another size", req(`,"init_image":"` + info.Ref + `"`), []string{"init_image: is 64x72", "not retried"}},
	}
	for i, tt := range tests {
		e.enqueueRaw(t, fmt.Sprintf("gen-bad-%d", i), tt.payload)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("gen-bad-%d", i)
			if info := e.settled(t, id); info == nil || info.Retried != 0 {
				t.Fatalf("task %v; want archived with no retry", info)
			}
			rec, err := e.store.Get(context.Background(), id)
			if err != nil || rec.Status != job.StatusFailed {
				t.Fatalf("record %+v, %v", rec, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(rec.Error, w) {
					t.Errorf("error %q lacks %q", rec.Error, w)
				}
			}
		})
	}
}
