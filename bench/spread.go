package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/units"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/peer"
)

// SpreadOptions is one run of Spread.
type SpreadOptions struct {
	// Hosts is how many hosts cold-start the model at once; at least 2.
	Hosts int
	// Size is the model's size in bytes.
	Size int64
	// PartSize is the part size of the model's part digests; 0:
	// modelcache.PartSizeFor(Size).
	PartSize int64
	// S3Bandwidth caps, in bytes per second, what the S3 server sends to
	// all hosts together (the throttling proxy in front of it).
	S3Bandwidth float64
	// PeerBandwidth caps what each host's blob server sends; 0:
	// peer.DefaultBandwidth, negative: no cap.
	PeerBandwidth float64
	// Faults adds the fault runs: the host pulling from S3 for the others
	// SIGKILLed mid-transfer, and a peer serving corrupt parts.
	Faults bool
	// Dir is the parent of the temporary files (S3's data, the hosts'
	// caches); "" is the system temp directory.
	Dir string
	// Executable is the program started as each host; it must call
	// SpreadChild first. "" is this process's own executable.
	Executable string
	// Verbose copies the hosts' logs to the progress writer.
	Verbose bool
}

// SpreadResult is what Spread measured. Every run uses the same model, the
// same S3 server behind the same throttle, and fresh caches.
type SpreadResult struct {
	Hosts          int     `json:"hosts"`
	ModelBytes     int64   `json:"model_bytes"`
	PartSize       int64   `json:"part_size"`
	S3BandwidthBps float64 `json:"s3_bandwidth_bytes_per_s"`
	// AloneSeconds is one host alone fetching the model from the
	// throttled S3: the time anchor.
	AloneSeconds float64 `json:"alone_s"`
	// S3Only is every host fetching from S3 (no fleet token): the S3-bytes
	// anchor (about Hosts × the model).
	S3Only SpreadRun `json:"s3_only"`
	// Peers is every host with the fleet-wide cache.
	Peers SpreadRun `json:"peers"`
	// S3BytesRatio is Peers' s3_bytes / model_bytes (target ≤ 1.2);
	// S3OnlyBytesRatio the anchor's.
	S3BytesRatio     float64 `json:"s3_bytes_ratio"`
	S3OnlyBytesRatio float64 `json:"s3_only_s3_bytes_ratio"`
	// TimeAllWarmVsAlone is Peers' time until every host is warm over
	// AloneSeconds (target ≤ 1.5); S3OnlyVsAlone the anchor's.
	TimeAllWarmVsAlone float64 `json:"time_all_warm_vs_alone"`
	S3OnlyVsAlone      float64 `json:"s3_only_time_all_warm_vs_alone"`
	// DiskWriteBps is the durable write rate of the disk every host's
	// cache shares here (the model's size, written and fsynced once, in
	// this run): on one machine the hosts of a run write Hosts × the model
	// to one disk, which DiskBoundSeconds is the time for, and
	// TimeAllWarmVsDiskBound is Peers' time over it.
	DiskWriteBps           float64 `json:"disk_write_bytes_per_s"`
	DiskBoundSeconds       float64 `json:"disk_bound_s"`
	TimeAllWarmVsDiskBound float64 `json:"time_all_warm_vs_disk_bound"`
	// SHA256Bps is one core's sha256 rate over bytes in memory, measured
	// in this run. Every host hashes its copy twice (each part as it
	// lands, and the whole file): on one machine that is 2 × Hosts × the
	// model on CPUs cores, which VerifyBoundSeconds is the time for, and
	// TimeAllWarmVsVerifyBound is Peers' time over it.
	SHA256Bps                float64 `json:"sha256_bytes_per_s"`
	CPUs                     int     `json:"host_cpus"`
	VerifyBoundSeconds       float64 `json:"verify_bound_s"`
	TimeAllWarmVsVerifyBound float64 `json:"time_all_warm_vs_verify_bound"`
	// Killed and Liar are the fault runs (Faults).
	Killed *SpreadRun `json:"killed,omitempty"`
	Liar   *SpreadRun `json:"liar,omitempty"`
}

// SpreadRun is one run: hosts started together, each until its model is
// acquired and verified.
type SpreadRun struct {
	// Hosts had to end warm (a killed host does not count); Warm did,
	// each with the verified blob in its cache.
	Hosts int `json:"hosts"`
	Warm  int `json:"warm"`
	// TimeAllWarmSeconds is from the start until the last host was warm;
	// HostSeconds each host's time.
	TimeAllWarmSeconds float64   `json:"time_all_warm_s"`
	HostSeconds        []float64 `json:"host_s"`
	// S3Bytes is what the S3 server sent through the throttle (the
	// model's GETs, plus manifests and headers: a few KB).
	S3Bytes      int64   `json:"s3_bytes"`
	S3BytesRatio float64 `json:"s3_bytes_ratio"`
	// PeerBytes is what the hosts received from each other.
	PeerBytes int64 `json:"peer_bytes"`
	// CorruptParts were thrown away after failing their digest;
	// PeersAvoided counts peers put aside (summed over hosts).
	CorruptParts int `json:"corrupt_parts"`
	PeersAvoided int `json:"peers_avoided"`
	// Elected counts hosts that won a lease to pull from S3.
	Elected int `json:"elected"`
	// Killed names the host SIGKILLed mid-transfer (the kill run).
	Killed string `json:"killed,omitempty"`
}

const spreadBucket = "spread-models"

// fleetToken is the token of Spread's fleets (processes of one run only).
const spreadToken = "genfleet-bench-spread-fleet-token"

// Spread starts o.Hosts host processes (separate caches and blob servers on
// one machine) that cold-start the same model against the real S3 server
// behind a throttling proxy: one host alone (the time anchor), every host
// from S3 only (the S3-bytes anchor), then every host with the fleet-wide
// cache; and with o.Faults, the fault runs.
func Spread(ctx context.Context, o SpreadOptions, progress io.Writer) (*SpreadResult, error) {
	progress = orDiscard(progress)
	if o.Hosts < 2 {
		return nil, errors.New("--hosts must be at least 2")
	}
	if o.Size <= 0 {
		return nil, errors.New("--size must be above 0")
	}
	if o.S3Bandwidth <= 0 {
		return nil, errors.New("--s3-bandwidth must be above 0")
	}
	if o.PartSize == 0 {
		o.PartSize = modelcache.PartSizeFor(o.Size)
	}
	if o.PartSize < modelcache.MinManifestPartSize {
		return nil, fmt.Errorf("--part-size must be at least %d", modelcache.MinManifestPartSize)
	}
	exe, err := executable(o.Executable)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(o.Dir, "genfleet-bench-spread-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	redisOpt, stopRedis, err := startRedis(nil)
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	redisAddr := redisOpt.(asynq.RedisClientOpt).Addr
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	cl, s3cfg, stopS3, err := startS3(ctx, s3x.Config{}, tmp, spreadBucket)
	if err != nil {
		return nil, err
	}
	defer stopS3()

	fmt.Fprintf(progress, "writing and pushing a %s model (parts of %s)...\n", units.FormatSize(o.Size), units.FormatSize(o.PartSize))
	file := filepath.Join(tmp, "model.safetensors")
	if err := writeModel(file, o.Size, 7); err != nil {
		return nil, err
	}
	reg := &modelcache.Registry{Src: modelcache.NewS3Source(cl), Root: s3x.URL{Bucket: spreadBucket}, PartSize: o.PartSize}
	man, err := reg.Push(ctx, file, s3x.URL{Bucket: spreadBucket, Key: "blobs/"}, "spread", nil)
	if err != nil {
		return nil, err
	}
	os.Remove(file)

	th, err := startThrottle(strings.TrimPrefix(s3cfg.Endpoint, "http://"), o.S3Bandwidth)
	if err != nil {
		return nil, err
	}
	defer th.Close()
	childS3 := s3cfg
	childS3.Endpoint = "http://" + th.Addr()

	sp := &spreader{o: o, exe: exe, tmp: tmp, redis: redisAddr, rdb: rdb, s3: childS3, th: th, man: man, progress: progress}
	res := &SpreadResult{Hosts: o.Hosts, ModelBytes: o.Size, PartSize: o.PartSize, S3BandwidthBps: o.S3Bandwidth}

	alone, err := sp.run(ctx, "alone", 1, false, nil)
	if err != nil {
		return nil, err
	}
	res.AloneSeconds = alone.TimeAllWarmSeconds
	if res.S3Only, err = sp.run(ctx, "s3-only", o.Hosts, false, nil); err != nil {
		return nil, err
	}
	if res.Peers, err = sp.run(ctx, "peers", o.Hosts, true, nil); err != nil {
		return nil, err
	}
	if res.DiskWriteBps, err = diskWriteRate(tmp, o.Size); err != nil {
		return nil, err
	}
	res.DiskBoundSeconds = round3(float64(o.Hosts) * float64(o.Size) / res.DiskWriteBps)
	res.TimeAllWarmVsDiskBound = round3(res.Peers.TimeAllWarmSeconds / res.DiskBoundSeconds)
	fmt.Fprintf(progress, "disk: %s/s durable writes; %d hosts × %s take at least %.1fs to write\n",
		units.FormatSize(int64(res.DiskWriteBps)), o.Hosts, units.FormatSize(o.Size), res.DiskBoundSeconds)
	res.SHA256Bps, res.CPUs = sha256Rate(), runtime.NumCPU()
	res.VerifyBoundSeconds = round3(2 * float64(o.Hosts) * float64(o.Size) / (res.SHA256Bps * float64(res.CPUs)))
	res.TimeAllWarmVsVerifyBound = round3(res.Peers.TimeAllWarmSeconds / res.VerifyBoundSeconds)
	fmt.Fprintf(progress, "sha256: %s/s per core; hashing %d hosts × %s twice on %d cores takes at least %.1fs\n",
		units.FormatSize(int64(res.SHA256Bps)), o.Hosts, units.FormatSize(o.Size), res.CPUs, res.VerifyBoundSeconds)
	res.S3BytesRatio = round3(float64(res.Peers.S3Bytes) / float64(o.Size))
	res.S3OnlyBytesRatio = round3(float64(res.S3Only.S3Bytes) / float64(o.Size))
	res.TimeAllWarmVsAlone = round3(res.Peers.TimeAllWarmSeconds / res.AloneSeconds)
	res.S3OnlyVsAlone = round3(res.S3Only.TimeAllWarmSeconds / res.AloneSeconds)
	if o.Faults {
		killed, err := sp.run(ctx, "killed", o.Hosts, true, sp.killLeader)
		if err != nil {
			return nil, err
		}
		res.Killed = &killed
		liar, err := sp.liarRun(ctx)
		if err != nil {
			return nil, err
		}
		res.Liar = &liar
	}
	return res, nil
}

// diskWriteRate writes size bytes to a file in dir, fsyncs it and returns
// bytes per second (the anchor of the fetch benchmark, once).
func diskWriteRate(dir string, size int64) (float64, error) {
	path := filepath.Join(dir, "disk-anchor")
	defer os.Remove(path)
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	syncDisk()
	t := time.Now()
	for left := size; left > 0; {
		n, err := f.Write(buf[:min(int64(len(buf)), left)])
		if err != nil {
			return 0, err
		}
		left -= int64(n)
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return float64(size) / time.Since(t).Seconds(), nil
}

// sha256Rate returns one goroutine's sha256 rate over 256 MiB in memory,
// bytes per second.
func sha256Rate() float64 {
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i*13 + i>>9)
	}
	h := sha256.New()
	t := time.Now()
	for range 64 {
		h.Write(buf)
	}
	h.Sum(nil)
	return float64(64*len(buf)) / time.Since(t).Seconds()
}

// spreader runs Spread's runs.
type spreader struct {
	o        SpreadOptions
	exe, tmp string
	redis    string
	rdb      *redis.Client
	s3       s3x.Config
	th       *throttle
	man      *modelcache.Manifest
	progress io.Writer
	runs     int
}

// spreadHost is one host process of a run.
type spreadHost struct {
	name  string
	root  string
	addr  string // its blob server; "" without
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	// report is the host's line once it is warm.
	report spreadReport
	warmAt time.Duration
	err    error
}

// spreadReport is what a host prints once its model is acquired.
type spreadReport struct {
	Seconds      float64 `json:"s"`
	Fetched      int64   `json:"fetched"`
	PeerBytes    int64   `json:"peer_bytes"`
	CorruptParts int     `json:"corrupt_parts"`
	Avoided      int     `json:"avoided"`
	Elected      int     `json:"elected"`
	Error        string  `json:"error,omitempty"`
}

// during, when set, runs alongside a run's hosts (a fault to inject); it
// returns the name of a host it killed, if any.
type during func(ctx context.Context, hosts []*spreadHost) (string, error)

// run starts n hosts (with the fleet-wide cache when peers), starts them
// fetching at the same moment and waits until each is warm (or killed).
// Hosts started before (liarRun's) keep serving meanwhile.
func (sp *spreader) run(ctx context.Context, name string, n int, peers bool, fault during) (SpreadRun, error) {
	sp.runs++
	fmt.Fprintf(sp.progress, "run %s: %d host(s)%s...\n", name, n, map[bool]string{true: " with peers", false: ", S3 only"}[peers])
	if name != "liar" {
		// A fresh fleet: no heartbeat, swarm or lease of an earlier run's
		// hosts (the liar run keeps its liar's).
		if err := sp.rdb.FlushDB(ctx).Err(); err != nil {
			return SpreadRun{}, err
		}
	}
	sp.th.reset()
	hosts := make([]*spreadHost, n)
	defer func() {
		for _, h := range hosts {
			if h != nil {
				h.stop()
				os.RemoveAll(h.root)
			}
		}
	}()
	for i := range hosts {
		h, err := sp.start(ctx, fmt.Sprintf("%s-%d", name, i), peers, false)
		if err != nil {
			return SpreadRun{}, err
		}
		hosts[i] = h
	}
	start := time.Now()
	for _, h := range hosts {
		if _, err := io.WriteString(h.stdin, "go\n"); err != nil {
			return SpreadRun{}, fmt.Errorf("host %s: %w", h.name, err)
		}
	}
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() { h.wait(start) })
	}
	var killed string
	if fault != nil {
		var err error
		if killed, err = fault(ctx, hosts); err != nil {
			return SpreadRun{}, err
		}
	}
	wg.Wait()
	r := SpreadRun{Hosts: n, S3Bytes: sp.th.down.Load(), Killed: killed}
	for _, h := range hosts {
		if h.name == killed {
			r.Hosts--
			continue
		}
		if h.err != nil {
			return r, fmt.Errorf("run %s: host %s: %w", name, h.name, h.err)
		}
		if err := sp.checkBlob(h); err != nil {
			return r, fmt.Errorf("run %s: host %s: %w", name, h.name, err)
		}
		r.Warm++
		sec := h.warmAt.Seconds()
		r.HostSeconds = append(r.HostSeconds, round3(sec))
		r.TimeAllWarmSeconds = max(r.TimeAllWarmSeconds, round3(sec))
		r.PeerBytes += h.report.PeerBytes
		r.CorruptParts += h.report.CorruptParts
		r.PeersAvoided += h.report.Avoided
		r.Elected += h.report.Elected
	}
	r.S3BytesRatio = round3(float64(r.S3Bytes) / float64(sp.o.Size))
	fmt.Fprintf(sp.progress, "run %s: %d/%d warm in %.2fs, S3 sent %s (%.2f× the model), peers %s, %d corrupt part(s) caught\n",
		name, r.Warm, r.Hosts, r.TimeAllWarmSeconds, units.FormatSize(r.S3Bytes), r.S3BytesRatio, units.FormatSize(r.PeerBytes), r.CorruptParts)
	return r, nil
}

// checkBlob checks that h's cache holds the model's blob, whole: the host
// verified it (Acquire installs nothing that does not hash to its digest);
// this guards against a host that reported success without it.
func (sp *spreader) checkBlob(h *spreadHost) error {
	f := sp.man.Files[0]
	st, err := os.Stat(filepath.Join(h.root, "blobs", strings.Replace(f.Digest, ":", "-", 1)))
	if err != nil {
		return fmt.Errorf("no verified blob in its cache: %w", err)
	}
	if st.Size() != f.Size {
		return fmt.Errorf("blob of %d bytes, want %d", st.Size(), f.Size)
	}
	return nil
}

// start starts a host process and waits until it is ready (its blob
// server listening).
func (sp *spreader) start(ctx context.Context, name string, peers, liar bool) (*spreadHost, error) {
	h := &spreadHost{name: name, root: filepath.Join(sp.tmp, "hosts", fmt.Sprintf("%d-%s", sp.runs, name))}
	spec := spreadChildSpec{Name: name, Root: h.root, Redis: sp.redis, S3: sp.s3, Model: sp.man.Name,
		Registry: "s3://" + spreadBucket + "/", PeerBandwidth: sp.o.PeerBandwidth, Liar: liar}
	if peers {
		spec.Token = spreadToken
	}
	b, _ := json.Marshal(spec)
	cmd := exec.CommandContext(ctx, sp.exe)
	cmd.Env = append(os.Environ(), spreadChildEnv+"="+string(b))
	tail := &tailBuffer{max: 8 << 10}
	cmd.Stderr = tail
	if sp.o.Verbose {
		cmd.Stderr = io.MultiWriter(tail, sp.progress)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h.cmd, h.stdin, h.out = cmd, stdin, bufio.NewReader(out)
	line, err := h.out.ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ready")
	if err != nil || !ok {
		h.stop()
		return nil, fmt.Errorf("host %s said %q (%v): %s", name, line, err, cmd.Stderr)
	}
	h.addr = strings.TrimSpace(addr)
	return h, nil
}

// wait reads h's report; warmAt is when it arrived, from start.
func (h *spreadHost) wait(start time.Time) {
	line, err := h.out.ReadString('\n')
	h.warmAt = time.Since(start)
	if err != nil {
		h.err = fmt.Errorf("exited before it was warm (%v): %s", err, h.cmd.Stderr)
		return
	}
	if err := json.Unmarshal([]byte(line), &h.report); err != nil {
		h.err = fmt.Errorf("said %q", line)
		return
	}
	if h.report.Error != "" {
		h.err = errors.New(h.report.Error)
	}
}

// stop closes h's stdin (it exits) and waits for it.
func (h *spreadHost) stop() {
	if h.cmd == nil || h.cmd.ProcessState != nil {
		return
	}
	h.stdin.Close()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
	}
}

// killLeader waits until S3 has sent half the model, then SIGKILLs the host
// that holds the model's lease: the one pulling it from S3 while the others
// stream its parts.
func (sp *spreader) killLeader(ctx context.Context, hosts []*spreadHost) (string, error) {
	key := "genfleet:peer:lease:" + sp.man.Files[0].Digest
	for {
		if sp.th.down.Load() >= sp.o.Size/2 {
			addr, err := sp.rdb.Get(ctx, key).Result()
			if err == nil {
				for _, h := range hosts {
					if h.addr == addr {
						_ = h.cmd.Process.Kill()
						fmt.Fprintf(sp.progress, "killed %s (the host pulling from S3) after S3 sent %s\n", h.name, units.FormatSize(sp.th.down.Load()))
						return h.name, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// liarRun warms one host alone, then makes it serve corrupt bytes (a
// fault-injecting wrapper around its real blob server) while the other
// hosts cold-start.
func (sp *spreader) liarRun(ctx context.Context) (SpreadRun, error) {
	if err := sp.rdb.FlushDB(ctx).Err(); err != nil {
		return SpreadRun{}, err
	}
	liar, err := sp.start(ctx, "liar", true, true)
	if err != nil {
		return SpreadRun{}, err
	}
	defer func() { liar.stop(); os.RemoveAll(liar.root) }()
	if _, err := io.WriteString(liar.stdin, "go\n"); err != nil {
		return SpreadRun{}, err
	}
	liar.wait(time.Now())
	if liar.err != nil {
		return SpreadRun{}, fmt.Errorf("liar host: %w", liar.err)
	}
	// Let its heartbeat advertise the blob before the others start.
	time.Sleep(time.Second)
	return sp.run(ctx, "liar", sp.o.Hosts-1, true, nil)
}

// spreadChildEnv carries a spreadChildSpec (JSON) to a host process.
const spreadChildEnv = "GENFLEET_BENCH_SPREAD_CHILD"

// spreadChildSpec tells a host process what to be.
type spreadChildSpec struct {
	Name          string     `json:"name"`
	Root          string     `json:"root"`
	Redis         string     `json:"redis"`
	S3            s3x.Config `json:"s3"`
	Registry      string     `json:"registry"`
	Model         string     `json:"model"`
	Token         string     `json:"token"`
	PeerBandwidth float64    `json:"peer_bandwidth"`
	Liar          bool       `json:"liar"`
}

// SpreadChild makes this process one of Spread's hosts when it was started
// as one (spreadChildEnv set): it opens its cache (with the fleet-wide
// cache when its spec has a token: peer source, blob server, heartbeats),
// prints "ready <blob server address>", waits for "go" on stdin, acquires
// the model, prints its report as one JSON line and serves its peers until
// stdin closes. Otherwise it returns at once. A program that runs Spread
// with its own executable calls it before anything else.
func SpreadChild() {
	if spec := os.Getenv(spreadChildEnv); spec != "" {
		os.Exit(spreadChild(spec))
	}
}

func spreadChild(raw string) int {
	var spec spreadChildSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "bad", spreadChildEnv, err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, spec.Name+":", err)
		return 1
	}
	cl, err := s3x.NewClient(ctx, spec.S3)
	if err != nil {
		return fail(err)
	}
	root, err := s3x.ParseURL(spec.Registry)
	if err != nil {
		return fail(err)
	}
	origin := modelcache.NewS3Source(cl)
	reg := &modelcache.Registry{Src: origin, Root: root}
	metrics := prometheus.NewRegistry()
	var src modelcache.Source = origin
	var addr string
	var ln net.Listener
	var rdb *redis.Client
	if spec.Token != "" {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return fail(err)
		}
		addr = ln.Addr().String()
		rdb = redis.NewClient(&redis.Options{Addr: spec.Redis})
		defer rdb.Close()
		if src, err = peer.NewSource(peer.SourceConfig{Origin: origin, Fleet: peer.NewHeartbeatFleet(rdb), Redis: rdb,
			Token: spec.Token, Self: addr, Metrics: metrics}); err != nil {
			return fail(err)
		}
	}
	cache, err := modelcache.OpenWith(spec.Root, src, modelcache.Options{})
	if err != nil {
		return fail(err)
	}
	if ln != nil {
		srv, err := peer.NewServer(peer.ServerConfig{Cache: cache, Token: spec.Token, Bandwidth: spec.PeerBandwidth, Metrics: metrics})
		if err != nil {
			return fail(err)
		}
		var h http.Handler = srv
		if spec.Liar {
			h = corruptingHandler(srv)
		}
		hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
		go spreadBeat(ctx, job.NewFleet(rdb), cache, spec.Name, addr)
	}
	fmt.Printf("ready %s\n", addr)
	in := bufio.NewReader(os.Stdin)
	if line, err := in.ReadString('\n'); err != nil || strings.TrimSpace(line) != "go" {
		return fail(fmt.Errorf("expected go on stdin, got %q (%v)", line, err))
	}
	t := time.Now()
	rep := spreadReport{}
	man, err := reg.Resolve(ctx, spec.Model)
	if err == nil {
		var m *modelcache.Model
		if m, err = cache.Acquire(ctx, man); err == nil {
			rep.Fetched = m.Report.FetchedBytes
			m.Close()
		}
	}
	rep.Seconds = time.Since(t).Seconds()
	if err != nil {
		rep.Error = err.Error()
	}
	rep.PeerBytes = int64(gatherCounter(metrics, "genfleet_peer_fetched_bytes_total", "from", "peer"))
	rep.CorruptParts = int(gatherCounter(metrics, "genfleet_peer_parts_total", "result", "corrupt"))
	rep.Avoided = int(gatherCounter(metrics, "genfleet_peer_avoided_total", "", ""))
	rep.Elected = int(gatherCounter(metrics, "genfleet_peer_elections_total", "result", "won"))
	b, _ := json.Marshal(rep)
	fmt.Println(string(b))
	io.Copy(io.Discard, in) // serve until told to stop
	return 0
}

// spreadBeat publishes the host's heartbeat (what its blob server offers)
// every 250ms, as a worker does every --heartbeat-interval.
func spreadBeat(ctx context.Context, f *job.Fleet, cache *modelcache.Cache, name, addr string) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		if st, err := peer.State(cache, addr); err == nil {
			_ = f.Beat(ctx, &job.Heartbeat{Host: name, PID: os.Getpid(), At: time.Now(), Peer: st}, 2*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// corruptingHandler wraps a real blob server: every blob body it sends
// has one byte flipped, what a peer with bad memory or a bad disk would
// send.
func corruptingHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&flipWriter{ResponseWriter: w}, r)
	})
}

type flipWriter struct {
	http.ResponseWriter
	flipped bool
}

func (w *flipWriter) Write(p []byte) (int, error) {
	if !w.flipped && len(p) > 0 && w.Header().Get("Content-Type") == "application/octet-stream" {
		q := append([]byte(nil), p...)
		q[len(q)/2] ^= 0x01
		w.flipped = true
		return w.ResponseWriter.Write(q)
	}
	return w.ResponseWriter.Write(p)
}

// gatherCounter sums the counter name in reg over the series whose label
// has value (every series when label is "").
func gatherCounter(reg *prometheus.Registry, name, label, value string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := label == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					ok = true
				}
			}
			if ok {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// tailBuffer keeps the last max bytes written to it (a child's stderr, for
// error messages).
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
