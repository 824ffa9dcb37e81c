// Package cachecmd is genfleet's cache command: list, pull, verify,
// collect and remove the blobs of a host's model cache.
package cachecmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/genfleet/genfleet/internal/cli"
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

// Run runs genfleet cache with args (the command and its flags).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, cacheUsage)
		return cli.ErrUsage
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
	return cli.ErrUsage
}

func cmdCacheList(args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("cache ls", stderr)
	cf := cli.AddCacheFlags(f)
	asJSON := f.Bool("json", false, "print JSON: {used_bytes, blob_bytes, quarantine_bytes, budget_bytes, blobs: [...], quarantine: [...]}")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	c, err := cf.OpenExisting(true, "list")
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f%%\n", bi.Digest, units.FormatSize(bi.Size),
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
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", qf.Digest, units.FormatSize(qf.Size), qf.QuarantinedAt.Local().Format(time.DateTime), qf.Path)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	b := "no budget"
	if budget > 0 {
		b = "budget " + units.FormatSize(budget)
	}
	fmt.Fprintf(stdout, "%d blobs, %s; %d quarantined, %s; %s used (%s)\n", len(infos), units.FormatSize(blobBytes),
		len(quarantined), units.FormatSize(qBytes), units.FormatSize(blobBytes+qBytes), b)
	return nil
}

func cmdCachePull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("cache pull", stderr)
	c := cli.AddCommon(f)
	cf := cli.AddCacheFlags(f)
	pos, rest := f.SplitPositional(args, 1)
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: genfleet cache pull MODEL (a registered name or s3://bucket/key)")
		return cli.ErrUsage
	}
	reg, _, err := c.OpenRegistry(ctx)
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
	bars := map[string]*cli.Progress{}
	onProgress := func(p modelcache.FetchProgress) {
		mu.Lock()
		defer mu.Unlock()
		bar := bars[p.URL]
		if bar == nil {
			bar = cli.NewProgress(stderr, "pull "+p.URL)
			bars[p.URL] = bar
		}
		bar.Update(p.Done, p.Total)
		if p.Finished {
			bar.Done()
		}
	}
	cache, err := cf.Open(modelcache.Options{Progress: onProgress, Logger: c.Logger(stderr)}, reg.Src)
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
		fmt.Fprintf(stdout, "%s\t%s\t%s\n", b.Digest, units.FormatSize(b.Size), b.Path)
	}
	state := "fetched"
	switch r.Origin {
	case modelcache.OriginDisk:
		state = "already cached"
	case modelcache.OriginWaited:
		state = "fetched by another process while this one waited"
	}
	fmt.Fprintf(stdout, "%s %q: %s, %s downloaded; resolve %v, wait %v, fetch %v, verify %v, map %v\n",
		state, man.Ref(), units.FormatSize(sumSizes(m)), units.FormatSize(r.FetchedBytes),
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
	f := cli.NewFlags("cache verify", stderr)
	cf := cli.AddCacheFlags(f)
	pos, rest := f.SplitPositional(args, len(args))
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	c, err := cf.OpenExisting(true, "verify")
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
	f := cli.NewFlags("cache gc", stderr)
	cf := cli.AddCacheFlags(f)
	asJSON := f.Bool("json", false, "print the result as JSON")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	c, err := cf.OpenExisting(false, "collect")
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
		fmt.Fprintf(stdout, "deleted quarantined\t%s\t%s\t%s\n", qf.Digest, units.FormatSize(qf.Size), qf.Path)
	}
	if res.Budget <= 0 {
		fmt.Fprintf(stdout, "no budget set (--cache-budget): no blob evicted; %s in %d quarantined files deleted; %s cached\n",
			units.FormatSize(res.QuarantineFreed), len(res.QuarantineRemoved), units.FormatSize(res.Used))
		return err
	}
	for _, bi := range res.Evicted {
		fmt.Fprintf(stdout, "evicted\t%s\t%s\tlast use %s\n", bi.Digest, units.FormatSize(bi.Size), bi.LastUsed.Local().Format(time.DateTime))
	}
	fmt.Fprintf(stdout, "freed %s in %d blobs and %d quarantined files; %s used of %s", units.FormatSize(res.Freed),
		len(res.Evicted), len(res.QuarantineRemoved), units.FormatSize(res.Used), units.FormatSize(res.Budget))
	if res.SkippedInUse > 0 {
		fmt.Fprintf(stdout, "; %d blobs in use were kept", res.SkippedInUse)
	}
	fmt.Fprintln(stdout)
	return err
}

func cmdCacheRemove(args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("cache rm", stderr)
	cf := cli.AddCacheFlags(f)
	pos, rest := f.SplitPositional(args, len(args))
	if err := f.ParseArgs(rest, 0); err != nil {
		return err
	}
	if len(pos) == 0 {
		fmt.Fprintln(stderr, "usage: genfleet cache rm DIGEST...")
		return cli.ErrUsage
	}
	c, err := cf.OpenExisting(false, "remove")
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
