package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/genfleet/genfleet/modelcache"
)

func init() {
	registerBench("share", "N processes on one model: summed PSS with mmap vs read mode", benchShare)
	// A child of "bench share" is this binary started with shareChildEnv set.
	if spec := os.Getenv(shareChildEnv); spec != "" {
		os.Exit(shareChild(spec))
	}
}

// benchCache writes a reference model of size bytes and imports it into a
// fresh cache under dir (the system temp dir when empty). It returns the
// cache root, a manifest for the blob and a cleanup function.
func benchCache(ctx context.Context, dir string, size int64, stderr io.Writer) (root string, man *modelcache.Manifest, cleanup func(), err error) {
	tmp, err := os.MkdirTemp(dir, "genfleet-bench-cache-")
	if err != nil {
		return "", nil, nil, err
	}
	cleanup = func() { os.RemoveAll(tmp) }
	root = filepath.Join(tmp, "cache")
	file := filepath.Join(tmp, "model.safetensors")
	fmt.Fprintf(stderr, "writing a %s reference model...\n", humanBytes(size))
	if err := writeModel(file, size, 1); err != nil {
		cleanup()
		return "", nil, nil, err
	}
	c, err := modelcache.Open(root, nil)
	if err != nil {
		cleanup()
		return "", nil, nil, err
	}
	digest, err := c.Import(ctx, file)
	os.Remove(file)
	if err != nil {
		cleanup()
		return "", nil, nil, err
	}
	man = &modelcache.Manifest{Schema: modelcache.ManifestSchema, Name: "bench", Files: []modelcache.File{{
		Name: "model.safetensors", URL: "s3://bench/model.safetensors", Size: size, Digest: digest,
	}}}
	return root, man, cleanup, nil
}

// shareChildEnv carries "<root> <digest> <size> <mode>" to a child of
// bench share.
const shareChildEnv = "GENFLEET_BENCH_SHARE_CHILD"

// shareChild acquires the model, touches every page, says "ready" and
// holds it until stdin closes.
func shareChild(spec string) int {
	fs := strings.Fields(spec)
	if len(fs) != 4 {
		fmt.Fprintln(os.Stderr, "bad", shareChildEnv, spec)
		return 2
	}
	size, _ := strconv.ParseInt(fs[2], 10, 64)
	c, err := modelcache.OpenWith(fs[0], nil, modelcache.Options{LoadMode: modelcache.LoadMode(fs[3])})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	man := &modelcache.Manifest{Schema: modelcache.ManifestSchema, Name: "bench", Files: []modelcache.File{{
		Name: "model.safetensors", URL: "s3://bench/model.safetensors", Size: size, Digest: fs[1],
	}}}
	m, err := c.Acquire(context.Background(), man)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer m.Close()
	var sum byte
	ps := os.Getpagesize()
	for _, b := range m.Blobs {
		for i := 0; i < len(b.Data); i += ps {
			sum += b.Data[i]
		}
	}
	fmt.Printf("ready %d\n", sum)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// benchShare starts --procs processes per mode that each acquire the same
// model and touch every page, then sums their proportional set sizes.
func benchShare(ctx context.Context, args []string, stderr io.Writer) (any, error) {
	f := newFlags("bench share", stderr)
	sizeStr := f.String("size", "1GiB", "model size")
	procs := f.Int("procs", 4, "processes per mode")
	dir := f.String("dir", "", "parent directory of the temporary cache (default: the system temp dir)")
	if err := f.parse(args, 0); err != nil {
		return nil, err
	}
	size, err := parseSize(*sizeStr)
	if err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	if *procs < 1 {
		return nil, errors.New("--procs must be at least 1")
	}
	root, man, cleanup, err := benchCache(ctx, *dir, size, stderr)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	res := map[string]any{"size_bytes": size, "procs": *procs}
	for _, mode := range []modelcache.LoadMode{modelcache.LoadMMap, modelcache.LoadRead} {
		pss, rss, err := shareRun(ctx, exe, fmt.Sprintf("%s %s %d %s", root, man.Files[0].Digest, size, mode), *procs)
		if err != nil {
			return nil, fmt.Errorf("%s mode: %w", mode, err)
		}
		res[string(mode)+"_pss_bytes"] = pss
		res[string(mode)+"_rss_bytes"] = rss
		res[string(mode)+"_pss_ratio"] = float64(pss) / float64(size)
		fmt.Fprintf(stderr, "%s: %d processes, summed PSS %s (%.2f× the model), summed RSS %s\n",
			mode, *procs, humanBytes(pss), float64(pss)/float64(size), humanBytes(rss))
	}
	return res, nil
}

// shareRun starts n children with spec, waits until all are ready, and
// returns their summed Pss and Rss from /proc/PID/smaps_rollup.
func shareRun(ctx context.Context, exe, spec string, n int) (pss, rss int64, err error) {
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
	}
	var children []child
	defer func() {
		for _, ch := range children {
			ch.stdin.Close()
			if werr := ch.cmd.Wait(); werr != nil && err == nil {
				err = fmt.Errorf("child %d: %w", ch.cmd.Process.Pid, werr)
			}
		}
	}()
	for range n {
		cmd := exec.CommandContext(ctx, exe)
		cmd.Env = append(os.Environ(), shareChildEnv+"="+spec)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return 0, 0, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return 0, 0, err
		}
		if err := cmd.Start(); err != nil {
			return 0, 0, err
		}
		children = append(children, child{cmd, stdin})
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "ready") {
			return 0, 0, fmt.Errorf("child %d said %q: %v", cmd.Process.Pid, line, err)
		}
	}
	for _, ch := range children {
		p, r, err := smapsRollup(ch.cmd.Process.Pid)
		if err != nil {
			return 0, 0, err
		}
		pss += p
		rss += r
	}
	return pss, rss, nil
}

// smapsRollup reads a process's Pss and Rss in bytes.
func smapsRollup(pid int) (pss, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) != 3 || fs[2] != "kB" {
			continue
		}
		v, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "Pss:":
			pss = v << 10
		case "Rss:":
			rss = v << 10
		}
	}
	if pss == 0 {
		return 0, 0, fmt.Errorf("no Pss in /proc/%d/smaps_rollup", pid)
	}
	return pss, rss, nil
}
