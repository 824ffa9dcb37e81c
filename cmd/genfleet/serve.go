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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/genfleet/genfleet/backends"
	_ "github.com/genfleet/genfleet/backends/cpu" // registers "cpu"
	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/modelcache"
	"github.com/genfleet/genfleet/scheduler"
	"github.com/genfleet/genfleet/worker"
)

func cmdScheduler(ctx context.Context, args []string, stderr io.Writer) error {
	f := newFlags("scheduler", stderr)
	c := addCommon(f)
	listen := f.str("listen", "GENFLEET_LISTEN", ":8080", "HTTP listen address")
	pool := f.str("pool", "GENFLEET_POOL", "cpu", "device class whose pool queue receives jobs")
	if err := f.parse(args, 0); err != nil {
		return err
	}
	log := c.logger(stderr)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	return serveScheduler(ctx, c, ln, *pool, log)
}

// serveScheduler runs the API on ln until ctx ends.
func serveScheduler(ctx context.Context, c *common, ln net.Listener, pool string, log *slog.Logger) error {
	redisOpt, err := c.redisOpt()
	if err != nil {
		return err
	}
	reg, cl, err := c.openRegistry(ctx)
	if err != nil {
		return err
	}
	srv, err := scheduler.New(scheduler.Config{Redis: redisOpt, S3: cl, Registry: reg, Pool: pool, CheckModels: true, Logger: log})
	if err != nil {
		return err
	}
	defer srv.Close()
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
	f := newFlags("worker", stderr)
	c := addCommon(f)
	cacheDir := f.str("cache-dir", "GENFLEET_CACHE_DIR", "/var/cache/genfleet", "model cache directory, shared by every worker process on the host")
	backendName := f.str("backend", "GENFLEET_BACKEND", "cpu", "backend: "+fmt.Sprint(backends.Names())+" or auto")
	concurrency := f.integer("concurrency", "GENFLEET_CONCURRENCY", 1, "jobs run at once by this process")
	hostID := f.str("host-id", "GENFLEET_HOST_ID", "", "host id (queue host:<id>); default the hostname")
	metricsListen := f.str("metrics-listen", "GENFLEET_METRICS_LISTEN", ":9091", "address for /metrics and /healthz; empty disables")
	shutdown := f.duration("shutdown-timeout", "GENFLEET_SHUTDOWN_TIMEOUT", 30*time.Second, "time in-flight jobs get to finish on SIGTERM before they are handed back")
	retryBase := f.duration("retry-base", "GENFLEET_RETRY_BASE", 2*time.Second, "backoff before the first retry of a job that failed transiently; doubles per retry")
	retryMax := f.duration("retry-max", "GENFLEET_RETRY_MAX", 5*time.Minute, "longest backoff between retries")
	if err := f.parse(args, 0); err != nil {
		return err
	}
	log := c.logger(stderr)
	redisOpt, err := c.redisOpt()
	if err != nil {
		return err
	}
	outputs, err := c.outputsURL()
	if err != nil {
		return err
	}
	reg, cl, err := c.openRegistry(ctx)
	if err != nil {
		return err
	}
	name := *backendName
	if name == "auto" {
		name = "cpu"
	}
	be, err := backends.New(name)
	if err != nil {
		return err
	}
	cache, err := modelcache.Open(*cacheDir, modelcache.NewS3Source(cl))
	if err != nil {
		return fmt.Errorf("open model cache: %w", err)
	}
	if err := s3x.EnsureBucket(ctx, cl, outputs.Bucket); err != nil {
		log.Warn("outputs bucket not reachable yet", "bucket", outputs.Bucket, "err", err)
	}

	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w, err := worker.New(worker.Config{
		Redis: redisOpt, S3: cl, Outputs: outputs, Registry: reg, Cache: cache, Backend: be,
		HostID: *hostID, Concurrency: *concurrency, ShutdownTimeout: *shutdown,
		RetryBase: *retryBase, RetryMax: *retryMax,
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
	log.Info("worker ready", "cache", *cacheDir, "pid", os.Getpid())
	return w.Run(ctx)
}
