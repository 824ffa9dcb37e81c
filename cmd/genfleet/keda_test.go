package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"sigs.k8s.io/yaml"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// The KEDA ScaledObjects scale on asynq's Redis keys by name. Read the key
// names off a live queue, with one job pending and one running, and check
// that every trigger names a list that holds them.
func TestKEDAKeysMatchAsynq(t *testing.T) {
	srv := testenv.Redis(t)
	opt := asynq.RedisClientOpt{Addr: srv.Addr}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()

	started := make(chan struct{}, 1)
	release := make(chan struct{})
	w := asynq.NewServer(opt, asynq.Config{Concurrency: 1, Queues: map[string]int{job.PoolQueue("cpu"): 1},
		TaskCheckInterval: 10 * time.Millisecond, LogLevel: asynq.FatalLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(job.TaskType, func(context.Context, *asynq.Task) error {
		started <- struct{}{}
		<-release
		return nil
	})
	if err := w.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()
	defer close(release)

	p := job.NewProducer(opt)
	defer p.Close()
	req := job.Request{Model: "demo", Prompt: "x"}
	if _, err := p.Enqueue(ctx, "", req); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the job never started")
	}
	if _, err := p.Enqueue(ctx, "", req); err != nil {
		t.Fatal(err)
	}
	gpu := job.NewProducer(opt)
	gpu.Pool = "cuda"
	defer gpu.Close()
	if _, err := gpu.Enqueue(ctx, "", req); err != nil {
		t.Fatal(err)
	}
	sd := job.NewProducer(opt)
	sd.Pool = "sdcpp"
	defer sd.Close()
	if _, err := sd.Enqueue(ctx, "", req); err != nil {
		t.Fatal(err)
	}

	// Every Redis list that now holds exactly the jobs we know of.
	lists := map[string]int64{}
	keys, err := rdb.Keys(ctx, "asynq:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if typ, _ := rdb.Type(ctx, k).Result(); typ == "list" {
			lists[k], _ = rdb.LLen(ctx, k).Result()
		}
	}
	want := map[string]int64{ // what the triggers' key names must hold
		"asynq:{pool:cpu}:pending":   1,
		"asynq:{pool:cpu}:active":    1,
		"asynq:{pool:cuda}:pending":  1,
		"asynq:{pool:sdcpp}:pending": 1,
	}
	for k, n := range want {
		if lists[k] != n {
			t.Fatalf("asynq's list %s holds %d (lists seen: %v); want %d", k, lists[k], lists, n)
		}
	}

	raw, err := os.ReadFile(repoPath("infra", "k8s", "components", "keda", "scaledobjects.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]map[string]bool{} // deployment → suffixes (pending/active)
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var so struct {
			Kind string
			Spec struct {
				ScaleTargetRef struct{ Name string } `json:"scaleTargetRef"`
				Triggers       []struct {
					Type     string
					Metadata map[string]string
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &so); err != nil {
			t.Fatal(err)
		}
		if so.Kind != "ScaledObject" {
			continue
		}
		for _, tr := range so.Spec.Triggers {
			name := tr.Metadata["listName"]
			if tr.Type != "redis" || name == "" {
				t.Fatalf("%s: trigger %+v is not a redis list trigger", so.Spec.ScaleTargetRef.Name, tr)
			}
			if tr.Metadata["addressFromEnv"] != "GENFLEET_REDIS" || !knownEnvVar(t, tr.Metadata["passwordFromEnv"]) {
				t.Fatalf("%s: trigger reads Redis from %q/%q, not the workers' own variables", so.Spec.ScaleTargetRef.Name, tr.Metadata["addressFromEnv"], tr.Metadata["passwordFromEnv"])
			}
			suffix := name[strings.LastIndexByte(name, ':')+1:]
			pool := strings.TrimSuffix(strings.TrimPrefix(name, "asynq:{"), "}:"+suffix)
			live := "asynq:{" + pool + "}:" + suffix
			if name != live || (suffix != "pending" && suffix != "active") {
				t.Fatalf("trigger list %q is not an asynq pending/active list", name)
			}
			if pool == "pool:cpu" || suffix == "pending" {
				if _, ok := lists[name]; !ok {
					t.Fatalf("trigger list %q does not exist on a live queue (lists: %v)", name, lists)
				}
			}
			if seen[so.Spec.ScaleTargetRef.Name] == nil {
				seen[so.Spec.ScaleTargetRef.Name] = map[string]bool{}
			}
			seen[so.Spec.ScaleTargetRef.Name][suffix] = true
		}
	}
	for _, d := range []string{"genfleet-worker-cpu", "genfleet-worker-gpu", "genfleet-worker-sdcpp"} {
		if !seen[d]["pending"] || !seen[d]["active"] {
			t.Fatalf("%s scales on %v; want both pending and active", d, seen[d])
		}
	}
}

// knownEnvVar reports whether the binary reads env (after building every
// command's flags).
func knownEnvVar(t *testing.T, env string) bool {
	t.Helper()
	for _, cmd := range []string{"scheduler", "worker"} {
		runCLI(cmd, "-h")
	}
	knownEnvMu.Lock()
	defer knownEnvMu.Unlock()
	return knownEnv[env]
}
