package modelcache

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/genfleet/genfleet/internal/defaults"
)

// Options tune a Cache. The zero value of every field means its default.
type Options struct {
	// --- fetching (S3 → tmp/ → blobs/) ---

	// FetchConcurrency is how many ranged GETs of one object run at once.
	// Default 8.
	FetchConcurrency int
	// PartSize is the size of each ranged GET; an object of at most this
	// size is fetched with one plain GET. It is also the unit of resuming:
	// an interrupted fetch keeps the parts it finished. A file whose
	// manifest has part digests is fetched in the manifest's parts instead.
	// Default 16 MiB.
	PartSize int64
	// StallTimeout cancels and retries a GET that receives no bytes for
	// this long (waiting for the response counts). Default 30s.
	StallTimeout time.Duration
	// FetchRetries is how many times one part is retried (with exponential
	// backoff and jitter that honour the context) before the fetch fails;
	// a retry resumes from the part's bytes already written. Errors that a
	// retry cannot fix (ErrChanged, ErrNotFound, local write errors) are not
	// retried. Default 5; a negative value means no retries.
	FetchRetries int
	// Progress, when set, is called as a fetch makes progress (at most a few
	// times a second per fetch, and once at the end, with Finished set,
	// whether the fetch succeeded or not). It is called from a goroutine of
	// the fetch and must not block.
	Progress func(p FetchProgress)

	// --- loading (blob → mapping or private copy) ---

	// LoadMode is LoadMMap (default) or LoadRead.
	LoadMode LoadMode
	// Advice is the madvise advice applied to a mapping: AdviceNone
	// (default), AdviceWillNeed, AdviceSequential, AdviceRandom or
	// AdvicePopulate (prefault every page before Acquire returns).
	Advice Advice
	// Mlock locks mappings into RAM; failure (RLIMIT_MEMLOCK) is an error
	// that names the limit.
	Mlock bool
	// Verify is the policy for re-hashing a blob that is already on disk
	// when an Acquire asks for it. Default VerifyPerBoot: the first use
	// after each boot, shared by every process on the host, and again
	// whenever the file changed. A blob that an Acquire fetches is hashed
	// as it arrives, whatever the policy.
	Verify VerifyPolicy
	// ReadOnly opens a cache for inspection: the root and its blobs/ must
	// exist, nothing is created or cleaned at open, Acquire, Import, GC and
	// Remove fail with ErrReadOnly, and Verify records nothing; it only
	// moves a corrupt blob into quarantine/ (see Verify). Default false.
	ReadOnly bool

	// --- eviction ---

	// Budget caps the bytes blobs/ may hold; 0 means BudgetPercent, and both
	// zero means no cap.
	Budget int64
	// BudgetPercent caps blobs/ at this percentage of the file system's size.
	BudgetPercent float64

	// --- observability ---

	// Metrics, when set, receives the cache's collectors.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Defaults of the fetch options, measured with genfleet bench fetch (see
// docs/benchmarks.md).
const (
	DefaultFetchConcurrency = 8
	DefaultPartSize         = 16 << 20
)

// FetchProgress describes a fetch in flight.
type FetchProgress struct {
	URL    string
	Digest string // "sha256:<hex>" when known in advance
	// Done counts the bytes in place, including those a resumed fetch
	// found from an earlier attempt; Total is the object's size.
	Done  int64
	Total int64
	// Finished is true on the last call for this fetch.
	Finished bool
}

// LoadMode says how a blob becomes bytes in memory.
type LoadMode string

const (
	// LoadMMap maps the blob read-only and shared: every process on the host
	// shares one copy in the page cache.
	LoadMMap LoadMode = "mmap"
	// LoadRead reads the blob into private memory (the --no-mmap of other
	// engines), for file systems where mapping is unwise.
	LoadRead LoadMode = "read"
)

// Advice is madvise advice for a mapping.
type Advice string

const (
	AdviceNone       Advice = "none"
	AdviceWillNeed   Advice = "willneed"
	AdviceSequential Advice = "sequential"
	AdviceRandom     Advice = "random"
	AdvicePopulate   Advice = "populate"
)

// VerifyPolicy says when a blob already on disk is re-hashed.
type VerifyPolicy string

const (
	// VerifyPerBoot re-hashes a blob the first time any process on the host
	// uses it after a boot, and again whenever the file changed since it
	// was last hashed (someone wrote to it, or it is another file). The
	// verdict is kept in <root>/verified/, keyed by the boot id, the
	// blob's device and inode, its size and its mtime and ctime in
	// nanoseconds, so that N worker processes, and restarts within one
	// boot, hash a blob once between them; a blob fetched (and so hashed
	// as it arrived) counts as verified. A corrupt blob is quarantined and
	// fetched again. The default: see verify_boot.go for why.
	VerifyPerBoot VerifyPolicy = "per-boot"
	// VerifyNever trusts a blob once it was verified at fetch time.
	VerifyNever VerifyPolicy = "never"
	// VerifyOnOpen re-hashes a blob the first time this Cache opens it:
	// every process (and every restart) hashes every blob it uses once.
	VerifyOnOpen VerifyPolicy = "on-open"
)

// withDefaults returns o with zero fields set to their defaults.
func (o Options) withDefaults() Options {
	defaults.Positive(&o.FetchConcurrency, DefaultFetchConcurrency)
	defaults.Positive(&o.PartSize, DefaultPartSize)
	defaults.Positive(&o.StallTimeout, 30*time.Second)
	if o.FetchRetries == 0 {
		o.FetchRetries = 5
	} else if o.FetchRetries < 0 {
		o.FetchRetries = 0
	}
	defaults.Zero(&o.LoadMode, LoadMMap)
	defaults.Zero(&o.Advice, AdviceNone)
	defaults.Zero(&o.Verify, VerifyPerBoot)
	defaults.Zero(&o.Logger, slog.Default())
	return o
}
