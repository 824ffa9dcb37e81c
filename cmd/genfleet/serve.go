package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/backends"
	_ "github.com/genfleet/genfleet/backends/cpu"  // registers "cpu"
	_ "github.com/genfleet/genfleet/backends/cuda" // registers "cuda"
	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/internal/redisx"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/peer"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/worker"
)

func cmdScheduler(ctx context.Context, args []string, stderr io.Writer) error {
	f := cli.NewFlags("scheduler", stderr)
	c := cli.AddCommon(f)
	listen := f.EnvString("listen", "GENFLEET_LISTEN", ":8080", "HTTP listen address")
	pool := f.EnvString("pool", "GENFLEET_POOL", "cpu", "device class whose pool queue receives jobs")
	rf := addRoutingFlags(f)
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	// Refuse an open API on a reachable address before binding anything.
	if err := checkAPIExposure(*listen, rf.apiTokens(), *rf.allowUnauth); err != nil {
		return err
	}
	log := c.Logger(stderr)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	return serveScheduler(ctx, c, ln, *pool, rf, log)
}

// loopbackOnly reports whether a listener on addr ("host:port") can be
// reached from this host only: host is a loopback address or "localhost".
// An empty host or an unspecified address (":8080", "0.0.0.0:8080",
// "[::]:8080") binds every interface, and any other name may resolve to
// an address other hosts reach, so neither counts.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkAPIExposure refuses to serve the API on addr without authentication
// (no tokens) when other hosts can reach addr, unless allowUnauth says an
// operator accepted that: like Redis's protected mode, an API that anyone
// on the network can use must be asked for, not fallen into.
func checkAPIExposure(addr string, tokens []string, allowUnauth bool) error {
	if len(tokens) > 0 || allowUnauth || loopbackOnly(addr) {
		return nil
	}
	port := "8080"
	if _, p, err := net.SplitHostPort(addr); err == nil {
		port = p
	}
	return fmt.Errorf("refusing to serve the API on %s without authentication: other hosts can reach that address, "+
		"and anyone who reaches the API can submit jobs and read every job's images. Either set an API token "+
		"(GENFLEET_API_TOKEN or --api-token; clients send \"Authorization: Bearer <token>\"), or listen on loopback only "+
		"(--listen 127.0.0.1:%s), or, if something in front of the API already keeps strangers out (a firewall, an "+
		"authenticating proxy), pass --allow-unauthenticated (GENFLEET_ALLOW_UNAUTHENTICATED=true) to serve it open", addr, port)
}

// routingFlags configure the router and the reaper, and the API's
// authentication (every caller of serveScheduler adds them).
type routingFlags struct {
	enabled     *bool
	warm        *float64
	backlogCap  *int
	hostTimeout *time.Duration
	apiToken    *string
	allowUnauth *bool
	enginePools *string
	lifecycle   *cli.LifecycleFlags
	openaiWait  *time.Duration
	openaiModel *string
	openaiAlias *string
}

// apiTokens splits --api-token into its comma-separated tokens.
func (rf *routingFlags) apiTokens() []string {
	var out []string
	for _, t := range strings.Split(*rf.apiToken, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

func addRoutingFlags(f cli.Flags) *routingFlags {
	return &routingFlags{
		enabled:     f.EnvBool("routing", "GENFLEET_ROUTING", true, "send jobs to a host where their model is warm (off: every job to the pool queue)"),
		warm:        f.EnvFloat64("warm-fraction", "GENFLEET_WARM_FRACTION", 0.5, "resident fraction at which a model counts as warm on a host"),
		backlogCap:  f.EnvInt("backlog-cap", "GENFLEET_BACKLOG_CAP", 0, "most jobs queued for one host before routing falls back to the pool; 0 = 2 per worker slot"),
		hostTimeout: f.EnvDuration("host-timeout", "GENFLEET_HOST_TIMEOUT", 10*time.Second, "silence after which a host's queued jobs move back to the pool"),
		enginePools: f.EnvString("engine-pool", "GENFLEET_ENGINE_POOL", "sdcpp=sdcpp", "device class that runs each model engine other than the built-in one, ENGINE=CLASS[,…]"),
		apiToken:    apiTokenFlag(f),
		allowUnauth: allowUnauthFlag(f),
		lifecycle:   cli.AddLifecycleFlags(f),
		openaiWait:  f.EnvDuration("openai-wait", "GENFLEET_OPENAI_WAIT", 5*time.Minute, "how long a request to the OpenAI images API (/v1/images/…) waits for its job before it is answered 504 (the job keeps running)"),
		openaiModel: f.EnvString("openai-default-model", "GENFLEET_OPENAI_DEFAULT_MODEL", "", "model of an OpenAI images API request that names none; empty: such a request is refused"),
		openaiAlias: f.EnvString("openai-model-alias", "GENFLEET_OPENAI_MODEL_ALIAS", "", "model names OpenAI's clients send, run as genfleet models, NAME=MODEL[,…], e.g. dall-e-3=sdxl,gpt-image-1=sdxl; other names are taken as genfleet models"),
	}
}

// apiTokenFlag and allowUnauthFlag are the API's authentication flags, for
// every command that serves the API.
func apiTokenFlag(f cli.Flags) *string {
	return f.EnvString("api-token", "GENFLEET_API_TOKEN", "", "bearer token clients must send (several, comma-separated, during a rotation); empty = no authentication, allowed only on a loopback --listen or with --allow-unauthenticated. Prefer the environment: flags show in ps")
}

func allowUnauthFlag(f cli.Flags) *bool {
	return f.EnvBool("allow-unauthenticated", "GENFLEET_ALLOW_UNAUTHENTICATED", false, "serve the API without --api-token on an address other hosts can reach (anyone who reaches it can submit jobs and read their images); without it such a scheduler refuses to start")
}

// serveScheduler runs the API and the reaper on ln until ctx ends. It
// refuses an unauthenticated API on an address other hosts can reach (see
// checkAPIExposure), judging by the address ln really bound.
func serveScheduler(ctx context.Context, c *cli.Common, ln net.Listener, pool string, rf *routingFlags, log *slog.Logger) error {
	if err := checkAPIExposure(ln.Addr().String(), rf.apiTokens(), *rf.allowUnauth); err != nil {
		return err
	}
	redisOpt, err := c.RedisOpt()
	if err != nil {
		return err
	}
	enginePools, err := cli.ParseEnginePools(*rf.enginePools)
	if err != nil {
		return err
	}
	aliases, err := cli.ParsePairs("--openai-model-alias", "NAME=MODEL", *rf.openaiAlias)
	if err != nil {
		return err
	}
	reg, cl, err := c.OpenRegistry(ctx)
	if err != nil {
		return err
	}
	up, maxUpload, err := c.UploadsURL()
	if err != nil {
		return err
	}
	cfg := scheduler.Config{
		Redis: redisOpt, S3: cl, Registry: reg, Pool: pool, EnginePools: enginePools, CheckModels: true, Logger: log,
		Routing:     scheduler.Policy{Enabled: *rf.enabled, WarmFraction: *rf.warm, BacklogCap: *rf.backlogCap},
		HostTimeout: *rf.hostTimeout, APITokens: rf.apiTokens(),
		Uploads: up, MaxUploadBytes: maxUpload,
		OpenAIWait: *rf.openaiWait, OpenAIDefaultModel: *rf.openaiModel, OpenAIModelAliases: aliases,
	}
	if err := rf.lifecycle.Apply(ctx, c, cl, &cfg); err != nil {
		return err
	}
	srv, err := scheduler.New(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	// Beside the API, stopped after it: the retention sweep and the
	// webhook deliverer.
	sweep, err := rf.lifecycle.Sweeper(c, cl, srv.Metrics(), log)
	if err != nil {
		return err
	}
	if sweep != nil {
		sweep.Start()
		defer sweep.Shutdown()
	}
	hooks, closeHooks, err := rf.lifecycle.Deliverer(redisOpt, srv, log)
	if err != nil {
		return err
	}
	defer closeHooks()
	if hooks != nil {
		hooks.Start()
		defer hooks.Shutdown()
	}
	reapCtx, stopReaper := context.WithCancel(ctx)
	reaperDone := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() { defer close(reaperDone); srv.RunReaper(reapCtx) }()
	go func() { defer close(samplerDone); srv.RunSampler(reapCtx) }()
	defer func() { stopReaper(); <-reaperDone; <-samplerDone }()
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("scheduler listening", "addr", ln.Addr().String())
	return serveHTTP(ctx, hs, ln)
}

// serveHTTP serves until ctx ends, then shuts down gracefully.
func serveHTTP(ctx context.Context, hs *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func cmdWorker(ctx context.Context, args []string, stderr io.Writer) error {
	f := cli.NewFlags("worker", stderr)
	c := cli.AddCommon(f)
	cacheDir := f.EnvString("cache-dir", "GENFLEET_CACHE_DIR", "/var/cache/genfleet", "model cache directory, shared by every worker process on the host")
	lf := cli.AddLoadFlags(f)
	backendName := f.EnvString("backend", "GENFLEET_BACKEND", "cpu", "backend: "+fmt.Sprint(backends.Names())+" or auto")
	sf := cli.AddSdcppFlags(f)
	concurrency := f.EnvInt("concurrency", "GENFLEET_CONCURRENCY", 1, "jobs run at once by this process")
	hostID := f.EnvString("host-id", "GENFLEET_HOST_ID", "", "host id (queue host:<id>); default the hostname")
	metricsListen := f.EnvString("metrics-listen", "GENFLEET_METRICS_LISTEN", ":9091", "address for /metrics and /healthz; empty disables")
	shutdown := f.EnvDuration("shutdown-timeout", "GENFLEET_SHUTDOWN_TIMEOUT", 30*time.Second, "time in-flight jobs get to finish on SIGTERM before they are handed back")
	heartbeat := f.EnvDuration("heartbeat-interval", "GENFLEET_HEARTBEAT_INTERVAL", 2*time.Second, "how often this process publishes its state; it expires after 3 intervals")
	poll := f.EnvDuration("poll-interval", "GENFLEET_POLL_INTERVAL", 20*time.Millisecond, "how often an idle worker checks its queues (bounds idle start latency)")
	retryBase := f.EnvDuration("retry-base", "GENFLEET_RETRY_BASE", 2*time.Second, "backoff before the first retry of a job that failed transiently; doubles per retry")
	retryMax := f.EnvDuration("retry-max", "GENFLEET_RETRY_MAX", 5*time.Minute, "longest backoff between retries")
	recoverEvery := f.EnvDuration("recover-interval", "GENFLEET_RECOVER_INTERVAL", 5*time.Second, "how often this process requeues jobs whose worker died (their lease expired)")
	leaseGrace := f.EnvDuration("lease-grace", "GENFLEET_LEASE_GRACE", 5*time.Second, "how long after its lease expired a dead worker's job is requeued (clock-skew margin between hosts)")
	weightsFlag := f.EnvString("priority-weights", "GENFLEET_PRIORITY_WEIGHTS", "high=6,normal=3,low=1", "how often each priority is tried first when all have jobs, PRIORITY=WEIGHT for high, normal and low (weighted, so low jobs never starve; host queues always go before pool queues)")
	pf := cli.AddPeerFlags(f)
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	weights, err := cli.ParsePriorityWeights(*weightsFlag)
	if err != nil {
		return err
	}
	peerCfg, err := pf.Config()
	if err != nil {
		return err
	}
	log := c.Logger(stderr)
	redisOpt, err := c.RedisOpt()
	if err != nil {
		return err
	}
	outputs, err := c.OutputsURL()
	if err != nil {
		return err
	}
	up, maxUpload, err := c.UploadsURL()
	if err != nil {
		return err
	}
	reg, cl, err := c.OpenRegistry(ctx)
	if err != nil {
		return err
	}
	var be backends.Backend
	if *backendName == "sdcpp" {
		be, err = sf.Open(log)
	} else {
		be, err = selectBackend(*backendName, log)
	}
	if err != nil {
		return err
	}
	promReg := prometheus.NewRegistry()
	if mr, ok := be.(interface {
		RegisterMetrics(prometheus.Registerer) error
	}); ok {
		if err := mr.RegisterMetrics(promReg); err != nil {
			return err
		}
	}
	cacheOpts, err := lf.Options(promReg, log)
	if err != nil {
		return err
	}
	scrub, err := lf.ScrubConfig()
	if err != nil {
		return err
	}
	peerCfg.Origin, peerCfg.Metrics, peerCfg.Logger = modelcache.NewS3Source(cl), promReg, log
	peerCfg.Redis = func() (redis.UniversalClient, error) { return redisx.Client(redisOpt) }
	peers, err := peer.NewHost(peerCfg)
	if err != nil {
		return err
	}
	defer peers.Close()
	cache, err := modelcache.OpenWith(*cacheDir, peers.Source(), cacheOpts)
	if err != nil {
		return fmt.Errorf("open model cache: %w", err)
	}
	if err := peers.Serve(ctx, cache); err != nil {
		return err
	}
	if err := s3x.EnsureBucket(ctx, cl, outputs.Bucket); err != nil {
		log.Warn("outputs bucket not reachable yet", "bucket", outputs.Bucket, "err", err)
	}

	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w, err := worker.New(worker.Config{
		Redis: redisOpt, S3: cl, Outputs: outputs, Registry: reg, Cache: cache, Backend: be,
		Uploads: up, MaxUploadBytes: maxUpload,
		HostID: *hostID, Concurrency: *concurrency, ShutdownTimeout: *shutdown, PriorityWeights: weights,
		RetryBase: *retryBase, RetryMax: *retryMax,
		RecoverInterval: *recoverEvery, LeaseGrace: *leaseGrace,
		HeartbeatInterval: *heartbeat, PollInterval: *poll,
		Scrub: scrub, Advertise: peers.Advertise(cache),
		Metrics: promReg, Logger: log,
	})
	if err != nil {
		return err
	}
	defer w.Close()

	if *metricsListen != "" {
		ln, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			return fmt.Errorf("metrics listen on %s: %w", *metricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = serveHTTP(ctx, hs, ln) }()
		log.Info("worker metrics listening", "addr", ln.Addr().String())
	}
	log.Info("worker ready", "cache", *cacheDir, "pid", os.Getpid(), "verify", cacheOpts.Verify, "fs_verity", cache.FSVerity().String())
	return w.Run(ctx)
}

// selectBackend returns the backend registered as name. "auto" means cuda
// where it can run, else cpu, logging why cuda is unavailable; a cuda
// configuration error (a bad GENFLEET_CUDA_* value) is returned, not
// papered over by the fallback. Backends that log get log.
func selectBackend(name string, log *slog.Logger) (backends.Backend, error) {
	open := func(name string) (backends.Backend, error) {
		be, err := backends.New(name)
		if ls, ok := be.(interface{ SetLogger(*slog.Logger) }); ok && err == nil {
			ls.SetLogger(log)
		}
		return be, err
	}
	if name != "auto" {
		return open(name)
	}
	be, err := open("cuda")
	if err == nil {
		return be, nil
	}
	if !errors.Is(err, backends.ErrUnavailable) {
		return nil, fmt.Errorf("--backend auto: %w", err)
	}
	log.Warn("cuda unavailable, falling back to cpu", "reason", err.Error())
	return open("cpu")
}
