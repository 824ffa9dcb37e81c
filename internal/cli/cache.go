package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/modelcache"
)

// CacheFlags are the flags that say where the cache is and how big it may be.
type CacheFlags struct {
	Dir    *string
	Budget *string
}

// AddCacheFlags adds the cache location and budget flags to f.
func AddCacheFlags(f Flags) *CacheFlags {
	return &CacheFlags{
		Dir:    f.EnvString("cache-dir", "GENFLEET_CACHE_DIR", "/var/cache/genfleet", "model cache directory, shared by every worker process on the host"),
		Budget: f.EnvString("cache-budget", "GENFLEET_CACHE_BUDGET", "", `cap on the cache's blobs and quarantined files: a size ("50GiB") or a percentage of the file system ("80%"); empty means no cap`),
	}
}

// Options returns the cache options the flags set.
func (cf *CacheFlags) Options() (modelcache.Options, error) {
	var o modelcache.Options
	var err error
	o.Budget, o.BudgetPercent, err = units.ParseBudget(*cf.Budget)
	if err != nil {
		return o, fmt.Errorf("--cache-budget: %w", err)
	}
	return o, nil
}

// Open opens, creating it when missing, the cache at --cache-dir with o
// and the budget of the flags.
func (cf *CacheFlags) Open(o modelcache.Options, src modelcache.Source) (*modelcache.Cache, error) {
	bo, err := cf.Options()
	if err != nil {
		return nil, err
	}
	o.Budget, o.BudgetPercent = bo.Budget, bo.BudgetPercent
	return modelcache.OpenWith(*cf.Dir, src, o)
}

// OpenExisting opens the cache at --cache-dir for a command that must
// not create one (see modelcache.OpenExisting); verb says what the command
// would have done, for the error.
func (cf *CacheFlags) OpenExisting(readOnly bool, verb string) (*modelcache.Cache, error) {
	o, err := cf.Options()
	if err != nil {
		return nil, err
	}
	o.ReadOnly = readOnly
	c, err := modelcache.OpenExisting(*cf.Dir, nil, o)
	if errors.Is(err, modelcache.ErrNoCache) {
		return nil, fmt.Errorf("%w (--cache-dir); nothing to %s", err, verb)
	}
	return c, err
}

// LoadFlags are the worker's model-loading and cache-policy flags.
type LoadFlags struct {
	mode         *string
	advice       *string
	mlock        *bool
	budget       *string
	verify       *string
	fetchConc    *int
	partSize     *string
	fetchRetries *int
	stall        *time.Duration
	scrubRate    *string
	scrubEvery   *time.Duration
}

// AddLoadFlags adds the worker's model-loading and cache-policy flags to f.
func AddLoadFlags(f Flags) *LoadFlags {
	return &LoadFlags{
		mode:         f.EnvString("load-mode", "GENFLEET_LOAD_MODE", "mmap", "how models are loaded: mmap (shared read-only mapping, one copy per host) or read (private copy per process)"),
		advice:       f.EnvString("advice", "GENFLEET_ADVICE", "none", "madvise for mapped models: none, willneed, sequential, random or populate (prefault every page before the job starts)"),
		mlock:        f.EnvBool("mlock", "GENFLEET_MLOCK", false, "lock loaded models into RAM (needs RLIMIT_MEMLOCK ≥ model size, or CAP_IPC_LOCK)"),
		budget:       f.EnvString("cache-budget", "GENFLEET_CACHE_BUDGET", "", `cap on the cache's blobs and quarantined files: a size ("50GiB") or a percentage of the file system ("80%"); empty means no cap`),
		verify:       f.EnvString("verify", "GENFLEET_VERIFY", string(modelcache.VerifyPerBoot), "re-hash a cached model before use: per-boot (its first use after each boot by any process on the host, and after any write to it), on-open (first use by each process) or never (only when fetched); a corrupt one is quarantined and fetched again"),
		fetchConc:    f.EnvInt("fetch-concurrency", "GENFLEET_FETCH_CONCURRENCY", modelcache.DefaultFetchConcurrency, "ranged GETs in flight per model file fetched from S3"),
		partSize:     f.EnvString("fetch-part-size", "GENFLEET_FETCH_PART_SIZE", "16MiB", "size of each ranged GET"),
		fetchRetries: f.EnvInt("fetch-retries", "GENFLEET_FETCH_RETRIES", 5, "retries of one part (with backoff) before a fetch fails and the job's attempt with it; -1: none"),
		stall:        f.EnvDuration("fetch-stall-timeout", "GENFLEET_FETCH_STALL_TIMEOUT", 30*time.Second, "a part that receives no bytes for this long is cancelled and retried"),
		scrubRate:    f.EnvString("scrub-rate", "GENFLEET_SCRUB_RATE", "32MiB", "bytes per second the background scrubber may re-hash (one process per blob on a host at a time); 0 disables it"),
		scrubEvery:   f.EnvDuration("scrub-interval", "GENFLEET_SCRUB_INTERVAL", modelcache.DefaultScrubInterval, "how long a blob's last hash stays good before the scrubber re-hashes it; 0 disables the scrubber"),
	}
}

// ScrubConfig turns the scrub flags into the scrubber's config.
func (lf *LoadFlags) ScrubConfig() (modelcache.ScrubConfig, error) {
	cfg := modelcache.ScrubConfig{Interval: *lf.scrubEvery}
	if *lf.scrubRate != "0" {
		var err error
		if cfg.Rate, err = ParseSize(*lf.scrubRate); err != nil {
			return cfg, fmt.Errorf("--scrub-rate %q: want bytes per second, e.g. 32MiB, or 0", *lf.scrubRate)
		}
	}
	if cfg.Interval < 0 {
		return cfg, fmt.Errorf("--scrub-interval %v: want a duration ≥ 0", cfg.Interval)
	}
	return cfg, nil
}

// Options turns the flags into cache options; metrics and log go with them.
func (lf *LoadFlags) Options(metrics prometheus.Registerer, log *slog.Logger) (modelcache.Options, error) {
	o := modelcache.Options{
		LoadMode: modelcache.LoadMode(*lf.mode), Advice: modelcache.Advice(*lf.advice),
		Mlock: *lf.mlock, Verify: modelcache.VerifyPolicy(*lf.verify),
		Metrics: metrics, Logger: log,
		FetchConcurrency: *lf.fetchConc, FetchRetries: *lf.fetchRetries, StallTimeout: *lf.stall,
	}
	for _, err := range []error{o.LoadMode.Validate(), o.Advice.Validate(), o.Verify.Validate()} {
		if err != nil {
			return o, err
		}
	}
	var err error
	if o.Budget, o.BudgetPercent, err = units.ParseBudget(*lf.budget); err != nil {
		return o, fmt.Errorf("--cache-budget: %w", err)
	}
	if o.PartSize, err = ParseSize(*lf.partSize); err != nil || o.PartSize < 1<<20 {
		return o, fmt.Errorf("--fetch-part-size %q: want a size of at least 1MiB", *lf.partSize)
	}
	if o.FetchConcurrency < 1 {
		return o, fmt.Errorf("--fetch-concurrency %d: want at least 1", o.FetchConcurrency)
	}
	return o, nil
}
