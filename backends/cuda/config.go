package cuda

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/genfleet/genfleet/internal/units"
)

// Config configures the cuda backend. The zero value of each field means
// its default; ConfigFromEnv fills it from GENFLEET_CUDA_* variables.
type Config struct {
	// Device is the CUDA device ordinal. Default 0. Env GENFLEET_CUDA_DEVICE.
	Device int
	// MemBudget is the most device memory resident weights may use, in
	// bytes. Default (0): MemBudgetPercent of the memory free when the
	// backend starts. Env GENFLEET_CUDA_MEM_BUDGET ("40GiB" or "80%").
	MemBudget int64
	// MemBudgetPercent is the budget as a percentage of free device
	// memory at start, used when MemBudget is 0. Default 90.
	MemBudgetPercent float64
	// KeepAlive is how long a model nobody is using stays on the device.
	// Default 30m; negative keeps models until the budget needs the room.
	// Env GENFLEET_CUDA_KEEP_ALIVE (a Go duration; "-1s" for forever).
	KeepAlive time.Duration
	// Upload is the upload strategy. Default Auto. Env GENFLEET_CUDA_UPLOAD
	// (auto, naive, staged, registered).
	Upload Strategy
	// UploadThreads is the number of staging workers of the Staged
	// strategy, each an OS thread with its own stream and pinned buffers.
	// Default min(NumCPU, 8). Env GENFLEET_CUDA_UPLOAD_THREADS.
	UploadThreads int
	// StagingBuffers is the number of pinned buffers of each staging
	// worker. Default 4.
	StagingBuffers int
	// StagingBufferBytes is each staging buffer's size, and the size of
	// the chunks an upload is split into. Default 2 MiB. Env
	// GENFLEET_CUDA_STAGING ("4x2MiB": buffers per worker × size).
	StagingBufferBytes int64
}

// Env variables read by ConfigFromEnv.
const (
	EnvDevice        = "GENFLEET_CUDA_DEVICE"
	EnvMemBudget     = "GENFLEET_CUDA_MEM_BUDGET"
	EnvKeepAlive     = "GENFLEET_CUDA_KEEP_ALIVE"
	EnvUpload        = "GENFLEET_CUDA_UPLOAD"
	EnvUploadThreads = "GENFLEET_CUDA_UPLOAD_THREADS"
	EnvStaging       = "GENFLEET_CUDA_STAGING"
)

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.MemBudgetPercent <= 0 || c.MemBudgetPercent > 100 {
		c.MemBudgetPercent = 90
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 30 * time.Minute
	}
	if c.Upload == "" {
		c.Upload = Auto
	}
	if c.UploadThreads <= 0 {
		c.UploadThreads = min(runtime.NumCPU(), 8)
	}
	if c.StagingBuffers <= 0 {
		c.StagingBuffers = 4
	}
	if c.StagingBufferBytes <= 0 {
		c.StagingBufferBytes = 2 << 20
	}
	return c
}

// ConfigFromEnv reads the GENFLEET_CUDA_* variables over lookup (nil means
// os.LookupEnv). Every value that does not parse is reported, each naming
// its variable.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var c Config
	var errs []error
	bad := func(env, v string, err error) { errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err)) }
	if v, ok := lookup(EnvDevice); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			bad(EnvDevice, v, errors.New("want a device ordinal ≥ 0"))
		}
		c.Device = n
	}
	if v, ok := lookup(EnvMemBudget); ok {
		n, pct, err := parseBudget(v)
		if err != nil {
			bad(EnvMemBudget, v, err)
		}
		c.MemBudget, c.MemBudgetPercent = n, pct
	}
	if v, ok := lookup(EnvKeepAlive); ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			bad(EnvKeepAlive, v, err)
		}
		c.KeepAlive = d
	}
	if v, ok := lookup(EnvUpload); ok {
		s, err := ParseStrategy(v)
		if err != nil {
			bad(EnvUpload, v, err)
		}
		c.Upload = s
	}
	if v, ok := lookup(EnvUploadThreads); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 256 {
			bad(EnvUploadThreads, v, errors.New("want 1..256"))
		}
		c.UploadThreads = n
	}
	if v, ok := lookup(EnvStaging); ok {
		bufs, size, err := parseStaging(v)
		if err != nil {
			bad(EnvStaging, v, err)
		}
		c.StagingBuffers, c.StagingBufferBytes = bufs, size
	}
	return c, errors.Join(errs...)
}

// parseSize parses a size such as "64MiB" (see internal/units).
func parseSize(s string) (int64, error) { return units.ParseSize(s) }

// parseBudget parses a device memory budget: a size ("40GiB") or a
// percentage of the free device memory ("80%"); "" or "0" is the default.
func parseBudget(s string) (bytes int64, percent float64, err error) { return units.ParseBudget(s) }

// parseStaging parses "BUFFERSxSIZE", e.g. "4x2MiB".
func parseStaging(s string) (int, int64, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "x")
	if !ok {
		return 0, 0, errors.New(`want BUFFERSxSIZE, e.g. "4x2MiB"`)
	}
	n, err := strconv.Atoi(strings.TrimSpace(a))
	if err != nil || n < 2 || n > 64 {
		return 0, 0, errors.New("want 2..64 staging buffers")
	}
	size, err := parseSize(b)
	if err != nil || size < 64<<10 || size%4096 != 0 {
		return 0, 0, errors.New("want a staging buffer size of at least 64KiB, a multiple of 4KiB")
	}
	return n, size, nil
}
