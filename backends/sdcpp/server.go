package sdcpp

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/genfleet/genfleet/backends"
)

// errNoServer means no engine server could serve the job; Generate falls
// back to a one-shot process when it can.
var errNoServer = errors.New("no engine server")

// serverPool keeps one engine server per model, at most MaxServers, each
// running one generation at a time.
type serverPool struct {
	b      *Backend
	client *http.Client

	mu         sync.Mutex
	servers    map[string]*server
	closed     bool
	stopReaper chan struct{}
	reaperOnce sync.Once
}

// server is one engine server process with one model loaded.
type server struct {
	key     string
	model   string
	base    string // http://127.0.0.1:port
	proc    *process
	out     *engineOutput
	release func() // the server's leases on the model files
	// loraDir is the server's --lora-model-dir: a job links its LoRAs
	// there while it runs (jobs.go).
	loraDir string
	stopped sync.Once
	ready   chan struct{}
	err     error // why the server could not start; read after ready

	gen chan struct{} // one generation at a time (the engine serialises anyway)
	// guarded by serverPool.mu
	busy     int
	lastUsed time.Time
}

func newServerPool(b *Backend) *serverPool {
	return &serverPool{
		b:          b,
		client:     &http.Client{},
		servers:    map[string]*server{},
		stopReaper: make(chan struct{}),
	}
}

// modelKey names a model by its files' roles, digests and the files
// themselves (device and inode): a blob the model cache quarantined (it
// failed re-verification) and fetched again is a new file at the same
// path, and must not be served by a server that loaded the corrupt one,
// whose mapping still holds the old file. That server takes no more jobs
// and stops after its keep-alive, or sooner when its slot is needed.
func modelKey(m backends.Model) string {
	parts := make([]string, len(m.Files))
	for i, f := range m.Files {
		parts[i] = f.Role + "=" + f.Digest + "@" + fileIdentity(f.Path)
	}
	return strings.Join(parts, ",")
}

// fileIdentity is "device:inode" of the file at path, or "" when it cannot
// be read (the server's start then fails on the path itself).
func fileIdentity(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return strconv.FormatUint(uint64(st.Dev), 10) + ":" + strconv.FormatUint(st.Ino, 10)
}

// generate runs one job on the model's server, starting the server when
// there is none. It returns an error wrapping errNoServer when no server
// can take the job (all slots busy with other models, or the server failed
// to start).
func (sp *serverPool) generate(ctx context.Context, m backends.Model, margs []string, p backends.Params, progress backends.ProgressFunc) ([]image.Image, error) {
	s, err := sp.acquire(ctx, m, margs)
	if err != nil {
		return nil, err
	}
	defer sp.releaseServer(s)

	select {
	case s.gen <- struct{}{}:
		defer func() { <-s.gen }()
	case <-ctx.Done():
		return nil, fmt.Errorf("sdcpp: waiting for the engine server's previous job: %w", context.Cause(ctx))
	}
	loras, err := sp.linkLoRAs(ctx, s, m.LoRAs)
	if err != nil {
		return nil, err
	}
	defer loras.remove()
	s.out.setBatch(sampledSteps(p), images(p), progress)
	defer s.out.setJob(0, nil)

	mark := s.out.mark()
	errsBefore := mark.errs // a server's output spans jobs: only this job's errors
	body, _ := json.Marshal(newSdapiRequest(p, m.LoRAs, loras.names))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+sdapiPath(p), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := sp.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			// The engine cannot be told to stop a generation over this
			// API: kill the server (its group) so it does not run on.
			sp.kill(s, "job cancelled or timed out")
			return nil, fmt.Errorf("sdcpp: engine server killed: %w", context.Cause(ctx))
		}
		// The server died under the request (a crash, the OOM killer, a
		// kill from outside) or stopped answering: a fault worth a retry,
		// on a fresh server.
		ended := s.endedHow(time.Second)
		sp.kill(s, "request failed")
		return nil, fmt.Errorf("sdcpp: engine server %s: %w%s%s", s.base, err, ended, s.out.errorSince(errsBefore))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 2*maxOutputBytes))
	if err != nil {
		if ctx.Err() != nil {
			sp.kill(s, "job cancelled or timed out")
			return nil, fmt.Errorf("sdcpp: engine server killed: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("sdcpp: engine server %s: read response: %w", s.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		s.out.awaitError(errsBefore, 300*time.Millisecond)
		msg := errorAnswer(data)
		if why, ok := s.out.refusedSince(mark); ok {
			return nil, refused(filepath.Base(sp.b.server), "answered "+resp.Status+": "+msg, why)
		}
		err := fmt.Errorf("sdcpp: engine server answered %s: %s%s", resp.Status, msg, s.out.errorSince(errsBefore))
		if resp.StatusCode == http.StatusBadRequest {
			err = fmt.Errorf("%w: %w", err, backends.ErrBadParams)
		}
		return nil, err
	}
	s.out.drain(mark, 250*time.Millisecond)
	if d, ok := sp.b.reportLoad(ctx, "server", s.out, mark); ok {
		sp.b.log.Info("engine server loaded the model's weights", "model", s.model, "load_ms", d.Milliseconds())
	}
	if err := loraTrouble(filepath.Base(sp.b.server), s.out, mark); err != nil {
		return nil, err
	}
	var res struct {
		Images []string `json:"images"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("sdcpp: engine server's answer is not the sdapi JSON: %v%s", err, s.out.errorSince(errsBefore))
	}
	if n := images(p); len(res.Images) != n {
		return nil, fmt.Errorf("sdcpp: engine server returned %d image(s), the job asked for %d%s: %w", len(res.Images), n, s.out.errorSince(errsBefore), errBadOutput)
	}
	imgs := make([]image.Image, len(res.Images))
	for k, enc := range res.Images {
		if i := strings.Index(enc, ";base64,"); strings.HasPrefix(enc, "data:") && i >= 0 {
			enc = enc[i+len(";base64,"):]
		}
		png, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, fmt.Errorf("sdcpp: engine server's image %d is not base64: %v%s: %w", k, err, s.out.errorSince(errsBefore), errBadOutput)
		}
		if imgs[k], err = decodeImage(png, s.out.errorSince(errsBefore)); err != nil {
			return nil, err
		}
	}
	return imgs, nil
}

// linkedLoRAs are a job's LoRAs linked into a server's LoRA directory.
type linkedLoRAs struct {
	names  []string
	remove func()
}

// linkLoRAs links the job's LoRAs into s's LoRA directory and has the
// server read its list of LoRAs again (it knows only those listed when it
// last looked), with s's generation slot held.
func (sp *serverPool) linkLoRAs(ctx context.Context, s *server, ls []backends.LoRA) (linkedLoRAs, error) {
	if len(ls) == 0 {
		return linkedLoRAs{remove: func() {}}, nil
	}
	names, remove, err := linkLoRAs(s.loraDir, ls)
	if err != nil {
		return linkedLoRAs{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/sdapi/v1/loras", nil)
	if err == nil {
		var resp *http.Response
		if resp, err = sp.client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("answered %s", resp.Status)
			}
		}
	}
	if err != nil {
		remove()
		return linkedLoRAs{}, fmt.Errorf("sdcpp: engine server %s: list LoRAs: %w", s.base, err)
	}
	return linkedLoRAs{names: names, remove: remove}, nil
}

// acquire returns the running server of the model, starting it if needed,
// and counts the caller as a user.
func (sp *serverPool) acquire(ctx context.Context, m backends.Model, margs []string) (*server, error) {
	key := modelKey(m)
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return nil, fmt.Errorf("sdcpp: backend closed: %w", errNoServer)
	}
	s := sp.servers[key]
	if s != nil && s.exited() {
		sp.forget(s, "exited")
		s = nil
	}
	if s == nil {
		if !sp.makeRoom() {
			sp.mu.Unlock()
			return nil, fmt.Errorf("all %d engine servers are busy with other models: %w", sp.b.cfg.MaxServers, errNoServer)
		}
		s = &server{key: key, model: m.Name, out: &engineOutput{}, ready: make(chan struct{}), gen: make(chan struct{}, 1)}
		sp.servers[key] = s
		go sp.start(s, m, margs)
	}
	s.busy++
	sp.mu.Unlock()

	select {
	case <-s.ready:
	case <-ctx.Done():
		sp.releaseServer(s)
		return nil, fmt.Errorf("sdcpp: waiting for the engine server: %w", context.Cause(ctx))
	}
	if s.err != nil {
		sp.releaseServer(s)
		return nil, s.err
	}
	return s, nil
}

func (sp *serverPool) releaseServer(s *server) {
	sp.mu.Lock()
	s.busy--
	s.lastUsed = time.Now()
	sp.mu.Unlock()
}

// makeRoom stops the least recently used idle server when the pool is
// full; it reports whether there is room. Called with sp.mu held.
func (sp *serverPool) makeRoom() bool {
	if len(sp.servers) < sp.b.cfg.MaxServers {
		return true
	}
	var idle []*server
	for _, s := range sp.servers {
		if s.busy == 0 {
			idle = append(idle, s)
		}
	}
	if len(idle) == 0 {
		return false
	}
	sort.Slice(idle, func(i, j int) bool { return idle[i].lastUsed.Before(idle[j].lastUsed) })
	sp.forget(idle[0], "making room for another model")
	return true
}

// forget removes s from the pool and stops it in the background. Called
// with sp.mu held.
func (sp *serverPool) forget(s *server, why string) {
	if sp.servers[s.key] == s {
		delete(sp.servers, s.key)
	}
	go func() {
		<-s.ready
		s.stop()
		if s.proc != nil {
			sp.b.log.Info("engine server stopped", "model", s.model, "why", why)
		}
	}()
}

// stop kills the server's process group, if it started, and drops its
// leases. Safe to call more than once.
func (s *server) stop() {
	s.stopped.Do(func() {
		if s.proc != nil {
			s.proc.stop()
		}
		if s.release != nil {
			s.release()
		}
		if s.loraDir != "" {
			os.RemoveAll(s.loraDir)
		}
	})
}

// kill stops s at once (a job it was running was cancelled, or it stopped
// answering).
func (sp *serverPool) kill(s *server, why string) {
	s.proc.stop()
	sp.mu.Lock()
	sp.forget(s, why)
	sp.mu.Unlock()
}

// endedHow waits up to d for the server's process to end and says how it
// did (" (the server exited with status 1)"), or "" while it runs.
func (s *server) endedHow(d time.Duration) string {
	select {
	case <-s.proc.done:
		return " (the server " + s.proc.status() + ")"
	case <-time.After(d):
		return ""
	}
}

// errorAnswer is the message of a server's error answer: stable-diffusion.cpp
// answers {"error":"invalid params"} or {"error":"server_error",
// "message":"…"} (an exception); anything else is shown as it came.
func errorAnswer(data []byte) string {
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg = e.Error
		if e.Message != "" {
			msg += ": " + e.Message
		}
	}
	if len(msg) > 500 {
		msg = msg[:500] + "…"
	}
	return msg
}

func (s *server) exited() bool {
	select {
	case <-s.ready:
	default:
		return false
	}
	if s.proc == nil {
		return true
	}
	select {
	case <-s.proc.done:
		return true
	default:
		return false
	}
}

// start runs the server program for the model and waits until it answers
// HTTP; it closes s.ready with s.err set on failure.
func (sp *serverPool) start(s *server, m backends.Model, margs []string) {
	b := sp.b
	fail := func(err error) {
		b.met.serverStarts.WithLabelValues("failed").Inc()
		s.err = fmt.Errorf("sdcpp: start engine server for model %q: %w: %w", m.Name, err, errNoServer)
		s.stop()
		sp.mu.Lock()
		if sp.servers[s.key] == s {
			delete(sp.servers, s.key)
		}
		sp.mu.Unlock()
		close(s.ready)
	}
	if m.Hold != nil {
		release, err := m.Hold()
		if err != nil {
			fail(fmt.Errorf("lease the model files: %w", err))
			return
		}
		s.release = release
	}
	port, err := freePort()
	if err != nil {
		fail(err)
		return
	}
	s.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	if s.loraDir, err = os.MkdirTemp(b.cfg.TmpDir, "genfleet-sdcpp-loras-"); err != nil {
		fail(err)
		return
	}
	t0 := time.Now()
	proc, err := startProcess(b.server, serverArgs(margs, b.cfg.Args, port, s.loraDir, b.cfg.NoMmap), b.cfg.TmpDir, s.out)
	if err != nil {
		fail(err)
		return
	}
	s.proc = proc
	deadline := time.NewTimer(b.cfg.StartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-proc.done:
			err := engineExit(filepath.Base(b.server), proc, s.out, outputMark{})
			if errors.Is(err, backends.ErrBadModel) {
				// No fallback to a process: it would refuse the model too.
				b.met.serverStarts.WithLabelValues("failed").Inc()
				s.err = err
				s.stop()
				sp.mu.Lock()
				if sp.servers[s.key] == s {
					delete(sp.servers, s.key)
				}
				sp.mu.Unlock()
				close(s.ready)
				return
			}
			fail(err)
			return
		case <-deadline.C:
			fail(fmt.Errorf("no answer on %s after %v%s", s.base, b.cfg.StartTimeout, lastLine(s.out)))
			return
		case <-tick.C:
		}
		// Any HTTP answer means the model is loaded: the server listens
		// only once it is.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/sdapi/v1/options", nil)
		resp, err := sp.client.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			break
		}
	}
	b.met.serverStarts.WithLabelValues("ready").Inc()
	b.met.serverStart.Observe(time.Since(t0).Seconds())
	// The engine has read the files' metadata; it loads the weights on
	// the first generation (see generate).
	b.log.Info("engine server ready", "model", m.Name, "addr", s.base, "pid", proc.cmd.Process.Pid, "start_ms", time.Since(t0).Milliseconds())
	close(s.ready)
	sp.reaperOnce.Do(func() { go sp.reap() })
}

// reap stops servers idle for longer than KeepAlive.
func (sp *serverPool) reap() {
	every := max(sp.b.cfg.KeepAlive/4, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-sp.stopReaper:
			return
		case <-t.C:
		}
		sp.mu.Lock()
		for _, s := range sp.servers {
			if s.exited() {
				sp.b.log.Warn("engine server exited", "model", s.model, "last_output", s.out.lastError())
				sp.forget(s, "exited")
				continue
			}
			if s.busy == 0 && !s.lastUsed.IsZero() && time.Since(s.lastUsed) > sp.b.cfg.KeepAlive {
				sp.forget(s, "idle for the keep-alive")
			}
		}
		sp.mu.Unlock()
	}
}

// running reports the models with a live server, for tests and logs.
func (sp *serverPool) running() []string {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var out []string
	for _, s := range sp.servers {
		out = append(out, s.model)
	}
	sort.Strings(out)
	return out
}

func (sp *serverPool) close() {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.closed = true
	close(sp.stopReaper)
	all := make([]*server, 0, len(sp.servers))
	for _, s := range sp.servers {
		all = append(all, s)
	}
	sp.servers = map[string]*server{}
	sp.mu.Unlock()
	for _, s := range all {
		<-s.ready
		s.stop()
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
