package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/modelcache"
)

const cacheUsage = `Usage: genfleet cache COMMAND [flags]

Commands (all take --cache-dir and --cache-budget):
  ls [--json]            list cached blobs (digest, size, last use, in use, resident %)
                         and quarantined files; writes nothing
  pull MODEL             fetch a model (name or s3:// ref) into the cache, with progress
  verify [DIGEST...]     re-hash all or some blobs; a corrupt one is moved into
                         quarantine/ (exit 1), the only change verify ever makes
  gc                     delete quarantined files, then evict least recently used idle
                         blobs until under --cache-budget
  rm DIGEST...           evict blobs now; refuses one that a process has mapped

Only pull creates a cache: the others fail on a --cache-dir that holds none.
`

func cmdCache(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, cacheUsage)
		return errUsage
	}
	switch args[0] {
	case "ls", "list":
		return cmdCacheList(args[1:], stdout, stderr)
	case "pull":
		return cmdCachePull(ctx, args[1:], stdout, stderr)
	case "verify":
		return cmdCacheVerify(ctx, args[1:], stdout, stderr)
	case "gc":
		return cmdCacheGC(ctx, args[1:], stdout, stderr)
	case "rm":
		return cmdCacheRemove(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stderr, cacheUsage)
		return nil
	}
	fmt.Fprintf(stderr, "unknown cache command %q\n\n%s", args[0], cacheUsage)
	return errUsage
}

// cacheFlags are the flags that say where the cache is and how big it may be.
type cacheFlags struct {
	dir    *string
	budget *string
}

func addCacheFlags(f flags) *cacheFlags {
	return &cacheFlags{
		dir:    f.EnvString("cache-dir", "GENFLEET_CACHE_DIR", "/var/cache/genfleet", "model cache directory, shared by every worker process on the host"),
		budget: f.EnvString("cache-budget", "GENFLEET_CACHE_BUDGET", "", `cap on the cache's blobs and quarantined files: a size ("50GiB") or a percentage of the file system ("80%"); empty means no cap`),
	}
}

// options returns the cache options the flags set.
func (cf *cacheFlags) options() (modelcache.Options, error) {
	var o modelcache.Options
	var err error
	o.Budget, o.BudgetPercent, err = parseBudget(*cf.budget)
	if err != nil {
		return o, fmt.Errorf("--cache-budget: %w", err)
	}
	return o, nil
}

// parseBudget parses a cache budget: "" (no cap), a size ("50GiB") or a
// percentage of the file system ("80%").
func parseBudget(s string) (bytes int64, percent float64, err error) { return units.ParseBudget(s) }

func openCacheFromFlags(cf *cacheFlags, o modelcache.Options, src modelcache.Source) (*modelcache.Cache, error) {
	bo, err := cf.options()
	if err != nil {
		return nil, err
	}
	o.Budget, o.BudgetPercent = bo.Budget, bo.BudgetPercent
	return modelcache.OpenWith(*cf.dir, src, o)
}

// openExistingCache opens the cache at --cache-dir for a command that must
// not create one (see modelcache.OpenExisting); verb says what the command
// would have done, for the error.
func openExistingCache(cf *cacheFlags, readOnly bool, verb string) (*modelcache.Cache, error) {
	o, err := cf.options()
	if err != nil {
		return nil, err
	}
	o.ReadOnly = readOnly
	c, err := modelcache.OpenExisting(*cf.dir, nil, o)
	if errors.Is(err, modelcache.ErrNoCache) {
		return nil, fmt.Errorf("%w (--cache-dir); nothing to %s", err, verb)
	}
	return c, err
}

func cmdCacheList(args []string, stdout, stderr io.Writer) error {
	f := newFlags("cache ls", stderr)
	cf := addCacheFlags(f)
	asJSON := f.Bool("json", false, "print JSON: {used_bytes, blob_bytes, quarantine_bytes, budget_bytes, blobs: [...], quarantine: [...]}")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	c, err := openExistingCache(cf, true, "list")
	if err != nil {
		return err
	}
	infos, err := c.List()
	if err != nil {
		return err
	}
	quarantined, err := c.Quarantined()
	if err != nil {
		return err
	}
	var blobBytes, qBytes int64
	for _, bi := range infos {
		blobBytes += bi.Size
	}
	for _, qf := range quarantined {
		qBytes += qf.Size
	}
	budget, err := c.Budget()
	if err != nil {
		return err
	}
	if *asJSON {
		if infos == nil {
			infos = []modelcache.BlobInfo{}
		}
		if quarantined == nil {
			quarantined = []modelcache.QuarantinedFile{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"root": c.Root(), "used_bytes": blobBytes + qBytes, "blob_bytes": blobBytes,
			"quarantine_bytes": qBytes, "budget_bytes": budget, "blobs": infos, "quarantine": quarantined})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DIGEST\tSIZE\tLAST USE\tIN USE\tRESIDENT")
	for _, bi := range infos {
		inUse := "no"
		if bi.InUse {
			inUse = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f%%\n", bi.Digest, humanBytes(bi.Size),
			bi.LastUsed.Local().Format(time.DateTime), inUse, 100*float64(bi.ResidentBytes)/float64(max(bi.Size, 1)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(quarantined) > 0 {
		fmt.Fprintln(stdout, "\nQuarantined (failed re-verification; `genfleet cache gc` deletes them):")
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DIGEST\tSIZE\tQUARANTINED\tPATH")
		for _, qf := range quarantined {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", qf.Digest, humanBytes(qf.Size), qf.QuarantinedAt.Local().Format(time.DateTime), qf.Path)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	b := "no budget"
	if budget > 0 {
		b = "budget " + humanBytes(budget)
	}
	fmt.Fprintf(stdout, "%d blobs, %s; %d quarantined, %s; %s used (%s)\n", len(infos), humanBytes(blobBytes),
		len(quarantined), humanBytes(qBytes), humanBytes(blobBytes+qBytes), b)
	return nil
}

func humanBytes(n int64) string { return units.FormatSize(n) }

func cmdCachePull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("cache pull", stderr)
	c := addCommon(f)
	cf := addCacheFlags(f)
	pos, rest := f.SplitPositional(args, 1)
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: genfleet cache pull MODEL (a registered name or s3://bucket/key)")
		return errUsage
	}
	reg, _, err := c.openRegistry(ctx)
	if err != nil {
		return err
	}
	t := time.Now()
	man, err := reg.Resolve(ctx, pos[0])
	if err != nil {
		return err
	}
	resolve := time.Since(t)

	// Progress may be reported from several fetch goroutines at once.
	var mu sync.Mutex
	bars := map[string]*progress{}
	onProgress := func(p modelcache.FetchProgress) {
		mu.Lock()
		defer mu.Unlock()
		bar := bars[p.URL]
		if bar == nil {
			bar = newProgress(stderr, "pull "+p.URL)
			bars[p.URL] = bar
		}
		bar.update(p.Done, p.Total)
		if p.Finished {
			bar.done()
		}
	}
	cache, err := openCacheFromFlags(cf, modelcache.Options{Progress: onProgress, Logger: c.logger(stderr)}, reg.Src)
	if err != nil {
		return err
	}
	m, err := cache.Acquire(ctx, man)
	if err != nil {
		return err
	}
	defer m.Close()
	r := m.Report
	for _, b := range m.Blobs {
		fmt.Fprintf(stdout, "%s\t%s\t%s\n", b.Digest, humanBytes(b.Size), b.Path)
	}
	state := "fetched"
	switch r.Origin {
	case modelcache.OriginDisk:
		state = "already cached"
	case modelcache.OriginWaited:
		state = "fetched by another process while this one waited"
	}
	fmt.Fprintf(stdout, "%s %q: %s, %s downloaded; resolve %v, wait %v, fetch %v, verify %v, map %v\n",
		state, man.Ref(), humanBytes(sumSizes(m)), humanBytes(r.FetchedBytes),
		resolve.Round(time.Millisecond), r.Wait.Round(time.Millisecond), r.Fetch.Round(time.Millisecond),
		r.Verify.Round(time.Millisecond), r.Map.Round(time.Microsecond))
	return nil
}

func sumSizes(m *modelcache.Model) int64 {
	var n int64
	for _, b := range m.Blobs {
		n += b.Size
	}
	return n
}

func cmdCacheVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("cache verify", stderr)
	cf := addCacheFlags(f)
	pos, rest := f.SplitPositional(args, len(args))
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	c, err := openExistingCache(cf, true, "verify")
	if err != nil {
		return err
	}
	digests := pos
	if len(digests) == 0 {
		infos, err := c.List()
		if err != nil {
			return err
		}
		for _, bi := range infos {
			digests = append(digests, bi.Digest)
		}
	}
	var bad []string
	var errs []error
	for _, d := range digests {
		err := c.Verify(ctx, d)
		switch {
		case err == nil:
			fmt.Fprintf(stdout, "ok\t%s\n", d)
		case errors.Is(err, modelcache.ErrCorrupt):
			fmt.Fprintf(stdout, "CORRUPT\t%s\t%v\n", d, err)
			bad = append(bad, d)
		default:
			fmt.Fprintf(stdout, "error\t%s\t%v\n", d, err)
			errs = append(errs, err)
		}
	}
	if len(bad) > 0 {
		errs = append(errs, fmt.Errorf("%d of %d blobs corrupt and quarantined (the next acquire fetches them again): %s",
			len(bad), len(digests), strings.Join(bad, ", ")))
	}
	return errors.Join(errs...)
}

func cmdCacheGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("cache gc", stderr)
	cf := addCacheFlags(f)
	asJSON := f.Bool("json", false, "print the result as JSON")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	c, err := openExistingCache(cf, false, "collect")
	if err != nil {
		return err
	}
	res, err := c.GC(ctx)
	if *asJSON {
		if jerr := json.NewEncoder(stdout).Encode(res); jerr != nil {
			return jerr
		}
		return err
	}
	for _, qf := range res.QuarantineRemoved {
		fmt.Fprintf(stdout, "deleted quarantined\t%s\t%s\t%s\n", qf.Digest, humanBytes(qf.Size), qf.Path)
	}
	if res.Budget <= 0 {
		fmt.Fprintf(stdout, "no budget set (--cache-budget): no blob evicted; %s in %d quarantined files deleted; %s cached\n",
			humanBytes(res.QuarantineFreed), len(res.QuarantineRemoved), humanBytes(res.Used))
		return err
	}
	for _, bi := range res.Evicted {
		fmt.Fprintf(stdout, "evicted\t%s\t%s\tlast use %s\n", bi.Digest, humanBytes(bi.Size), bi.LastUsed.Local().Format(time.DateTime))
	}
	fmt.Fprintf(stdout, "freed %s in %d blobs and %d quarantined files; %s used of %s", humanBytes(res.Freed),
		len(res.Evicted), len(res.QuarantineRemoved), humanBytes(res.Used), humanBytes(res.Budget))
	if res.SkippedInUse > 0 {
		fmt.Fprintf(stdout, "; %d blobs in use were kept", res.SkippedInUse)
	}
	fmt.Fprintln(stdout)
	return err
}

func cmdCacheRemove(args []string, stdout, stderr io.Writer) error {
	f := newFlags("cache rm", stderr)
	cf := addCacheFlags(f)
	pos, rest := f.SplitPositional(args, len(args))
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	if len(pos) == 0 {
		fmt.Fprintln(stderr, "usage: genfleet cache rm DIGEST...")
		return errUsage
	}
	c, err := openExistingCache(cf, false, "remove")
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range pos {
		if err := c.Remove(d); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(stdout, "removed\t%s\n", d)
	}
	return errors.Join(errs...)
}

// loadFlags are the worker's model-loading and cache-policy flags.
type loadFlags struct {
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

func addLoadFlags(f flags) *loadFlags {
	return &loadFlags{
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

// scrubConfig turns the scrub flags into the scrubber's config.
func (lf *loadFlags) scrubConfig() (modelcache.ScrubConfig, error) {
	cfg := modelcache.ScrubConfig{Interval: *lf.scrubEvery}
	if *lf.scrubRate != "0" {
		var err error
		if cfg.Rate, err = parseSize(*lf.scrubRate); err != nil {
			return cfg, fmt.Errorf("--scrub-rate %q: want bytes per second, e.g. 32MiB, or 0", *lf.scrubRate)
		}
	}
	if cfg.Interval < 0 {
		return cfg, fmt.Errorf("--scrub-interval %v: want a duration ≥ 0", cfg.Interval)
	}
	return cfg, nil
}

// options turns the flags into cache options; metrics and log go with them.
func (lf *loadFlags) options(metrics prometheus.Registerer, log *slog.Logger) (modelcache.Options, error) {
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
	if o.Budget, o.BudgetPercent, err = parseBudget(*lf.budget); err != nil {
		return o, fmt.Errorf("--cache-budget: %w", err)
	}
	if o.PartSize, err = parseSize(*lf.partSize); err != nil || o.PartSize < 1<<20 {
		return o, fmt.Errorf("--fetch-part-size %q: want a size of at least 1MiB", *lf.partSize)
	}
	if o.FetchConcurrency < 1 {
		return o, fmt.Errorf("--fetch-concurrency %d: want at least 1", o.FetchConcurrency)
	}
	return o, nil
}
