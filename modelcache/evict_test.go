package modelcache

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startReader starts slowReader on blob hex in the cache at root and waits
// for it to map the blob and hash the first half.
func startReader(t *testing.T, root, hex string, size int64) (cmd *exec.Cmd, lines *bufio.Reader, resume func(), stop func()) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), readerEnv+"="+helperSpec(root, hex, size))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			stdin.Close()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(func() { cmd.Process.Kill(); stop() })
	lines = bufio.NewReader(out)
	for _, want := range []string{"mapped", "half"} {
		expectLine(t, lines, want)
	}
	return cmd, lines, func() { stdin.Write([]byte("go\n")) }, stop
}

func expectLine(t *testing.T, r *bufio.Reader, prefix string) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, prefix) {
		t.Fatalf("helper said %q, %v; want %q (a helper killed by SIGBUS says nothing more)", line, err, prefix)
	}
	return strings.TrimSpace(strings.TrimPrefix(line, prefix))
}

// mapsOf returns the lines of /proc/<pid>/maps that map path.
func mapsOf(t *testing.T, pid int, path string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, path) {
			out = append(out, l)
		}
	}
	return out
}

// A blob another process has mapped is never evicted (TryEvict, Remove
// and GC all refuse), and unlinking it anyway (the only thing eviction
// ever does to a file) leaves that process reading correct bytes, with no
// SIGBUS, even for pages that had to come back from disk after the unlink.
// Once the reader unmaps, nothing holds the inode any more.
func TestEvictWhileAnotherProcessReads(t *testing.T) {
	root := t.TempDir()
	c := openCache(t, root, nil)
	data := randomBytes(16<<20, 21)
	d := importBlob(t, c, data)
	hex := d[len("sha256:"):]
	path := c.blobPath(hex)

	cmd, lines, resume, stop := startReader(t, root, hex, int64(len(data)))
	pid := cmd.Process.Pid

	if ok, err := c.TryEvict(d); ok || err != nil {
		t.Fatalf("TryEvict of a blob mapped by pid %d: %v, %v; want false, nil", pid, ok, err)
	}
	if err := c.Remove(d); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove of a mapped blob: %v, want ErrInUse", err)
	}
	res, err := openOpts(t, root, nil, Options{Budget: 1}).GC(t.Context())
	if err != nil || len(res.Evicted) != 0 || res.SkippedInUse != 1 {
		t.Fatalf("GC with a mapped blob over budget: %+v, %v; want nothing evicted, 1 skipped", res, err)
	}
	infos, err := c.List()
	if err != nil || len(infos) != 1 || !infos[0].InUse {
		t.Fatalf("List: %+v, %v; want the blob, in use", infos, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the mapped blob is gone: %v", err)
	}

	// Unlink under the reader, with the unread half pushed out of the page
	// cache so that it must be read from the now nameless inode.
	dropPageCache(t, path)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if m := mapsOf(t, pid, path); len(m) == 0 || !strings.Contains(m[0], "(deleted)") {
		t.Fatalf("reader's maps for the unlinked blob: %q; want a (deleted) mapping", m)
	}
	resume()
	if sum := expectLine(t, lines, "sum "); sum != hex {
		t.Fatalf("reader hashed sha256:%s, want %s", sum, d)
	}
	expectLine(t, lines, "closed")
	// The reader is alive but has unmapped and released the lease: no
	// mapping and no descriptor of the inode remain, so its blocks are free.
	if m := mapsOf(t, pid, path); len(m) != 0 {
		t.Fatalf("reader still maps the blob after Close: %q", m)
	}
	fds, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/fd/*")
	for _, fd := range fds {
		if target, _ := os.Readlink(fd); strings.HasPrefix(target, path) {
			t.Fatalf("reader still holds %s open as %s after Close", target, fd)
		}
	}
	stop()
	if st := cmd.ProcessState; st == nil || !st.Success() {
		t.Fatalf("reader exited with %v", st)
	}
}

// A leased blob is never evicted; idle ones go least recently used first,
// and last use survives opening the cache again.
func TestGCEvictsLRUAndSkipsLeased(t *testing.T) {
	root := t.TempDir()
	c := openCache(t, root, nil)
	const size = 1 << 20
	var digests [3]string
	for i := range digests {
		digests[i] = importBlob(t, c, randomBytes(size, uint64(100+i)))
	}
	a, b, cc := digests[0], digests[1], digests[2]
	// Use order: b (kept leased), cc, a. b is the least recently used.
	held := acquire(t, c, importedManifest(b, size))
	for _, d := range []string{cc, a} {
		time.Sleep(2 * time.Millisecond)
		m := acquire(t, c, importedManifest(d, size))
		m.Close()
	}

	// A new Cache, as after a restart, sees the same order.
	c2 := openOpts(t, root, nil, Options{Budget: 2*size + size/2})
	infos, err := c2.List()
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, bi := range infos {
		order = append(order, bi.Digest)
	}
	if want := []string{b, cc, a}; strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("List order %v, want %v (least recently used first)", order, want)
	}
	if !infos[0].InUse || infos[1].InUse || infos[2].InUse {
		t.Fatalf("in use: %v %v %v; want only the held blob", infos[0].InUse, infos[1].InUse, infos[2].InUse)
	}
	used, budget, err := c2.Usage()
	if err != nil || used != 3*size || budget != 2*size+size/2 {
		t.Fatalf("Usage = %d, %d, %v", used, budget, err)
	}

	res, err := c2.GC(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 1 || res.Evicted[0].Digest != cc || res.Freed != size || res.SkippedInUse != 1 || res.Used != 2*size {
		t.Fatalf("GC: %+v; want only %s evicted (the leased %s skipped)", res, cc, b)
	}
	for d, want := range map[string]bool{a: true, b: true, cc: false} {
		if _, err := os.Stat(c.blobPath(d[len("sha256:"):])); (err == nil) != want {
			t.Errorf("%s present = %v, want %v", d, err == nil, want)
		}
	}
	if _, err := os.Stat(c.usePath(cc[len("sha256:"):])); !os.IsNotExist(err) {
		t.Errorf("use record of the evicted blob left behind: %v", err)
	}

	// Once released, the held blob is fair game.
	held.Close()
	res, err = openOpts(t, root, nil, Options{Budget: 1}).GC(t.Context())
	if err != nil || len(res.Evicted) != 2 || res.Evicted[0].Digest != b || res.Used != 0 {
		t.Fatalf("GC after release: %+v, %v; want %s then %s evicted", res, err, b, a)
	}
}

func TestBudgetPercent(t *testing.T) {
	root := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	total := float64(st.Blocks) * float64(st.Bsize)
	c := openOpts(t, root, nil, Options{BudgetPercent: 50})
	if b, err := c.Budget(); err != nil || b != int64(total*0.5) {
		t.Fatalf("50%% budget = %d, %v; want %d", b, err, int64(total*0.5))
	}
	// A percentage that comes to less than one blob: GC evicts it.
	tiny := 100 * float64(512<<10) / total
	c = openOpts(t, root, nil, Options{BudgetPercent: tiny})
	d := importBlob(t, c, randomBytes(1<<20, 31))
	res, err := c.GC(t.Context())
	if err != nil || len(res.Evicted) != 1 || res.Evicted[0].Digest != d {
		t.Fatalf("GC at %g%%: %+v, %v", tiny, res, err)
	}
}

// Acquire runs GC after it fetched something and the cache is over budget,
// and never evicts what it is about to return.
func TestAcquireGCsAfterFetch(t *testing.T) {
	e := newEnv(t)
	root := t.TempDir()
	m1, _ := e.push(t, "one", 1<<20)
	m2, data2 := e.push(t, "two", 1<<20)
	c := openOpts(t, root, e.src, Options{Budget: 1<<20 + 1})
	acquire(t, c, m1).Close()
	mod := acquire(t, c, m2)
	if !bytes.Equal(mod.Blobs[0].Data, data2) {
		t.Fatal("wrong bytes")
	}
	infos, err := c.List()
	if err != nil || len(infos) != 1 || infos[0].Digest != m2.Files[0].Digest {
		t.Fatalf("after the second fetch: %+v, %v; want only %s", infos, err, m2.Files[0].Digest)
	}
}

func TestRemove(t *testing.T) {
	root := t.TempDir()
	c := openCache(t, root, nil)
	d := importBlob(t, c, randomBytes(1<<20, 41))
	if err := c.Remove("sha256:" + strings.Repeat("a", 64)); !errors.Is(err, ErrNotCached) {
		t.Fatalf("Remove of a missing blob: %v", err)
	}
	if err := c.Remove("nonsense"); err == nil {
		t.Fatal("Remove of a malformed digest succeeded")
	}
	m := acquire(t, c, importedManifest(d, 1<<20))
	err := c.Remove(d)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("Remove of a leased blob: %v", err)
	}
	m.Close()
	if err := c.Remove(d); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, filepath.Join(root, blobsDir)); len(names) != 0 {
		t.Fatalf("blobs/ after Remove: %v", names)
	}
}
