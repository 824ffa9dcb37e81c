package cuda

// Tests in this file need an NVIDIA GPU and driver; without them they
// skip, saying why. scripts/gpu-check.sh runs them on a GPU machine.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/cpu"
	"github.com/genfleet/genfleet/backends/refgen"
)

// needGPU skips the test, with the reason, where no driver and device are
// usable.
func needGPU(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("no usable GPU: %v", err)
	}
}

func openGPU(t *testing.T, cfg Config) *Backend {
	t.Helper()
	needGPU(t)
	b, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	t.Logf("device %q, budget %d bytes", b.DeviceName(), b.Budget())
	return b
}

// mapModel writes a refgen model of size bytes to a file and maps it
// read-only and shared, as the worker does.
func mapModel(t *testing.T, size int64, seed uint64) backends.Model {
	t.Helper()
	var buf bytes.Buffer
	if err := refgen.Make(&buf, size, seed); err != nil {
		t.Fatal(err)
	}
	return backends.Model{Files: []backends.File{{Digest: fmt.Sprintf("sha256:test-%d-%d", size, seed), Data: mapBytes(t, buf.Bytes()), Path: "unused"}}}
}

func mapBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o444); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, len(data), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	return m
}

// psnr returns the peak signal-to-noise ratio of b against a over RGB, in
// dB; +Inf for identical images.
func psnr(a, b *image.NRGBA) float64 {
	var se float64
	var n int
	for i := range a.Pix {
		if i%4 == 3 {
			continue
		}
		d := float64(a.Pix[i]) - float64(b.Pix[i])
		se += d * d
		n++
	}
	if se == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(255*255/(se/float64(n)))
}

func TestGPUParity(t *testing.T) {
	b := openGPU(t, Config{})
	c, _ := cpu.New()
	params := []backends.Params{
		{Prompt: "a quiet harbour", Width: 64, Height: 48, Steps: 6, Seed: 3, Guidance: 7},
		{Prompt: "red dunes", NegativePrompt: "people", Width: 257, Height: 131, Steps: 3, Seed: -9, Guidance: 4.5},
	}
	// Sizes: one partial chunk; several chunks with a ragged last chunk
	// and a U8 tail; more than one 64 MiB block.
	for _, size := range []int64{refgen.MinSize, 3<<20 + 4093, 130<<20 + 6} {
		m := mapModel(t, size, 7)
		for _, p := range params {
			want, err := c.Generate(context.Background(), m, p, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := b.Generate(context.Background(), m, p, nil)
			if err != nil {
				t.Fatal(err)
			}
			g, w := got.(*image.NRGBA), want.(*image.NRGBA)
			if g.Bounds() != w.Bounds() {
				t.Fatalf("bounds %v, want %v", g.Bounds(), w.Bounds())
			}
			db := psnr(w, g)
			t.Logf("size %d %dx%d: PSNR %.2f dB, byte-identical: %v", size, p.Width, p.Height, db, bytes.Equal(g.Pix, w.Pix))
			if db < 40 {
				t.Errorf("size %d: PSNR %.2f dB against the cpu backend, want ≥ 40", size, db)
			}
		}
	}
}

// download copies n bytes of device memory back (for tests).
func (d *device) download(src cuDevicePtr, n int64) ([]byte, error) {
	out := make([]byte, n)
	err := d.do(func() error {
		return d.drv.check("cuMemcpyDtoH", d.drv.cuMemcpyDtoH(unsafe.Pointer(&out[0]), src, uint64(n)))
	})
	return out, err
}

func TestGPUUploadStrategies(t *testing.T) {
	// Small staging buffers so that the ring wraps many times.
	b := openGPU(t, Config{StagingBuffers: 3, StagingBufferBytes: 4 << 20, UploadThreads: 4})
	data := make([]byte, 150<<20+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(data); i += 8 {
		*(*uint64)(unsafe.Pointer(&data[i])) = r.Uint64()
	}
	mapping := mapBytes(t, data)
	off, n := int64(4099), int64(len(data))-4099-3
	for _, s := range []Strategy{Naive, Staged, Registered} {
		t.Run(string(s), func(t *testing.T) {
			ptr, err := b.dev.alloc(n)
			if err != nil {
				t.Fatal(err)
			}
			defer b.dev.free(ptr)
			st, err := b.dev.upload(context.Background(), ptr, mapping, off, n, s)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s (ran as %s): %d bytes in %v + %v setup, %.1f GB/s", s, st.Strategy, st.Bytes, st.Copy, st.Setup, st.GBps())
			got, err := b.dev.download(ptr, n)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[off:off+n]) {
				t.Error("device copy differs from the source")
			}
		})
	}
	t.Run("concurrent staged", func(t *testing.T) {
		// Two uploads of different ranges at once share the staging
		// workers; each must arrive whole.
		halves := [2][2]int64{{0, n / 2}, {n / 2, n - n/2}}
		var wg sync.WaitGroup
		for _, h := range halves {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ptr, err := b.dev.alloc(h[1])
				if err != nil {
					t.Error(err)
					return
				}
				defer b.dev.free(ptr)
				if _, err := b.dev.upload(context.Background(), ptr, mapping, off+h[0], h[1], Staged); err != nil {
					t.Error(err)
					return
				}
				got, err := b.dev.download(ptr, h[1])
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, data[off+h[0]:off+h[0]+h[1]]) {
					t.Errorf("concurrent upload of [%d, +%d) differs from the source", h[0], h[1])
				}
			}()
		}
		wg.Wait()
	})
	t.Run("empty", func(t *testing.T) {
		if _, err := b.dev.upload(context.Background(), 0, mapping, 0, 0, Staged); err != nil {
			t.Error(err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ptr, err := b.dev.alloc(n)
		if err != nil {
			t.Fatal(err)
		}
		defer b.dev.free(ptr)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := b.dev.upload(ctx, ptr, mapping, off, n, Staged); !errors.Is(err, context.Canceled) {
			t.Errorf("canceled staged upload: %v", err)
		}
		// The ring is usable afterwards.
		if _, err := b.dev.upload(context.Background(), ptr, mapping, off, n, Staged); err != nil {
			t.Error(err)
		}
	})
}

func TestGPUResidency(t *testing.T) {
	const size = 8 << 20
	b := openGPU(t, Config{MemBudget: 2*size + size/2, KeepAlive: -1})
	reg := prometheus.NewRegistry()
	if err := b.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	p := backends.Params{Prompt: "x", Width: 8, Height: 8, Steps: 1}
	models := []backends.Model{mapModel(t, size, 1), mapModel(t, size, 2), mapModel(t, size, 3)}
	gen := func(m backends.Model) {
		t.Helper()
		if _, err := b.Generate(context.Background(), m, p, nil); err != nil {
			t.Fatal(err)
		}
	}
	gen(models[0])
	gen(models[1])
	gen(models[0]) // hit; model 1 is now least recently used
	gen(models[2]) // evicts model 1
	if got := value(t, b.met.hits); got != 1 {
		t.Errorf("hits %v, want 1", got)
	}
	if got := value(t, b.met.evictions.WithLabelValues("budget")); got != 1 {
		t.Errorf("budget evictions %v, want 1", got)
	}
	b.mu.Lock()
	_, has0 := b.res.slots[models[0].Main().Digest]
	_, has1 := b.res.slots[models[1].Main().Digest]
	b.mu.Unlock()
	if !has0 || has1 {
		t.Errorf("resident: model 0 %v (want true), model 1 %v (want false)", has0, has1)
	}
	if got := value(t, b.met.deviceBytes); got <= 0 || got > float64(b.Budget()) {
		t.Errorf("device bytes gauge %v", got)
	}
	// Too large for the budget.
	big := mapModel(t, 3*size, 4)
	if _, err := b.Generate(context.Background(), big, p, nil); !errors.Is(err, errOverBudget) {
		t.Errorf("model over budget: %v", err)
	}
}

func TestGPUKeepAliveAndConcurrency(t *testing.T) {
	b := openGPU(t, Config{KeepAlive: 100 * time.Millisecond})
	m := mapModel(t, 16<<20, 5)
	p := backends.Params{Prompt: "x", Width: 16, Height: 16, Steps: 2}
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := b.Generate(context.Background(), m, p, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := value(t, b.met.misses); got != 1 {
		t.Errorf("%v uploads for one model, want 1", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for value(t, b.met.residentCount) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("model still resident 5 s after a 100 ms keep-alive")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Generate(ctx, m, p, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled Generate: %v", err)
	}
}

// value reads a counter's or gauge's value.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
