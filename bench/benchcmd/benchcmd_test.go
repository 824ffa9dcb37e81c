package benchcmd

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"github.com/genfleet/genfleet/bench"
	"github.com/genfleet/genfleet/bench/fleetsim"
)

// sameJSON fails unless the object resultFields makes of v encodes as v
// itself does (keys in any order, at every depth).
func sameJSON(t *testing.T, v any) {
	t.Helper()
	direct, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(resultFields(v))
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(direct, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("%T: resultFields encodes as\n%s\nwant\n%s", v, got, direct)
	}
}

func TestResultFieldsEncodeLikeTheStruct(t *testing.T) {
	type result struct {
		Size     int64              `json:"size_bytes"`
		Runs     []float64          `json:"runs_mbps"`
		Hidden   int                `json:"-"`
		Ratio    *float64           `json:"ratio,omitempty"`
		Per      map[string]float64 `json:"per,omitempty"`
		Problems []string           `json:"problems,omitempty"`
		Met      bool               `json:"targets_met"`
		Untagged string
	}
	ratio := 0.0
	for _, r := range []*result{
		{},
		{Size: 1 << 30, Runs: []float64{1.5, 2}, Hidden: 3, Ratio: &ratio, Per: map[string]float64{"a": 1}, Problems: []string{"x"}, Met: true, Untagged: "u"},
		{Problems: []string{}, Per: map[string]float64{}},
	} {
		sameJSON(t, r)
	}
	got := resultFields(&result{Size: 5, Hidden: 3})
	if _, ok := got["Hidden"]; ok || got["size_bytes"] != int64(5) || fmt.Sprint(got["runs_mbps"]) != "[]" {
		t.Errorf("resultFields = %v: want the Go values by JSON name, Hidden left out", got)
	}
}

// Every benchmark's result prints, through resultFields, as it encodes.
func TestBenchResultsPrintAsTheyEncode(t *testing.T) {
	for _, res := range []any{
		&bench.ChaosResult{}, &bench.ChaosResult{Jobs: 3, Succeeded: 3, Restarts: 2, Attempts: map[int]int{1: 2, 2: 1},
			Problems: []string{"job x: lost"}, SubmitS: 1.5, TargetsMet: true},
		&bench.FetchResult{}, &bench.FetchResult{SizeBytes: 1, GenfleetRunsMBps: []float64{1.5}, TargetsMet: true},
		&bench.LoadResult{}, &bench.LoadResult{SizeBytes: 1, Ratio: 88.5},
		&bench.ShareResult{}, &bench.ShareResult{Procs: 4, MmapPSSBytes: 1 << 30, ReadPSSRatio: 4.01},
		&bench.ShareEngineResult{}, &bench.ShareEngineResult{Engine: "sdcpp", Procs: 3, MmapPSSRatio: 1.01, NoMmapFirstJobCPUMS: 7e3, TargetsMet: true},
		&bench.QueueResult{}, &bench.QueueResult{Jobs: 10, RoundRatios: []float64{0.5}, AsynqRedisCPUUsPerJob: 77},
		&bench.RoutingResult{}, &bench.RoutingResult{Jobs: 40, UnroutedLoads: 20, RoutedLoads: 2, TargetsMet: true},
		&bench.UploadResult{}, &bench.UploadResult{Device: "H100", StrategiesGBps: map[string]float64{"staged": 42.1},
			StagedGBpsByWorkers: map[string]float64{"1": 9, "16": 40}, RatioVsPinned: 0.9},
		&bench.SpreadResult{}, &bench.SpreadResult{Hosts: 8, S3BytesRatio: 1.01, Peers: bench.SpreadRun{Warm: 8, HostSeconds: []float64{1, 2}},
			Killed: &bench.SpreadRun{Killed: "killed-3"}},
		&bench.SimResult{}, &bench.SimResult{Hosts: 1000, Policies: []fleetsim.Result{{Policy: fleetsim.Peers, S3Bytes: 1e12}},
			S3BytesVsS3Only: map[fleetsim.Policy]float64{fleetsim.Peers: 0.02}},
	} {
		sameJSON(t, res)
	}
}
