package main

// Deployment files against the binary: docker-compose.yml (loaded with
// compose-go, as `docker compose` loads it), the Kubernetes overlays (built
// with kustomize's API, as `kubectl apply -k` builds them), the Grafana
// dashboard, the Prometheus config and docs/deploy.md's flag reference.
//
// What "real endpoint" means here: TestDeployEndpointsServed starts this
// binary as `genfleet scheduler` and `genfleet worker` child processes (on
// an in-process Redis-protocol and S3-protocol server, loopback ports) and
// records which paths answer 200. The compose healthchecks and Kubernetes
// probes must use one of those paths, on the port the role's own listen
// setting (GENFLEET_LISTEN / GENFLEET_METRICS_LISTEN in that file, else the
// flag's default) gives.
//
// Regenerate docs/deploy.md's configuration reference after changing flags:
//
//	go test ./cmd/genfleet -run TestDeployConfigReference -update-deploy-docs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/compose-spec/compose-go/v2/loader"
	composetypes "github.com/compose-spec/compose-go/v2/types"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/internal/envflag"
	"github.com/genfleet/genfleet/internal/testenv"
)

var updateDeployDocs = flag.Bool("update-deploy-docs", false, "rewrite the flag reference in docs/deploy.md from the binary's flag table")

// repoRoot is the repository root, relative to this package's directory.
const repoRoot = "../.."

func repoPath(p ...string) string { return filepath.Join(append([]string{repoRoot}, p...)...) }

// ---- the binary's flag table ----------------------------------------------

type flagInfo struct {
	Name, Type, Env, Default, Usage string
}

type commandFlags struct {
	Path  string // "scheduler", "models push", ...
	Flags []flagInfo
}

var (
	reFlagDefault = regexp.MustCompile(`\s*\(default (.*)\)$`)
	reFlagEnv     = regexp.MustCompile(`\s*\(env (GENFLEET_[A-Z0-9_]+)\)`)
	reSubcommand  = regexp.MustCompile(`^  ([a-z][a-z0-9-]*)(\s|$)`)
)

// deployFlagTable builds every command's flag set by running
// `genfleet CMD... -h` for each command the usage texts list (recursively,
// so new commands and subcommands are found), parses the printed defaults,
// and so also fills envflag.Known. GENFLEET_* variables of the test's own
// environment are cleared first: they would show up as defaults.
func deployFlagTable(t *testing.T) []commandFlags {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "GENFLEET_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	var out []commandFlags
	var crawl func(path []string)
	crawl = func(path []string) {
		var buf bytes.Buffer
		run(append(slices.Clone(path), "-h"), io.Discard, &buf)
		text := buf.String()
		if len(path) > 0 {
			if fl := parseFlagDefaults(text); len(fl) > 0 {
				out = append(out, commandFlags{Path: strings.Join(path, " "), Flags: fl})
			}
		}
		if len(path) >= 2 {
			return
		}
		for _, sub := range listedCommands(text) {
			crawl(append(slices.Clone(path), sub))
		}
	}
	crawl(nil)
	if len(out) == 0 {
		t.Fatal("no flag sets found: usage texts changed shape?")
	}
	return out
}

// listedCommands returns the names in a usage text's "Commands:" section.
func listedCommands(text string) []string {
	var names []string
	in := false
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "Commands:"):
			in = true
		case in && strings.TrimSpace(l) == "":
			if len(names) > 0 {
				in = false
			}
		case in && !strings.HasPrefix(l, " "):
			in = false
		case in:
			if m := reSubcommand.FindStringSubmatch(l); m != nil && m[1] != "help" && !slices.Contains(names, m[1]) {
				names = append(names, m[1])
			}
		}
	}
	return names
}

// parseFlagDefaults parses flag.PrintDefaults output.
func parseFlagDefaults(text string) []flagInfo {
	var fl []flagInfo
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "  -"):
			rest := l[3:]
			name, usage, _ := strings.Cut(rest, "\t")
			f := flagInfo{Usage: strings.TrimSpace(usage)}
			fields := strings.Fields(name)
			f.Name = fields[0]
			if len(fields) > 1 {
				f.Type = fields[1]
			}
			fl = append(fl, f)
		case strings.HasPrefix(l, "    \t") && len(fl) > 0:
			f := &fl[len(fl)-1]
			f.Usage = strings.TrimSpace(f.Usage + " " + strings.TrimSpace(l))
		}
	}
	for i := range fl {
		f := &fl[i]
		if m := reFlagDefault.FindStringSubmatch(f.Usage); m != nil {
			f.Default = m[1]
			if s, err := strconv.Unquote(m[1]); err == nil {
				f.Default = s
			}
			f.Usage = f.Usage[:len(f.Usage)-len(m[0])]
		} else {
			// PrintDefaults leaves zero defaults out.
			switch f.Type {
			case "":
				f.Default = "false"
			case "int", "int64", "uint", "uint64", "float", "float64", "value":
				f.Default = "0"
			case "duration":
				f.Default = "0s"
			}
		}
		if m := reFlagEnv.FindStringSubmatch(f.Usage); m != nil {
			f.Env = m[1]
			f.Usage = strings.Replace(f.Usage, m[0], "", 1)
		}
	}
	return fl
}

func lookupFlag(table []commandFlags, cmd, name string) (flagInfo, bool) {
	for _, c := range table {
		if c.Path == cmd {
			for _, f := range c.Flags {
				if f.Name == name {
					return f, true
				}
			}
		}
	}
	return flagInfo{}, false
}

// knownEnvSnapshot returns the variables flags read (envflag.Known) after
// every flag set was built.
func knownEnvSnapshot(t *testing.T) map[string]bool {
	t.Helper()
	deployFlagTable(t)
	m := envflag.Known()
	for _, must := range []string{"GENFLEET_REDIS", "GENFLEET_LISTEN", "GENFLEET_CACHE_DIR", "GENFLEET_METRICS_LISTEN", "GENFLEET_SHUTDOWN_TIMEOUT"} {
		if !m[must] {
			t.Fatalf("knownEnv lacks %s after building all flag sets: %v", must, m)
		}
	}
	return m
}

// roleSetting is the value a role uses for a flag: its env variable from
// env when set there, else the flag's default.
func roleSetting(t *testing.T, table []commandFlags, role, flagName string, env map[string]string) string {
	t.Helper()
	f, ok := lookupFlag(table, role, flagName)
	if !ok {
		t.Fatalf("genfleet %s has no --%s flag", role, flagName)
	}
	if v, ok := env[f.Env]; ok && f.Env != "" {
		return v
	}
	return f.Default
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return port
}

// ---- endpoints the binary really serves ------------------------------------

// roleEndpoint names, per role, the flag whose address serves HTTP.
var roleEndpoint = map[string]string{"scheduler": "listen", "worker": "metrics-listen"}

var (
	servedOnce sync.Once
	servedMap  map[string]map[string]int // role -> path -> HTTP status
	servedErr  error
)

// servedPaths starts `genfleet scheduler` and `genfleet worker` once per
// test binary and asks each for the paths deployment files use.
func servedPaths(t *testing.T) map[string]map[string]int {
	t.Helper()
	servedOnce.Do(func() { servedMap, servedErr = probeRoles() })
	if servedErr != nil {
		t.Fatal(servedErr)
	}
	return servedMap
}

func probeRoles() (map[string]map[string]int, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, err
	}
	defer mr.Close()
	s3 := httptest.NewServer(gofakes3.New(s3mem.New(), gofakes3.WithLogger(gofakes3.DiscardLog())).Server())
	defer s3.Close()
	dir, err := os.MkdirTemp("", "genfleet-deploy-test-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	env := []string{childEnv + "=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GENFLEET_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"GENFLEET_REDIS="+mr.Addr(), "GENFLEET_S3_ENDPOINT="+s3.URL,
		"GENFLEET_S3_ACCESS_KEY=test", "GENFLEET_S3_SECRET_KEY=test-secret",
		"GENFLEET_LOG_LEVEL=warn")

	out := map[string]map[string]int{}
	for role, paths := range map[string][]string{
		"scheduler": {"/healthz", "/readyz", "/metrics"},
		"worker":    {"/healthz", "/metrics"},
	} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + port
		args := []string{role, "--" + roleEndpoint[role], addr}
		if role == "worker" {
			args = append(args, "--cache-dir", filepath.Join(dir, "cache"), "--host-id", "deploy-test", "--shutdown-timeout", "2s")
		}
		cmd := exec.Command(self, args...)
		cmd.Env = env
		logs := &testenv.Buffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		got, err := pollPaths("http://"+addr, paths, 30*time.Second)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if err != nil {
			return nil, fmt.Errorf("genfleet %s: %v\nlog:\n%s", role, err, cmd.Stdout.(*testenv.Buffer).String())
		}
		out[role] = got
	}
	return out, nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	return port, err
}

// pollPaths GETs each path until it answers 200 or the deadline passes.
func pollPaths(base string, paths []string, timeout time.Duration) (map[string]int, error) {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 3 * time.Second}
	got := map[string]int{}
	for _, p := range paths {
		for {
			resp, err := client.Get(base + p)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				got[p] = resp.StatusCode
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				return got, fmt.Errorf("GET %s%s: status %d, err %v", base, p, got[p], err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return got, nil
}

// checkProbe asserts that a health check of role hits a served path on the
// role's configured port.
func checkProbe(t *testing.T, where, role, port, path string, table []commandFlags, env map[string]string) {
	t.Helper()
	served := servedPaths(t)[role]
	if served == nil {
		t.Errorf("%s: probes role %q, which serves no HTTP endpoint", where, role)
		return
	}
	if served[path] != http.StatusOK {
		t.Errorf("%s: probe path %s is not served by genfleet %s (served: %v)", where, path, role, served)
	}
	want := portOf(t, roleSetting(t, table, role, roleEndpoint[role], env))
	if port != want {
		t.Errorf("%s: probe port %s, but genfleet %s listens on port %s", where, port, role, want)
	}
}

func TestDeployEndpointsServed(t *testing.T) {
	served := servedPaths(t)
	for role, paths := range served {
		for p, code := range paths {
			if code != http.StatusOK {
				t.Errorf("genfleet %s: GET %s = %d", role, p, code)
			}
		}
	}
	t.Logf("served: %v", served)
}

// ---- Dockerfile -------------------------------------------------------------

type dockerfileFacts struct {
	env      map[string]string
	user     string
	packages []string
}

func readDockerfile(t *testing.T) dockerfileFacts {
	t.Helper()
	b, err := os.ReadFile(repoPath("infra", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	return dockerfileStages(t, string(b))[""]
}

// dockerfileStages returns the facts of each named stage, and of the last
// stage (what a build without --target produces) under "". A stage that
// starts FROM an earlier stage inherits its facts.
func dockerfileStages(t *testing.T, dockerfile string) map[string]dockerfileFacts {
	t.Helper()
	text := strings.ReplaceAll(dockerfile, "\\\n", " ")
	stages := map[string]dockerfileFacts{}
	name := ""
	f := dockerfileFacts{env: map[string]string{}}
	for _, l := range strings.Split(text, "\n") {
		fields := strings.Fields(l)
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "FROM":
			if name != "" {
				stages[name] = f
			}
			name = ""
			if n := len(fields); n >= 4 && strings.EqualFold(fields[n-2], "AS") {
				name = fields[n-1]
			}
			base := fields[len(fields)-1]
			if name != "" {
				base = fields[len(fields)-3]
			}
			if parent, ok := stages[base]; ok {
				f = dockerfileFacts{env: maps.Clone(parent.env), user: parent.user, packages: slices.Clone(parent.packages)}
			} else {
				f = dockerfileFacts{env: map[string]string{}}
			}
		case "ENV":
			for _, kv := range fields[1:] {
				if k, v, ok := strings.Cut(kv, "="); ok {
					f.env[k] = v
				}
			}
		case "USER":
			f.user = fields[1]
		case "RUN":
			if i := slices.Index(fields, "install"); i > 0 {
				for _, p := range fields[i+1:] {
					if p == "&&" {
						break
					}
					if !strings.HasPrefix(p, "-") {
						f.packages = append(f.packages, p)
					}
				}
			}
		}
	}
	if name != "" {
		stages[name] = f
	}
	stages[""] = f
	return stages
}

func TestDeployDockerfile(t *testing.T) {
	known := knownEnvSnapshot(t)
	df := readDockerfile(t)
	if df.user != "10001:10001" {
		t.Errorf("runtime USER = %q, want 10001:10001 (the Kubernetes securityContext uses it)", df.user)
	}
	for k := range df.env {
		if strings.HasPrefix(k, "GENFLEET_") && !known[k] {
			t.Errorf("Dockerfile sets %s, which no genfleet flag reads", k)
		}
	}
	if !slices.Contains(df.packages, "curl") {
		t.Errorf("runtime stage installs %v: the compose healthchecks need curl", df.packages)
	}
}

// ---- docker-compose.yml -----------------------------------------------------

func loadCompose(t *testing.T, profiles ...string) *composetypes.Project {
	t.Helper()
	dir, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	// No environment: every ${VAR:-default} takes its default, as on a
	// machine with no .env file.
	p, err := loader.LoadWithContext(context.Background(), composetypes.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []composetypes.ConfigFile{{Filename: filepath.Join(dir, "docker-compose.yml")}},
		Environment: composetypes.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName("genfleet", true)
		o.Profiles = profiles
	})
	if err != nil {
		t.Fatalf("load docker-compose.yml with profiles %v: %v", profiles, err)
	}
	return p
}

func composeEnv(s composetypes.ServiceConfig) map[string]string {
	m := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			m[k] = *v
		}
	}
	return m
}

// genfleetRole is the genfleet command a service runs ("" if it does not
// run the genfleet image with the image's entrypoint).
func genfleetRole(s composetypes.ServiceConfig) string {
	if s.Build == nil || !strings.HasSuffix(filepath.ToSlash(s.Build.Dockerfile), "infra/docker/Dockerfile") {
		return ""
	}
	if len(s.Entrypoint) > 0 || len(s.Command) == 0 {
		return "shell"
	}
	return s.Command[0]
}

func TestComposeFile(t *testing.T) {
	known := knownEnvSnapshot(t)
	table := deployFlagTable(t)
	df := readDockerfile(t)

	// The default set must load on its own (no service depends on one
	// that only a profile enables), and with every profile.
	def := loadCompose(t)
	for _, want := range []string{"redis", "s3", "init", "scheduler", "worker", "asynqmon"} {
		if _, ok := def.Services[want]; !ok {
			t.Errorf("default services lack %q", want)
		}
	}
	p := loadCompose(t, "gpu", "observability")
	for _, want := range []string{"worker-gpu", "prometheus", "grafana"} {
		if _, ok := p.Services[want]; !ok {
			t.Errorf("profiles gpu+observability lack %q", want)
		}
		if _, ok := def.Services[want]; ok {
			t.Errorf("%q runs without its profile", want)
		}
	}

	cacheVolume := ""
	for name, s := range p.Services {
		env := composeEnv(s)
		for k := range env {
			if strings.HasPrefix(k, "GENFLEET_") && !known[k] {
				t.Errorf("service %s sets %s, which no genfleet flag reads", name, k)
			}
		}
		// depends_on: the target exists, and its condition can be met.
		for dep, d := range s.DependsOn {
			target, ok := p.Services[dep]
			if !ok {
				t.Errorf("service %s depends on undefined service %s", name, dep)
				continue
			}
			switch d.Condition {
			case composetypes.ServiceConditionHealthy:
				if target.HealthCheck == nil || target.HealthCheck.Disable || len(target.HealthCheck.Test) == 0 {
					t.Errorf("service %s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
				}
			case composetypes.ServiceConditionCompletedSuccessfully:
				if target.Restart != "" && target.Restart != composetypes.RestartPolicyNo {
					t.Errorf("service %s waits for %s to complete, but %s restarts (%s)", name, dep, dep, target.Restart)
				}
			default:
				t.Errorf("service %s depends on %s with condition %q: use service_healthy or service_completed_successfully", name, dep, d.Condition)
			}
		}
		// Bind mounts point at files in the repository.
		for _, v := range s.Volumes {
			switch v.Type {
			case composetypes.VolumeTypeBind:
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("service %s mounts %s, which does not exist: %v", name, v.Source, err)
				}
			case composetypes.VolumeTypeVolume:
				if _, ok := p.Volumes[v.Source]; !ok {
					t.Errorf("service %s mounts undeclared volume %q", name, v.Source)
				}
			}
		}

		role := genfleetRole(s)
		if role == "scheduler" || role == "worker" {
			for _, dep := range []string{"redis", "s3", "init"} {
				if _, ok := s.DependsOn[dep]; !ok {
					t.Errorf("service %s does not wait for %s", name, dep)
				}
			}
			hc := s.HealthCheck
			if hc == nil || len(hc.Test) < 2 {
				t.Errorf("service %s (genfleet %s) has no healthcheck", name, role)
				continue
			}
			if hc.Test[0] == "CMD" && !slices.Contains(df.packages, hc.Test[1]) {
				t.Errorf("service %s healthcheck runs %s, which the image does not install (%v)", name, hc.Test[1], df.packages)
			}
			var u *url.URL
			for _, a := range hc.Test[1:] {
				if strings.HasPrefix(a, "http://") {
					u, _ = url.Parse(a)
				}
			}
			if u == nil {
				t.Errorf("service %s healthcheck %q has no http:// URL", name, hc.Test)
				continue
			}
			if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" {
				t.Errorf("service %s healthcheck targets %s, want the container itself", name, h)
			}
			checkProbe(t, "compose service "+name+" healthcheck", role, u.Port(), u.Path, table, env)
			if role == "scheduler" && u.Path != "/readyz" {
				t.Errorf("scheduler healthcheck path %s, want /readyz (dependants must wait for Redis)", u.Path)
			}
			if role == "scheduler" {
				checkComposeAPIAuth(t, name, s, env, table)
			}
		}
		if role == "worker" {
			cacheDir := roleSetting(t, table, "worker", "cache-dir", env)
			var src string
			for _, v := range s.Volumes {
				if v.Target == cacheDir && v.Type == composetypes.VolumeTypeVolume {
					src = v.Source
				}
			}
			if src == "" {
				t.Errorf("worker service %s does not mount a named volume at its cache dir %s", name, cacheDir)
			} else if cacheVolume == "" {
				cacheVolume = src
			} else if src != cacheVolume {
				t.Errorf("worker service %s caches in volume %s, others in %s: workers on one host must share one cache", name, src, cacheVolume)
			}
			shutdown, err := time.ParseDuration(roleSetting(t, table, "worker", "shutdown-timeout", env))
			if err != nil {
				t.Fatal(err)
			}
			if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < shutdown+5*time.Second {
				t.Errorf("worker service %s stop_grace_period %v: want at least --shutdown-timeout (%v) + 5s", name, s.StopGracePeriod, shutdown)
			}
			if s.Init == nil || !*s.Init {
				t.Errorf("worker service %s: want init: true so SIGTERM reaches genfleet", name)
			}
		}
	}
	if w := p.Services["worker"]; w.GetScale() < 2 {
		t.Errorf("worker replicas = %d, want at least 2 sharing the cache volume", w.GetScale())
	}
	if cacheVolume == "" {
		t.Error("no worker cache volume found")
	}
	// The GPU worker reserves an NVIDIA GPU.
	gpu := p.Services["worker-gpu"]
	ok := false
	if gpu.Deploy != nil && gpu.Deploy.Resources.Reservations != nil {
		for _, d := range gpu.Deploy.Resources.Reservations.Devices {
			if d.Driver == "nvidia" && slices.Contains(d.Capabilities, "gpu") {
				ok = true
			}
		}
	}
	if !ok {
		t.Error("worker-gpu reserves no nvidia device with the gpu capability")
	}
	if env := composeEnv(gpu); env["GENFLEET_BACKEND"] != "cuda" {
		t.Errorf("worker-gpu backend %q, want cuda", env["GENFLEET_BACKEND"])
	}
	// Redis persists with AOF.
	if r := p.Services["redis"]; !slices.Contains(r.Command, "--appendonly") {
		t.Errorf("redis command %q: want --appendonly yes", r.Command)
	}
	checkGrafanaCompose(t, p.Services["grafana"])
	checkPrometheusConfig(t, table, p)
}

// checkComposeAPIAuth: the compose scheduler starts (checkAPIExposure lets
// it), and where it serves the API without a token its port is published
// on loopback only.
func checkComposeAPIAuth(t *testing.T, name string, s composetypes.ServiceConfig, env map[string]string, table []commandFlags) {
	t.Helper()
	rf := &routingFlags{apiToken: new(string)}
	*rf.apiToken = roleSetting(t, table, "scheduler", "api-token", env)
	allow, err := strconv.ParseBool(roleSetting(t, table, "scheduler", "allow-unauthenticated", env))
	if err != nil {
		t.Fatalf("service %s: GENFLEET_ALLOW_UNAUTHENTICATED: %v", name, err)
	}
	if err := checkAPIExposure(roleSetting(t, table, "scheduler", "listen", env), rf.apiTokens(), allow); err != nil {
		t.Errorf("service %s would not start: %v", name, err)
	}
	if len(rf.apiTokens()) > 0 {
		return
	}
	if len(s.Ports) == 0 {
		t.Errorf("service %s publishes no port", name)
	}
	for _, p := range s.Ports {
		if ip := net.ParseIP(p.HostIP); ip == nil || !ip.IsLoopback() {
			t.Errorf("service %s serves the API without a token on host address %q: publish it on 127.0.0.1 or set a token", name, p.HostIP)
		}
	}
}

// checkGrafanaCompose: the dashboard provider's path is a mounted directory
// that holds the dashboards.
func checkGrafanaCompose(t *testing.T, g composetypes.ServiceConfig) {
	t.Helper()
	mounts := map[string]string{}
	for _, v := range g.Volumes {
		mounts[v.Target] = v.Source
	}
	prov, ok := mounts["/etc/grafana/provisioning"]
	if !ok {
		t.Fatal("grafana does not mount /etc/grafana/provisioning")
	}
	for _, sub := range []string{"datasources", "dashboards"} {
		files, _ := filepath.Glob(filepath.Join(prov, sub, "*.yml"))
		if len(files) == 0 {
			t.Errorf("grafana provisioning has no %s/*.yml", sub)
		}
	}
	files, _ := filepath.Glob(filepath.Join(prov, "dashboards", "*.yml"))
	for _, f := range files {
		var cfg struct {
			Providers []struct {
				Name    string
				Options struct{ Path string }
			}
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, pr := range cfg.Providers {
			src, ok := mounts[pr.Options.Path]
			if !ok {
				t.Errorf("dashboard provider %s reads %s, which grafana does not mount", pr.Name, pr.Options.Path)
				continue
			}
			if js, _ := filepath.Glob(filepath.Join(src, "*.json")); len(js) == 0 {
				t.Errorf("dashboard provider %s: no *.json in %s", pr.Name, src)
			}
		}
	}
}

// checkPrometheusConfig: scrape targets name compose services on the
// ports those services listen on.
func checkPrometheusConfig(t *testing.T, table []commandFlags, p *composetypes.Project) {
	t.Helper()
	b, err := os.ReadFile(repoPath("infra", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string
			} `json:"static_configs"`
			DNSSDConfigs []struct {
				Names []string
				Port  int
			} `json:"dns_sd_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	check := func(job, svc, port string) {
		s, ok := p.Services[svc]
		if !ok {
			t.Errorf("prometheus job %s scrapes %s, which is no compose service", job, svc)
			return
		}
		role := genfleetRole(s)
		if role == "scheduler" || role == "worker" {
			want := portOf(t, roleSetting(t, table, role, roleEndpoint[role], composeEnv(s)))
			if port != want {
				t.Errorf("prometheus job %s scrapes %s:%s, but it listens on %s", job, svc, port, want)
			}
		}
	}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				host, port, err := net.SplitHostPort(tg)
				if err != nil || host == "localhost" {
					continue
				}
				check(sc.JobName, host, port)
			}
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				check(sc.JobName, n, strconv.Itoa(d.Port))
			}
		}
	}
}

// ---- Grafana dashboard ------------------------------------------------------

var reMetricName = regexp.MustCompile(`\b((?:genfleet|asynq)_[a-z0-9_]+)\b`)

// asynqmonMetrics are the queue metrics asynqmon --enable-metrics-exporter
// serves (github.com/hibiken/asynq/x/metrics).
var asynqmonMetrics = []string{
	"asynq_tasks_enqueued_total", "asynq_queue_size", "asynq_queue_latency_seconds",
	"asynq_queue_memory_usage_approx_bytes", "asynq_tasks_processed_total",
	"asynq_tasks_failed_total", "asynq_queue_paused_total",
}

func baseMetric(m string) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		m = strings.TrimSuffix(m, suf)
	}
	return m
}

// exportedMetrics collects the metric names that the Go sources of this
// repository define (string literals genfleet_*), tests excluded.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	m := map[string]bool{}
	re := regexp.MustCompile(`"(genfleet_[a-z0-9_]+)"`)
	err := filepath.WalkDir(repoRoot, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range re.FindAllStringSubmatch(string(b), -1) {
			m[s[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDeployGrafanaDashboard(t *testing.T) {
	var ds struct {
		Datasources []struct{ UID, Type string }
	}
	b, err := os.ReadFile(repoPath("infra", "grafana", "provisioning", "datasources", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	uids := map[string]bool{}
	for _, d := range ds.Datasources {
		uids[d.UID] = true
	}
	files, _ := filepath.Glob(repoPath("infra", "grafana", "dashboards", "*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboards in infra/grafana/dashboards")
	}
	exported := exportedMetrics(t)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		type target struct {
			Expr       string
			Datasource struct{ UID string }
		}
		var d struct {
			UID, Title, Description string
			Panels                  []struct {
				Type, Title string
				Datasource  *struct{ UID string }
				Targets     []target
			}
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: dashboard needs a uid and a title", f)
		}
		// "Pending metrics (...): a, b, c." lists the names not exported yet.
		pending := map[string]bool{}
		if _, list, ok := strings.Cut(d.Description, "Pending metrics"); ok {
			for _, m := range reMetricName.FindAllString(list, -1) {
				pending[baseMetric(m)] = true
			}
		}
		used := map[string]bool{}
		for _, p := range d.Panels {
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no queries", f, p.Title)
			}
			if p.Datasource == nil || !uids[p.Datasource.UID] {
				t.Errorf("%s: panel %q uses a datasource that is not provisioned (%v)", f, p.Title, uids)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q has an empty query", f, p.Title)
				}
				for _, m := range reMetricName.FindAllString(tg.Expr, -1) {
					m = baseMetric(m)
					used[m] = true
					switch {
					case exported[m], slices.Contains(asynqmonMetrics, m):
						if pending[m] {
							t.Logf("%s: %s is exported now; drop it from the dashboard's pending list", f, m)
						}
					case pending[m]:
					default:
						t.Errorf("%s: panel %q queries %s, which nothing exports and the description does not list as pending", f, p.Title, m)
					}
				}
			}
		}
		for _, want := range []string{
			"genfleet_worker_jobs_total", "genfleet_worker_job_phase_seconds", "genfleet_worker_jobs_in_flight",
			"genfleet_scheduler_jobs_submitted_total", "genfleet_scheduler_http_requests_total", "asynq_tasks_enqueued_total",
		} {
			if !used[want] {
				t.Errorf("%s: no panel queries %s", f, want)
			}
		}
	}
}

// ---- Kubernetes (kustomize) -------------------------------------------------

type k8sObject struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Data       map[string]string `json:"data"`
	StringData map[string]string `json:"stringData"`
	Spec       json.RawMessage   `json:"spec"`
}

type k8sWorkload struct {
	Replicas *int `json:"replicas"`
	Selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec k8sPodSpec `json:"spec"`
	} `json:"template"`
}

type k8sPodSpec struct {
	InitContainers                []k8sContainer    `json:"initContainers"`
	Containers                    []k8sContainer    `json:"containers"`
	TerminationGracePeriodSeconds *int64            `json:"terminationGracePeriodSeconds"`
	NodeSelector                  map[string]string `json:"nodeSelector"`
	Tolerations                   []struct {
		Key string `json:"key"`
	} `json:"tolerations"`
	SecurityContext *struct {
		RunAsNonRoot *bool  `json:"runAsNonRoot"`
		RunAsUser    *int64 `json:"runAsUser"`
		RunAsGroup   *int64 `json:"runAsGroup"`
	} `json:"securityContext"`
	Volumes []struct {
		Name     string `json:"name"`
		HostPath *struct {
			Path string `json:"path"`
			Type string `json:"type"`
		} `json:"hostPath"`
		EmptyDir              json.RawMessage `json:"emptyDir"`
		PersistentVolumeClaim json.RawMessage `json:"persistentVolumeClaim"`
	} `json:"volumes"`
}

type k8sContainer struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Args    []string `json:"args"`
	Env     []struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom *struct {
			SecretKeyRef    *struct{ Name, Key string } `json:"secretKeyRef"`
			ConfigMapKeyRef *struct{ Name, Key string } `json:"configMapKeyRef"`
		} `json:"valueFrom"`
	} `json:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct{ Name string } `json:"configMapRef"`
		SecretRef    *struct{ Name string } `json:"secretRef"`
	} `json:"envFrom"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
	} `json:"ports"`
	LivenessProbe  *k8sProbe `json:"livenessProbe"`
	ReadinessProbe *k8sProbe `json:"readinessProbe"`
	StartupProbe   *k8sProbe `json:"startupProbe"`
	Resources      struct {
		Requests map[string]any `json:"requests"`
		Limits   map[string]any `json:"limits"`
	} `json:"resources"`
	SecurityContext *struct {
		RunAsUser *int64 `json:"runAsUser"`
	} `json:"securityContext"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string          `json:"path"`
		Port json.RawMessage `json:"port"`
	} `json:"httpGet"`
}

type builtOverlay struct {
	name    string
	objects []k8sObject
	configs map[string]map[string]string // ConfigMap/Secret name -> data
}

func kustomizeBuild(t *testing.T, dir string) builtOverlay {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	bo := builtOverlay{name: dir, configs: map[string]map[string]string{}}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var o k8sObject
		if err := yaml.Unmarshal(y, &o); err != nil {
			t.Fatalf("%s %s: %v", r.GetKind(), r.GetName(), err)
		}
		bo.objects = append(bo.objects, o)
		switch o.Kind {
		case "ConfigMap":
			bo.configs["ConfigMap/"+o.Metadata.Name] = o.Data
		case "Secret":
			m := map[string]string{}
			for k, v := range o.Data {
				dec, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					t.Fatalf("Secret %s key %s: %v", o.Metadata.Name, k, err)
				}
				m[k] = string(dec)
			}
			for k, v := range o.StringData {
				m[k] = v
			}
			bo.configs["Secret/"+o.Metadata.Name] = m
		}
	}
	return bo
}

// copyTree copies the Kubernetes manifests so that a test can add the
// file an operator adds (credentials.env) without touching the repository.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestKustomizeOverlays(t *testing.T) {
	known := knownEnvSnapshot(t)
	table := deployFlagTable(t)
	df := readDockerfile(t)
	tmp := k8sTree(t)
	prodDir := filepath.Join(tmp, "overlays", "production")

	wantUID, _ := strconv.ParseInt(strings.Split(df.user, ":")[0], 10, 64)
	for _, tc := range []struct {
		name, dir string
		gpu       bool
	}{
		{"dev", filepath.Join(tmp, "overlays", "dev"), false},
		{"production", prodDir, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bo := kustomizeBuild(t, tc.dir)
			checkOverlay(t, bo, known, table, wantUID, tc.gpu)
			checkSdcppWorker(t, bo, tc.gpu)
		})
	}
	// The base builds on its own too (what a new overlay starts from).
	kustomizeBuild(t, filepath.Join(tmp, "base"))
}

// k8sTree returns a copy of infra/k8s with the files an operator adds
// (production's credentials.env and api-token.env, made from their
// examples), ready to build.
func k8sTree(t *testing.T) string {
	t.Helper()
	tmp := t.TempDir()
	copyTree(t, repoPath("infra", "k8s"), tmp)
	prodDir := filepath.Join(tmp, "overlays", "production")
	ex, err := os.ReadFile(filepath.Join(prodDir, "credentials.env.example"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(prodDir, "credentials.env"), ex, 0o600); err != nil {
		t.Fatal(err)
	}
	ex, err = os.ReadFile(filepath.Join(prodDir, "api-token.env.example"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(prodDir, "api-token.env"), ex, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"credentials.env", "api-token.env"} {
		if _, err := os.Stat(repoPath("infra", "k8s", "overlays", "production", f)); err == nil {
			t.Errorf("infra/k8s/overlays/production/%s exists in the tree: it holds secrets and must not be committed", f)
		}
	}
	return tmp
}

func checkOverlay(t *testing.T, bo builtOverlay, known map[string]bool, table []commandFlags, wantUID int64, wantGPU bool) {
	t.Helper()
	var pdbSelectors []map[string]string
	for _, o := range bo.objects {
		if o.Kind == "PodDisruptionBudget" {
			var s struct {
				Selector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				} `json:"selector"`
			}
			if err := json.Unmarshal(o.Spec, &s); err != nil {
				t.Fatal(err)
			}
			pdbSelectors = append(pdbSelectors, s.Selector.MatchLabels)
		}
	}
	roles := map[string]int{}
	sawGPU := false
	for _, o := range bo.objects {
		if o.Kind != "Deployment" && o.Kind != "Job" && o.Kind != "StatefulSet" && o.Kind != "DaemonSet" {
			continue
		}
		var w k8sWorkload
		if err := json.Unmarshal(o.Spec, &w); err != nil {
			t.Fatalf("%s %s: %v", o.Kind, o.Metadata.Name, err)
		}
		ps := w.Template.Spec
		where := o.Kind + " " + o.Metadata.Name
		for _, c := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
			cw := where + " container " + c.Name
			if len(c.Resources.Requests) == 0 {
				t.Errorf("%s has no resource requests", cw)
			}
			// Effective environment: envFrom sources, then env.
			env := map[string]string{}
			for _, ef := range c.EnvFrom {
				var ref string
				switch {
				case ef.ConfigMapRef != nil:
					ref = "ConfigMap/" + ef.ConfigMapRef.Name
				case ef.SecretRef != nil:
					ref = "Secret/" + ef.SecretRef.Name
				default:
					continue
				}
				data, ok := bo.configs[ref]
				if !ok {
					t.Errorf("%s takes envFrom %s, which the overlay does not define", cw, ref)
					continue
				}
				for k, v := range data {
					if !strings.HasPrefix(k, "GENFLEET_") {
						t.Errorf("%s: %s key %s is not a GENFLEET_* variable", cw, ref, k)
					} else if !known[k] {
						t.Errorf("%s: %s key %s is read by no genfleet flag", cw, ref, k)
					}
					env[k] = v
				}
			}
			for _, e := range c.Env {
				if strings.HasPrefix(e.Name, "GENFLEET_") && !known[e.Name] {
					t.Errorf("%s sets %s, which no genfleet flag reads", cw, e.Name)
				}
				v := e.Value
				if vf := e.ValueFrom; vf != nil {
					// A key of a ConfigMap or Secret the overlay defines.
					ref, key := "", ""
					switch {
					case vf.SecretKeyRef != nil:
						ref, key = "Secret/"+vf.SecretKeyRef.Name, vf.SecretKeyRef.Key
					case vf.ConfigMapKeyRef != nil:
						ref, key = "ConfigMap/"+vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key
					}
					data, ok := bo.configs[ref]
					if _, has := data[key]; ref == "" || !ok || !has {
						t.Errorf("%s takes %s from %s key %q, which the overlay does not define", cw, e.Name, ref, key)
					}
					v = data[key]
				}
				env[e.Name] = v
			}
			if !strings.Contains(c.Image, "genfleet") || len(c.Command) > 0 || len(c.Args) == 0 {
				continue
			}
			role := c.Args[0]
			roles[role]++
			if role != "scheduler" && role != "worker" {
				continue
			}
			// Probes: a served path on the role's port.
			probes := map[string]*k8sProbe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe}
			for kind, p := range probes {
				if p == nil || p.HTTPGet == nil {
					t.Errorf("%s has no HTTP %s probe", cw, kind)
					continue
				}
				port := resolvePort(t, c, p.HTTPGet.Port)
				checkProbe(t, cw+" "+kind+" probe", role, port, p.HTTPGet.Path, table, env)
			}
			if role == "scheduler" && c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
				t.Errorf("%s readiness probe %s, want /readyz", cw, c.ReadinessProbe.HTTPGet.Path)
			}
			checkK8sAPIAuth(t, cw, role, c, env, table)
			// Non-root, matching the image's user.
			sc := ps.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != wantUID {
				t.Errorf("%s: pod securityContext must set runAsNonRoot and runAsUser %d", where, wantUID)
			}
			if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil && *c.SecurityContext.RunAsUser != wantUID {
				t.Errorf("%s runs as uid %d", cw, *c.SecurityContext.RunAsUser)
			}
			// A PodDisruptionBudget covers the pods.
			covered := false
			for _, sel := range pdbSelectors {
				if labelsMatch(sel, w.Template.Metadata.Labels) {
					covered = true
				}
			}
			if !covered {
				t.Errorf("%s: no PodDisruptionBudget selects its pods", where)
			}
			if role != "worker" {
				continue
			}
			// The cache: the node's directory, shared by the node's workers.
			cacheDir := roleSetting(t, table, "worker", "cache-dir", env)
			mounted := false
			for _, m := range c.VolumeMounts {
				if m.MountPath != cacheDir {
					continue
				}
				for _, v := range ps.Volumes {
					if v.Name == m.Name {
						mounted = v.HostPath != nil && v.HostPath.Path == "/var/cache/genfleet" && v.HostPath.Type == "DirectoryOrCreate"
					}
				}
			}
			if !mounted {
				t.Errorf("%s: cache dir %s is not the hostPath /var/cache/genfleet (DirectoryOrCreate)", cw, cacheDir)
			}
			shutdown, err := time.ParseDuration(roleSetting(t, table, "worker", "shutdown-timeout", env))
			if err != nil {
				t.Fatal(err)
			}
			if g := ps.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second < shutdown+5*time.Second {
				grace := "unset (30)"
				if g != nil {
					grace = strconv.FormatInt(*g, 10)
				}
				t.Errorf("%s: terminationGracePeriodSeconds %s, want at least --shutdown-timeout (%v) + 5s", where, grace, shutdown)
			}
			if _, ok := c.Resources.Limits["nvidia.com/gpu"]; ok || env["GENFLEET_BACKEND"] == "cuda" {
				sawGPU = true
				if _, ok := c.Resources.Limits["nvidia.com/gpu"]; !ok {
					t.Errorf("%s: cuda worker without an nvidia.com/gpu limit", cw)
				}
				if len(ps.NodeSelector) == 0 {
					t.Errorf("%s: GPU worker without a nodeSelector", where)
				}
				tol := false
				for _, tl := range ps.Tolerations {
					tol = tol || tl.Key == "nvidia.com/gpu"
				}
				if !tol {
					t.Errorf("%s: GPU worker does not tolerate the nvidia.com/gpu taint", where)
				}
			}
		}
	}
	if roles["scheduler"] == 0 || roles["worker"] == 0 {
		t.Errorf("overlay %s runs roles %v: want a scheduler and workers", bo.name, roles)
	}
	if sawGPU != wantGPU {
		t.Errorf("overlay %s: GPU worker present = %v, want %v", bo.name, sawGPU, wantGPU)
	}
	var svc bool
	for _, o := range bo.objects {
		svc = svc || (o.Kind == "Service" && o.Metadata.Name == "genfleet-scheduler")
	}
	if !svc {
		t.Errorf("overlay %s has no genfleet-scheduler Service", bo.name)
	}
}

// checkK8sAPIAuth: on Kubernetes the scheduler starts (checkAPIExposure
// lets it) because it has an API token, taken from a Secret, not because
// authentication is switched off; no other genfleet container holds the
// token.
func checkK8sAPIAuth(t *testing.T, cw, role string, c k8sContainer, env map[string]string, table []commandFlags) {
	t.Helper()
	fromSecret := false
	for _, e := range c.Env {
		if e.Name == "GENFLEET_API_TOKEN" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			fromSecret = true
		}
	}
	if role != "scheduler" {
		if _, ok := env["GENFLEET_API_TOKEN"]; ok {
			t.Errorf("%s (genfleet %s) gets GENFLEET_API_TOKEN: only the scheduler needs it", cw, role)
		}
		return
	}
	if !fromSecret {
		t.Errorf("%s: GENFLEET_API_TOKEN must come from a Secret (valueFrom.secretKeyRef)", cw)
	}
	if allow := roleSetting(t, table, "scheduler", "allow-unauthenticated", env); allow != "false" {
		t.Errorf("%s sets GENFLEET_ALLOW_UNAUTHENTICATED=%s: use the API token instead", cw, allow)
	}
	rf := &routingFlags{apiToken: new(string)}
	*rf.apiToken = env["GENFLEET_API_TOKEN"]
	if err := checkAPIExposure(roleSetting(t, table, "scheduler", "listen", env), rf.apiTokens(), false); err != nil {
		t.Errorf("%s would not start: %v", cw, err)
	}
}

// checkSdcppWorker: where the overlay has GPU workers it has the
// stable-diffusion.cpp worker too, on the image's sdcpp stage with backend
// sdcpp; where it has none (dev), it has neither.
func checkSdcppWorker(t *testing.T, bo builtOverlay, want bool) {
	t.Helper()
	var found *k8sWorkload
	for _, o := range bo.objects {
		if o.Kind == "Deployment" && o.Metadata.Name == "genfleet-worker-sdcpp" {
			found = &k8sWorkload{}
			if err := json.Unmarshal(o.Spec, found); err != nil {
				t.Fatal(err)
			}
		}
	}
	if (found != nil) != want {
		t.Fatalf("overlay %s: genfleet-worker-sdcpp present = %v, want %v", bo.name, found != nil, want)
	}
	if found == nil {
		return
	}
	c := found.Template.Spec.Containers[0]
	backend := ""
	for _, e := range c.Env {
		if e.Name == "GENFLEET_BACKEND" {
			backend = e.Value
		}
	}
	if backend != "sdcpp" || !strings.Contains(c.Image, "genfleet-sdcpp") {
		t.Errorf("overlay %s: genfleet-worker-sdcpp runs image %q with backend %q; want the genfleet-sdcpp image and backend sdcpp", bo.name, c.Image, backend)
	}
	if found.Template.Metadata.Labels["genfleet.io/pool"] != "sdcpp" {
		t.Errorf("overlay %s: genfleet-worker-sdcpp pods labelled pool %q, want sdcpp", bo.name, found.Template.Metadata.Labels["genfleet.io/pool"])
	}
}

func labelsMatch(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func resolvePort(t *testing.T, c k8sContainer, raw json.RawMessage) string {
	t.Helper()
	var n int
	if err := json.Unmarshal(raw, &n); err == nil {
		return strconv.Itoa(n)
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		t.Fatalf("container %s: probe port %s", c.Name, raw)
	}
	for _, p := range c.Ports {
		if p.Name == name {
			return strconv.Itoa(p.ContainerPort)
		}
	}
	t.Errorf("container %s: probe port %q names no container port", c.Name, name)
	return ""
}

// ---- docs/deploy.md flag reference ------------------------------------------

const (
	flagRefBegin = "<!-- BEGIN flag reference: generated from the binary's flags by TestDeployConfigReference; do not edit by hand -->"
	flagRefEnd   = "<!-- END flag reference -->"
)

// flagReference renders the configuration reference: the flags every
// scheduler and worker share, then each command's own.
func flagReference(table []commandFlags) string {
	var sched, work []flagInfo
	for _, c := range table {
		switch c.Path {
		case "scheduler":
			sched = c.Flags
		case "worker":
			work = c.Flags
		}
	}
	common := map[string]flagInfo{}
	for _, f := range sched {
		for _, g := range work {
			if f == g {
				common[f.Name] = f
			}
		}
	}
	row := func(f flagInfo) string {
		env, def := "—", "empty"
		if f.Env != "" {
			env = "`" + f.Env + "`"
		}
		if f.Default != "" {
			def = "`" + f.Default + "`"
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		return fmt.Sprintf("| `%s%s` | %s | %s | %s |\n", dash, f.Name, env, def, strings.NewReplacer("|", `\|`, "<", `\<`).Replace(f.Usage))
	}
	const head = "| flag | environment | default | meaning |\n|---|---|---|---|\n"
	var b strings.Builder
	b.WriteString(flagRefBegin + "\n\n")
	b.WriteString("### Flags every role shares\n\n")
	b.WriteString("`scheduler`, `worker` and the commands that talk to Redis or S3 (`models push`, `models ls`, …) all take these.\n\n")
	b.WriteString(head)
	names := make([]string, 0, len(common))
	for n := range common {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.WriteString(row(common[n]))
	}
	cmds := slices.Clone(table)
	order := func(p string) int {
		switch p {
		case "scheduler":
			return 0
		case "worker":
			return 1
		}
		return 2
	}
	sort.SliceStable(cmds, func(i, j int) bool {
		if oi, oj := order(cmds[i].Path), order(cmds[j].Path); oi != oj {
			return oi < oj
		}
		return cmds[i].Path < cmds[j].Path
	})
	for _, c := range cmds {
		hasAll := len(common) > 0
		for n := range common {
			if !slices.ContainsFunc(c.Flags, func(f flagInfo) bool { return f == common[n] }) {
				hasAll = false
			}
		}
		var own []flagInfo
		for _, f := range c.Flags {
			if _, isCommon := common[f.Name]; !(hasAll && isCommon) {
				own = append(own, f)
			}
		}
		fmt.Fprintf(&b, "\n### `genfleet %s`\n\n", c.Path)
		if hasAll {
			b.WriteString("Takes the flags every role shares, and:\n\n")
		}
		if len(own) == 0 {
			b.WriteString("No flags of its own.\n")
			continue
		}
		b.WriteString(head)
		for _, f := range own {
			b.WriteString(row(f))
		}
	}
	b.WriteString("\n" + flagRefEnd)
	return b.String()
}

func TestDeployConfigReference(t *testing.T) {
	table := deployFlagTable(t)
	want := flagReference(table)
	path := repoPath("docs", "deploy.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, flagRefBegin), strings.Index(doc, flagRefEnd)
	if i < 0 || j < i {
		t.Fatalf("docs/deploy.md lacks the %q … %q markers", flagRefBegin, flagRefEnd)
	}
	got := doc[i : j+len(flagRefEnd)]
	if got == want {
		return
	}
	if *updateDeployDocs {
		if err := os.WriteFile(path, []byte(doc[:i]+want+doc[j+len(flagRefEnd):]), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("rewrote docs/deploy.md's flag reference")
		return
	}
	t.Errorf("docs/deploy.md's flag reference is out of date with the binary's flags; run\n\tgo test ./cmd/genfleet -run TestDeployConfigReference -update-deploy-docs\nwant:\n%s", want)
}

// The sdcpp profile's worker builds the Dockerfile's sdcpp stage with the
// engine directory as a named build context, runs the sdcpp backend, and
// serves the pool the scheduler's default --engine-pool sends sdcpp models
// to; a plain build (no target) does not need the engine.
func TestComposeSdcppWorker(t *testing.T) {
	b, err := os.ReadFile(repoPath("infra", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	stages := dockerfileStages(t, string(b))
	st, ok := stages["sdcpp"]
	if !ok {
		t.Fatal("the Dockerfile has no sdcpp stage")
	}
	if st.user != "10001:10001" || !strings.Contains(st.env["PATH"], "/opt/sdcpp") || !slices.Contains(st.packages, "libgomp1") {
		t.Errorf("sdcpp stage: user %q, PATH %q, packages %v", st.user, st.env["PATH"], st.packages)
	}
	if def := stages[""]; def.env["GENFLEET_BACKEND"] != "" || strings.Contains(def.env["PATH"], "sdcpp") {
		t.Errorf("the default stage is the sdcpp one: %+v", def.env)
	}
	if _, ok := loadCompose(t).Services["worker-sdcpp"]; ok {
		t.Error("worker-sdcpp runs without its profile")
	}
	s, ok := loadCompose(t, "sdcpp").Services["worker-sdcpp"]
	if !ok {
		t.Fatal("profile sdcpp has no worker-sdcpp")
	}
	if s.Build == nil || s.Build.Target != "sdcpp" || s.Build.AdditionalContexts["sdcpp-bin"] == "" {
		t.Fatalf("worker-sdcpp build %+v", s.Build)
	}
	env := composeEnv(s)
	pools, err := cli.ParseEnginePools(deployFlagDefault(t, "scheduler", "engine-pool"))
	if err != nil {
		t.Fatal(err)
	}
	if env["GENFLEET_BACKEND"] != "sdcpp" || pools["sdcpp"] != env["GENFLEET_SDCPP_POOL"] {
		t.Errorf("worker-sdcpp: backend %q, pool %q; the scheduler sends sdcpp models to %q",
			env["GENFLEET_BACKEND"], env["GENFLEET_SDCPP_POOL"], pools["sdcpp"])
	}
}

// ---- pinned images ------------------------------------------------------------

// ownImages are the images this repository builds (infra/docker/Dockerfile):
// a local build may call them :dev; a deployment of a release names it.
var ownImages = map[string]bool{"genfleet": true, "genfleet-sdcpp": true}

var (
	reDigestRef = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)
	// A release tag: MAJOR.MINOR.PATCH, optionally "v" before and a variant
	// after ("7.4.11-alpine", "v1.8.0", "1.26.8-bookworm").
	reReleaseTag = regexp.MustCompile(`^v?\d+\.\d+\.\d+([-.+_][0-9A-Za-z.+_-]+)?$`)
	// Debian numbers its releases MAJOR.POINT: "12.13-slim" is one exact
	// point release.
	reDebianTag = regexp.MustCompile(`^\d+\.\d+(-slim)?$`)
	// A Dockerfile's frontend directive, before its first instruction.
	reSyntaxLine = regexp.MustCompile(`^#\s*syntax=(\S+)`)
)

// floatingImage says why ref does not name one exact image release, or ""
// when it does: an image digest, or a tag that is a whole release number.
// "latest", no tag at all, a major or major.minor tag ("7-alpine",
// "1.26-bookworm") and a codename ("bookworm-slim") all float: they move to
// new releases without a change to this repository.
func floatingImage(ref string) string {
	if reDigestRef.MatchString(ref) {
		return ""
	}
	name, tag := ref, ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		name, tag = ref[:i], ref[i+1:]
	}
	base := name[strings.LastIndex(name, "/")+1:]
	switch {
	case tag == "":
		return "no tag (means latest)"
	case tag == "latest":
		return "tag latest"
	case reReleaseTag.MatchString(tag):
		return ""
	case base == "debian" && reDebianTag.MatchString(tag):
		return ""
	}
	return fmt.Sprintf("tag %q is not a whole release number (MAJOR.MINOR.PATCH)", tag)
}

func TestFloatingImage(t *testing.T) {
	for ref, floating := range map[string]bool{
		"redis:7.4.11-alpine":                               false,
		"versity/versitygw:v1.8.0":                          false,
		"hibiken/asynqmon:0.7.2":                            false,
		"golang:1.26.8-bookworm":                            false,
		"debian:12.13-slim":                                 false,
		"docker/dockerfile:1.17.0":                          false,
		"registry.example.com:5000/team/genfleet:1.2.3":     false,
		"redis@sha256:" + strings.Repeat("ab", 32):          false,
		"redis:7-alpine@sha256:" + strings.Repeat("0f", 32): false,
		"hibiken/asynqmon:latest":                           true,
		"hibiken/asynqmon":                                  true,
		"redis:7-alpine":                                    true,
		"golang:1.26-bookworm":                              true,
		"debian:bookworm-slim":                              true,
		"debian:12":                                         true,
		"docker/dockerfile:1":                               true,
		"registry.example.com:5000/team/genfleet":           true,
		"redis:7.4":                                         true,
		"grafana/grafana:main":                              true,
		"redis@sha256:abc":                                  true,
	} {
		if got := floatingImage(ref) != ""; got != floating {
			t.Errorf("floatingImage(%q) = %q; want floating %v", ref, floatingImage(ref), floating)
		}
	}
}

// dockerfileImages returns the images the Dockerfile pulls: its syntax
// frontend and every FROM that is not an earlier stage, with the ARG
// defaults declared before the first FROM substituted.
func dockerfileImages(t *testing.T, dockerfile string) []string {
	t.Helper()
	args := map[string]string{}
	stages := map[string]bool{"scratch": true}
	var images []string
	seenFrom := false
	for _, l := range strings.Split(dockerfile, "\n") {
		if m := reSyntaxLine.FindStringSubmatch(l); m != nil && !seenFrom {
			images = append(images, m[1])
			continue
		}
		fields := strings.Fields(l)
		if len(fields) < 2 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "ARG":
			if k, v, ok := strings.Cut(fields[1], "="); ok && !seenFrom {
				args[k] = strings.Trim(v, `"`)
			}
		case "FROM":
			seenFrom = true
			rest := fields[1:]
			for len(rest) > 0 && strings.HasPrefix(rest[0], "--") {
				rest = rest[1:]
			}
			if len(rest) == 0 {
				t.Fatalf("Dockerfile: %q names no image", l)
			}
			img := os.Expand(rest[0], func(k string) string { return args[k] })
			if !stages[img] {
				images = append(images, img)
			}
			if len(rest) >= 3 && strings.EqualFold(rest[1], "AS") {
				stages[rest[2]] = true
			}
		}
	}
	return images
}

// Every image a deployment pulls names one exact release, so that the same
// files deploy the same software tomorrow: the Dockerfile's bases and
// syntax frontend, every compose service (all profiles) that is not built
// here, every container of the Kubernetes overlays (production's own
// images included: a release, not :dev).
func TestDeployImagesPinned(t *testing.T) {
	b, err := os.ReadFile(repoPath("infra", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var checked []string
	check := func(where, ref string) {
		checked = append(checked, ref)
		if why := floatingImage(ref); why != "" {
			t.Errorf("%s uses image %s: %s; pin an exact release (docs/deploy.md, Pinned images)", where, ref, why)
		}
	}
	dfImages := dockerfileImages(t, string(b))
	if len(dfImages) < 3 {
		t.Fatalf("Dockerfile images %v: want the syntax frontend, the build and the runtime bases", dfImages)
	}
	for _, img := range dfImages {
		check("infra/docker/Dockerfile", img)
	}

	for name, s := range loadCompose(t, "gpu", "sdcpp", "observability").Services {
		if s.Build != nil {
			continue // built from this repository's Dockerfile, checked above
		}
		check("docker-compose.yml service "+name, s.Image)
	}

	tmp := k8sTree(t)
	for _, overlay := range []string{"dev", "production"} {
		bo := kustomizeBuild(t, filepath.Join(tmp, "overlays", overlay))
		for _, o := range bo.objects {
			var w k8sWorkload
			if o.Kind != "Deployment" && o.Kind != "Job" && o.Kind != "StatefulSet" && o.Kind != "DaemonSet" {
				continue
			}
			if err := json.Unmarshal(o.Spec, &w); err != nil {
				t.Fatal(err)
			}
			for _, c := range append(slices.Clone(w.Template.Spec.InitContainers), w.Template.Spec.Containers...) {
				name := c.Image
				if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
					name = name[:i]
				}
				if overlay == "dev" && ownImages[name[strings.LastIndex(name, "/")+1:]] {
					continue // the image built on this machine and loaded into the cluster
				}
				check(fmt.Sprintf("overlay %s %s %s container %s", overlay, o.Kind, o.Metadata.Name, c.Name), c.Image)
			}
		}
	}
	t.Logf("checked %d image references: %v", len(checked), checked)
}

// deployFlagDefault is the default of flag name of command path, as the
// binary prints it.
func deployFlagDefault(t *testing.T, path, name string) string {
	t.Helper()
	for _, c := range deployFlagTable(t) {
		if c.Path != path {
			continue
		}
		for _, f := range c.Flags {
			if f.Name == name {
				return strings.Trim(f.Default, `"`)
			}
		}
	}
	t.Fatalf("genfleet %s has no flag --%s", path, name)
	return ""
}
