package cuda

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/backends/refgen"
)

func init() { backends.Register("cuda", New) }

// unavailable marks err as "this machine cannot run the backend".
func unavailable(err error) error {
	if errors.Is(err, backends.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", err, backends.ErrUnavailable)
}

// Available reports whether the CUDA driver can be loaded and sees at
// least one device, without creating a context: nil, or an error wrapping
// backends.ErrUnavailable that says why.
func Available() error {
	drv, err := loadDriver()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := drv.check("cuInit", drv.cuInit(0)); err != nil {
			errc <- unavailable(err)
			return
		}
		var n int32
		if err := drv.check("cuDeviceGetCount", drv.cuDeviceGetCount(&n)); err != nil {
			errc <- unavailable(err)
			return
		}
		if n == 0 {
			errc <- unavailable(errors.New("cuda: the driver sees no device"))
			return
		}
		errc <- nil
	}()
	return <-errc
}

// Backend runs refgen models on an NVIDIA GPU. Weights stay on the device
// between jobs, keyed by model digest, under a byte budget with LRU
// eviction and a keep-alive. Safe for concurrent Generate calls; their
// driver calls are serialised on the device thread, and their staged
// uploads run one at a time on the staging workers.
type Backend struct {
	cfg    Config
	dev    *device
	pol    *policy
	met    *metrics
	log    *slog.Logger
	budget int64

	// mu guards res, loading and closed.
	mu  sync.Mutex
	res *residents
	// loading has a channel per digest being uploaded, closed when done.
	loading map[string]chan struct{}
	closed  bool
}

var _ backends.Backend = (*Backend)(nil)

// New returns the cuda backend configured from GENFLEET_CUDA_* variables
// (see Config); it is the registry's factory for "cuda".
func New() (backends.Backend, error) {
	cfg, err := ConfigFromEnv(nil)
	if err != nil {
		return nil, err
	}
	return Open(cfg)
}

// Open starts the backend on device cfg.Device. On a machine without a
// driver or device the error wraps backends.ErrUnavailable and says why.
func Open(cfg Config) (*Backend, error) {
	cfg = cfg.withDefaults()
	dev, err := openDevice(cfg.Device, stagingConfig{
		Workers: cfg.UploadThreads, Buffers: cfg.StagingBuffers, BufferBytes: cfg.StagingBufferBytes,
	})
	if err != nil {
		return nil, err
	}
	free, _, err := dev.memInfo()
	if err != nil {
		dev.close()
		return nil, err
	}
	budget := cfg.MemBudget
	if budget <= 0 {
		budget = int64(float64(free) * cfg.MemBudgetPercent / 100)
	}
	b := &Backend{
		cfg: cfg, dev: dev, budget: budget,
		pol:     newPolicy(cfg.Upload, cfg.UploadThreads),
		met:     newMetrics(),
		log:     slog.Default(),
		res:     newResidents(budget, cfg.KeepAlive),
		loading: map[string]chan struct{}{},
	}
	b.met.budgetBytes.Set(float64(budget))
	// The staging workers and their pinned buffers are made now rather than
	// in the first job's upload (about 50 ms on an H200). If that fails,
	// the first staged upload tries again and reports the error.
	if cfg.Upload == Auto || cfg.Upload == Staged {
		if err := dev.prepareStaging(); err != nil {
			b.log.Warn("cuda: staging workers not started", "err", err)
		}
	}
	return b, nil
}

// Name returns "cuda".
func (*Backend) Name() string { return "cuda" }

// DeviceClass returns "cuda".
func (*Backend) DeviceClass() string { return "cuda" }

// Engines returns the built-in engine: the backend runs refgen models.
func (*Backend) Engines() []string { return []string{refgen.Engine} }

// Features returns the built-in engine's: init images, masks and LoRAs.
func (*Backend) Features() []string { return refgen.Features }

// DeviceName returns the GPU's name as the driver reports it.
func (b *Backend) DeviceName() string { return b.dev.name }

// OnDevice reports whether the weights of the file with digest are
// resident on the GPU now (the worker's heartbeat says so per model).
func (b *Backend) OnDevice(digest string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.res.slots[digest] != nil
}

// Budget returns the device memory budget for resident weights.
func (b *Backend) Budget() int64 { return b.budget }

// RegisterMetrics registers the backend's collectors with reg.
func (b *Backend) RegisterMetrics(reg prometheus.Registerer) error {
	for _, c := range b.met.collectors() {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// SetLogger sets where the backend logs uploads and evictions.
func (b *Backend) SetLogger(l *slog.Logger) { b.log = l }

// Close frees every resident model and releases the device. Generate
// calls in flight must have returned.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	var all []*slot
	for k := range b.res.slots {
		all = append(all, b.res.remove(k))
	}
	b.mu.Unlock()
	for _, s := range all {
		_ = b.dev.free(s.ptr)
	}
	b.dev.close()
	return nil
}

// Generate runs the refgen model in m on the GPU: the weights are
// uploaded once (or found resident), each step's sweep runs as a kernel
// that produces the per-chunk lane sums, and the rest of the step and the
// rendering run on the CPU exactly as in the cpu backend, so the image is
// the cpu backend's, byte for byte. Errors are as for the cpu backend,
// plus driver errors and a budget too small for the model.
func (b *Backend) Generate(ctx context.Context, m backends.Model, p backends.Params, progress backends.ProgressFunc) (image.Image, error) {
	f := m.Main()
	model, err := refgen.Open(f.Data)
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	g, err := model.NewGeneration(f.Digest, p)
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if err := g.ApplyLoRAs(m.LoRAs); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	w := model.Weights()
	s, err := b.acquire(ctx, f, w)
	if err != nil {
		return nil, err
	}
	defer b.release(s)

	chunks := model.Chunks()
	partial, err := b.dev.alloc(int64(8 * refgen.Lanes * chunks))
	if err != nil {
		return nil, err
	}
	defer b.dev.free(partial)
	flat := make([]float64, refgen.Lanes*chunks)
	nWeights := int64(len(w) / 4)
	sweep := func(ctx context.Context, c *[refgen.Lanes]float64, out [][refgen.Lanes]float64) error {
		if err := b.dev.chunkSums(s.ptr, nWeights, refgen.ChunkParams, c, partial, flat); err != nil {
			return err
		}
		for k := range out {
			copy(out[k][:], flat[k*refgen.Lanes:(k+1)*refgen.Lanes])
		}
		return nil
	}
	for !g.Done() {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("cuda: stopped after %d of %d steps: %w", g.StepsDone(), g.Steps(), err)
		}
		if err := g.StepWith(ctx, sweep); err != nil {
			return nil, fmt.Errorf("cuda: stopped in step %d of %d: %w", g.StepsDone()+1, g.Steps(), err)
		}
		if progress != nil {
			progress(g.StepsDone(), g.Steps())
		}
	}
	return g.Render(), nil
}

// offsetIn returns the offset of sub within data, which must contain it.
func offsetIn(data, sub []byte) int64 {
	if len(sub) == 0 {
		return 0
	}
	return int64(uintptr(unsafe.Pointer(unsafe.SliceData(sub))) - uintptr(unsafe.Pointer(unsafe.SliceData(data))))
}

// acquire returns m's weights on the device with a reference held,
// uploading them (after making room) unless they are resident or another
// call is uploading them, in which case it waits for that upload. A model
// without a digest is uploaded for this call alone.
func (b *Backend) acquire(ctx context.Context, m backends.File, w []byte) (*slot, error) {
	key := m.Digest
	n := int64(len(w))
	b.mu.Lock()
	for key != "" {
		if b.closed {
			b.mu.Unlock()
			return nil, errors.New("cuda: backend closed")
		}
		if ch, ok := b.loading[key]; ok {
			b.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, fmt.Errorf("cuda: waiting for %s to upload: %w", key, ctx.Err())
			}
			b.mu.Lock()
			continue
		}
		if s := b.res.acquire(key); s != nil {
			b.mu.Unlock()
			b.met.hits.Inc()
			return s, nil
		}
		break
	}
	b.met.misses.Inc()
	s := &slot{key: key, bytes: n}
	var victims []*slot
	var done chan struct{}
	if key != "" {
		var err error
		victims, err = b.res.makeRoom(n)
		if err != nil {
			b.mu.Unlock()
			return nil, err
		}
		b.res.add(s, time.Now())
		done = make(chan struct{})
		b.loading[key] = done
		b.updateGauges()
	}
	b.mu.Unlock()
	b.freeSlots(victims, "budget")

	err := b.load(ctx, s, m.Data, offsetIn(m.Data, w), n)
	if key == "" {
		return s, err
	}
	b.mu.Lock()
	delete(b.loading, key)
	close(done)
	if err != nil {
		b.res.remove(key)
	}
	b.updateGauges()
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s, nil
}

// load allocates s.bytes on the device, freeing every unused model and
// retrying once if the device is out of memory, and uploads the weights.
func (b *Backend) load(ctx context.Context, s *slot, mapping []byte, off, n int64) error {
	ptr, err := b.dev.alloc(n)
	if err != nil {
		b.mu.Lock()
		idle := b.res.idle()
		b.updateGauges()
		b.mu.Unlock()
		if len(idle) == 0 {
			return fmt.Errorf("cuda: allocate %d bytes for %s: %w", n, s.key, err)
		}
		b.freeSlots(idle, "oom")
		if ptr, err = b.dev.alloc(n); err != nil {
			return fmt.Errorf("cuda: allocate %d bytes for %s: %w", n, s.key, err)
		}
	}
	strat := b.pol.choose(n)
	st, err := b.dev.upload(ctx, ptr, mapping, off, n, strat)
	if err != nil {
		_ = b.dev.free(ptr)
		return fmt.Errorf("cuda: upload %s (%d bytes, %s): %w", s.key, n, strat, err)
	}
	b.pol.observe(st.Strategy, n, st.Copy.Seconds(), st.Setup.Seconds())
	b.met.record(st)
	b.log.Info("cuda upload", "model", s.key, "bytes", n, "strategy", st.Strategy,
		"seconds", st.Seconds(), "gbps", st.GBps(), "device", b.dev.name)
	s.ptr = ptr
	return nil
}

// release drops a reference from acquire; a model without a digest is
// freed at once, others get a keep-alive timer once unused.
func (b *Backend) release(s *slot) {
	if s.key == "" {
		_ = b.dev.free(s.ptr)
		return
	}
	b.mu.Lock()
	b.res.release(s.key, time.Now())
	idle := s.refs == 0
	b.mu.Unlock()
	if idle && b.cfg.KeepAlive > 0 {
		time.AfterFunc(b.cfg.KeepAlive, b.expire)
	}
}

// expire frees models unused for the keep-alive.
func (b *Backend) expire() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	old := b.res.expired(time.Now())
	b.updateGauges()
	b.mu.Unlock()
	b.freeSlots(old, "keepalive")
}

// freeSlots frees evicted models' device memory.
func (b *Backend) freeSlots(ss []*slot, reason string) {
	for _, s := range ss {
		if err := b.dev.free(s.ptr); err != nil {
			b.log.Warn("cuda: free evicted model", "model", s.key, "err", err)
		}
		b.met.evictions.WithLabelValues(reason).Inc()
		b.log.Info("cuda evict", "model", s.key, "bytes", s.bytes, "reason", reason)
	}
}

// updateGauges publishes the resident set's size; b.mu is held.
func (b *Backend) updateGauges() {
	b.met.deviceBytes.Set(float64(b.res.used))
	b.met.residentCount.Set(float64(len(b.res.slots)))
}
