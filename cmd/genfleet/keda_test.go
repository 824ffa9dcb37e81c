package main

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"sigs.k8s.io/yaml"

	"github.com/genfleet/genfleet/internal/envflag"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// The KEDA ScaledObjects scale on asynq's Redis keys by name. Read the key
// names off live queues of every priority, with one job pending in each and
// one running, and check that every pool's ScaledObject reads the pending
// and running lists of all its priorities' queues and sums them all.
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
	pools := []string{"cpu", "cuda", "sdcpp"}
	for _, class := range pools {
		pr := job.NewProducer(opt)
		pr.Pool = class
		defer pr.Close()
		for _, prio := range job.Priorities {
			r := req
			r.Priority = prio
			if _, err := pr.Enqueue(ctx, "", r); err != nil {
				t.Fatal(err)
			}
		}
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
	want := map[string]int64{"asynq:{pool:cpu}:active": 1} // what the triggers' key names must hold
	for _, class := range pools {
		for _, q := range job.PriorityQueues(job.PoolQueue(class)) {
			want["asynq:{"+q+"}:pending"] = 1
		}
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
	seen := map[string]map[string]bool{} // deployment → lists it reads
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var so struct {
			Kind string
			Spec struct {
				ScaleTargetRef struct{ Name string } `json:"scaleTargetRef"`
				Advanced       struct {
					ScalingModifiers struct {
						Formula, Target, MetricType string
					} `json:"scalingModifiers"`
				}
				Triggers []struct {
					Type     string
					Name     string
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
		dep := so.Spec.ScaleTargetRef.Name
		var names []string
		for _, tr := range so.Spec.Triggers {
			name := tr.Metadata["listName"]
			if tr.Type != "redis" || name == "" || tr.Name == "" {
				t.Fatalf("%s: trigger %+v is not a named redis list trigger", dep, tr)
			}
			if tr.Metadata["addressFromEnv"] != "GENFLEET_REDIS" || !knownEnvVar(t, tr.Metadata["passwordFromEnv"]) {
				t.Fatalf("%s: trigger reads Redis from %q/%q, not the workers' own variables", dep, tr.Metadata["addressFromEnv"], tr.Metadata["passwordFromEnv"])
			}
			suffix := name[strings.LastIndexByte(name, ':')+1:]
			queue := strings.TrimSuffix(strings.TrimPrefix(name, "asynq:{"), "}:"+suffix)
			if name != "asynq:{"+queue+"}:"+suffix || (suffix != "pending" && suffix != "active") {
				t.Fatalf("trigger list %q is not an asynq pending/active list", name)
			}
			if _, ok := lists[name]; !ok && suffix == "pending" {
				t.Fatalf("trigger list %q does not exist on a live queue (lists: %v)", name, lists)
			}
			if seen[dep] == nil {
				seen[dep] = map[string]bool{}
			}
			seen[dep][name] = true
			names = append(names, tr.Name)
		}
		// The triggers are summed: the formula adds each exactly once.
		sm := so.Spec.Advanced.ScalingModifiers
		terms := strings.Split(strings.ReplaceAll(sm.Formula, " ", ""), "+")
		slices.Sort(terms)
		slices.Sort(names)
		if !slices.Equal(terms, names) || sm.Target != "2" || sm.MetricType != "AverageValue" {
			t.Fatalf("%s: scalingModifiers %+v; want the sum of its triggers %v, target 2 per worker", dep, sm, names)
		}
	}
	for dep, class := range map[string]string{"genfleet-worker-cpu": "cpu", "genfleet-worker-gpu": "cuda", "genfleet-worker-sdcpp": "sdcpp"} {
		for _, q := range job.PriorityQueues(job.PoolQueue(class)) {
			for _, state := range []string{"pending", "active"} {
				if l := "asynq:{" + q + "}:" + state; !seen[dep][l] {
					t.Fatalf("%s does not scale on %s (it reads %v)", dep, l, seen[dep])
				}
			}
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
	return envflag.Known()[env]
}
