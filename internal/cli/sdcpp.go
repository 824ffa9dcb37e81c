package cli

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/genfleet/genfleet/backends/sdcpp"
)

// SdcppFlags configure the sdcpp backend (worker --backend sdcpp).
type SdcppFlags struct {
	cli, server, mode, args, pool *string
	keepAlive, timeout, start     *time.Duration
	maxServers                    *int
	mmap                          *bool
}

// AddSdcppFlags adds the sdcpp backend's flags to f.
func AddSdcppFlags(f Flags) *SdcppFlags {
	return &SdcppFlags{
		cli:        f.EnvString("sdcpp-cli", "GENFLEET_SDCPP_CLI", "", "stable-diffusion.cpp command-line program (path or name in PATH); default sd-cli, else sd"),
		server:     f.EnvString("sdcpp-server", "GENFLEET_SDCPP_SERVER", "", "stable-diffusion.cpp server program; default sd-server when in PATH"),
		mode:       f.EnvString("sdcpp-mode", "GENFLEET_SDCPP_MODE", sdcpp.ModeAuto, "auto (a server per model when the server program is found, else a process per job), server or process"),
		args:       f.EnvString("sdcpp-args", "GENFLEET_SDCPP_ARGS", "", "extra engine flags for every run, space-separated, e.g. \"--threads 8 --vae-tiling\"; each must be one the programs' --help lists (checked at start)"),
		pool:       f.EnvString("sdcpp-pool", "GENFLEET_SDCPP_POOL", "sdcpp", "device class (pool queue pool:<class>) of an sdcpp worker; the scheduler's --engine-pool must map sdcpp to it"),
		keepAlive:  f.EnvDuration("sdcpp-keep-alive", "GENFLEET_SDCPP_KEEP_ALIVE", 5*time.Minute, "how long an engine server with no jobs keeps its model loaded"),
		timeout:    f.EnvDuration("sdcpp-timeout", "GENFLEET_SDCPP_TIMEOUT", 30*time.Minute, "longest one generation may run before the engine is killed"),
		start:      f.EnvDuration("sdcpp-start-timeout", "GENFLEET_SDCPP_START_TIMEOUT", 10*time.Minute, "longest an engine server may take to load its model"),
		maxServers: f.EnvInt("sdcpp-max-servers", "GENFLEET_SDCPP_MAX_SERVERS", 1, "engine servers (models kept loaded) per worker process"),
		mmap:       f.EnvBool("sdcpp-mmap", "GENFLEET_SDCPP_MMAP", true, "give the engine --mmap, so all engine processes on the host share one copy of the weights; false (each engine reads a private copy) is a benchmark knob, for genfleet bench share --backend sdcpp"),
	}
}

// Config is the sdcpp backend's config the flags describe, logging to log.
func (sf *SdcppFlags) Config(log *slog.Logger) sdcpp.Config {
	return sdcpp.Config{
		CLI: *sf.cli, Server: *sf.server, Mode: *sf.mode, Args: strings.Fields(*sf.args),
		DeviceClass: *sf.pool, KeepAlive: *sf.keepAlive, Timeout: *sf.timeout,
		StartTimeout: *sf.start, MaxServers: *sf.maxServers, NoMmap: !*sf.mmap, Logger: log,
	}
}

// Open starts the sdcpp backend the flags describe.
func (sf *SdcppFlags) Open(log *slog.Logger) (*sdcpp.Backend, error) {
	b, err := sdcpp.New(sf.Config(log))
	if err != nil {
		return nil, err
	}
	cli, srv := b.Programs()
	log.Info("stable-diffusion.cpp engine", "cli", cli, "server", srv, "mode", *sf.mode, "pool", b.DeviceClass(), "mmap", *sf.mmap)
	return b, nil
}

// ParseEnginePools parses --engine-pool "sdcpp=sdcpp,other=gpu".
func ParseEnginePools(s string) (map[string]string, error) {
	return ParsePairs("--engine-pool", "ENGINE=CLASS", s)
}

// ParsePairs parses the value s of flag, "K=V[,K=V…]", into a map; want
// names K and V for the error.
func ParsePairs(flag, want, s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%s %q: want %s[,%s…]", flag, kv, want, want)
		}
		out[k] = v
	}
	return out, nil
}
