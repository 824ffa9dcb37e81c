package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/modelcache"
)

// ShareOptions is one run of Share.
type ShareOptions struct {
	// Size is the model's size in bytes.
	Size int64
	// Procs is the number of processes per load mode; at least 1.
	Procs int
	// Dir is the parent of the temporary cache; "" is the system temp
	// directory.
	Dir string
	// Executable is the program started as each holder process; it must
	// call ShareChild first. "" is this process's own executable.
	Executable string
}

// ShareResult is what Share measured: per load mode, the proportional
// and resident set sizes of all the processes together (whole processes,
// runtime included), and the summed PSS as a multiple of the model.
type ShareResult struct {
	SizeBytes    int64   `json:"size_bytes"`
	Procs        int     `json:"procs"`
	MmapPSSBytes int64   `json:"mmap_pss_bytes"`
	MmapRSSBytes int64   `json:"mmap_rss_bytes"`
	MmapPSSRatio float64 `json:"mmap_pss_ratio"`
	ReadPSSBytes int64   `json:"read_pss_bytes"`
	ReadRSSBytes int64   `json:"read_rss_bytes"`
	ReadPSSRatio float64 `json:"read_pss_ratio"`
}

// Share starts o.Procs processes per load mode (mmap, then read) that each
// acquire the same model and touch every page, then sums their
// proportional set sizes from /proc/PID/smaps_rollup: with mmap the
// processes share one copy of the weights, with read each has its own.
func Share(ctx context.Context, o ShareOptions, progress io.Writer) (*ShareResult, error) {
	progress = orDiscard(progress)
	if o.Procs < 1 {
		return nil, errors.New("--procs must be at least 1")
	}
	exe, err := executable(o.Executable)
	if err != nil {
		return nil, err
	}
	root, man, cleanup, err := scratchCache(ctx, o.Dir, o.Size, progress)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	res := &ShareResult{SizeBytes: o.Size, Procs: o.Procs}
	for _, m := range []struct {
		mode          modelcache.LoadMode
		pss, rss      *int64
		pssOfTheModel *float64
	}{
		{modelcache.LoadMMap, &res.MmapPSSBytes, &res.MmapRSSBytes, &res.MmapPSSRatio},
		{modelcache.LoadRead, &res.ReadPSSBytes, &res.ReadRSSBytes, &res.ReadPSSRatio},
	} {
		pss, rss, err := shareRun(ctx, exe, fmt.Sprintf("%s %s %d %s", root, man.Files[0].Digest, o.Size, m.mode), o.Procs, progress)
		if err != nil {
			return nil, fmt.Errorf("%s mode: %w", m.mode, err)
		}
		*m.pss, *m.rss, *m.pssOfTheModel = pss, rss, float64(pss)/float64(o.Size)
		fmt.Fprintf(progress, "%s: %d processes, summed PSS %s (%.2f× the model), summed RSS %s\n",
			m.mode, o.Procs, units.FormatSize(pss), float64(pss)/float64(o.Size), units.FormatSize(rss))
	}
	return res, nil
}

// shareChildEnv carries "<root> <digest> <size> <mode>" to a holder
// process of Share.
const shareChildEnv = "GENFLEET_BENCH_SHARE_CHILD"

// ShareChild makes this process one of Share's holders when it was
// started as one (shareChildEnv set): it acquires the model, touches every
// page, prints "ready" and holds the model until its stdin closes, then
// exits. Otherwise it returns at once. A program that runs Share with its
// own executable calls it before anything else (genfleet does, in an init
// function).
func ShareChild() {
	if spec := os.Getenv(shareChildEnv); spec != "" {
		os.Exit(shareChild(spec))
	}
}

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
	m, err := c.Acquire(context.Background(), scratchManifest(fs[1], size))
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

// shareRun starts n holders with spec, waits until all are ready, and
// returns their summed Pss and Rss from /proc/PID/smaps_rollup.
func shareRun(ctx context.Context, exe, spec string, n int, stderr io.Writer) (pss, rss int64, err error) {
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
		cmd.Stderr = stderr
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
