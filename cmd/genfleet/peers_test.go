package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
)

const testFleetToken = "fleet-token-of-the-test-fleet-0123"

// Two worker hosts (own cache directories, own blob servers) with a fleet
// token: the first to run a job on the model fetches it from S3, the other
// from the first, part by part; S3 sends the model once. Heartbeats
// advertise the blob server and what it holds.
func TestWorkersFetchFromPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	const size = 3 << 20
	fl := newFleet(t, size, "cpu")
	// Push the model again with 1 MiB parts: three parts to share.
	fl.reg.PartSize = 1 << 20
	model := filepath.Join(t.TempDir(), "demo.safetensors")
	if err := writeModel(model, size, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.reg.Push(t.Context(), model, s3x.URL{Bucket: modelsBucket, Key: "blobs/demo.safetensors"}, "demo", nil); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GENFLEET_FLEET_TOKEN", testFleetToken)
	fl.startWorkerOn("h1", t.TempDir(), "--peer-listen", "127.0.0.1:0")
	first := fl.wait(fl.submit(jobBody(1)), 60*time.Second, nil)
	if first.Status != job.StatusSucceeded || first.Worker == nil || first.Worker.Host != "h1" {
		t.Fatalf("first job: %+v", first)
	}
	path := "/" + modelsBucket + "/blobs/demo.safetensors"
	if _, b := fl.proxy.counts(path); b != size {
		t.Fatalf("the first host took %d bytes from S3, want %d", b, size)
	}
	// h1's heartbeat advertises its blob server and the blob.
	var digest string
	deadline := time.Now().Add(10 * time.Second)
	for digest == "" && time.Now().Before(deadline) {
		_, body := fl.do("GET", "/v1/workers", "")
		var v struct{ Workers []job.Heartbeat }
		if err := json.Unmarshal(body, &v); err == nil {
			for _, hb := range v.Workers {
				if hb.Host == "h1" && hb.Peer != nil && strings.HasPrefix(hb.Peer.Addr, "127.0.0.1:") && len(hb.Peer.Blobs) == 1 {
					digest = hb.Peer.Blobs[0]
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if digest == "" || digest != first.Result.ModelDigest {
		t.Fatalf("h1's heartbeat does not advertise the model (%q, want %q)", digest, first.Result.ModelDigest)
	}

	fl.startWorkerOn("h2", t.TempDir(), "--peer-listen", "127.0.0.1:0")
	// Jobs until one runs on h2 (both hosts take the pool queue).
	var onH2 *job.Record
	for seed := 2; seed < 40 && onH2 == nil; seed++ {
		rec := fl.wait(fl.submit(jobBody(seed)), 60*time.Second, nil)
		if rec.Status != job.StatusSucceeded {
			t.Fatalf("job %d: %s %q", seed, rec.Status, rec.Error)
		}
		if rec.Worker.Host == "h2" {
			onH2 = &rec
		}
	}
	if onH2 == nil {
		t.Fatal("no job ran on h2")
	}
	if _, b := fl.proxy.counts(path); b != size {
		t.Errorf("S3 sent %d bytes of the model for two hosts, want %d (once)", b, size)
	}
	if o := onH2.Result; o.ModelSource != "fetched" || o.ModelFetchedBytes != size || o.ModelDigest != digest {
		t.Errorf("h2's job output: %+v; want the model fetched (from its peer), %d bytes", o, size)
	}
	// h2's heartbeat reports what its cold start and its job cost, for the
	// autoscaler.
	var ms *job.ModelState
	deadline = time.Now().Add(10 * time.Second)
	for ms == nil && time.Now().Before(deadline) {
		_, body := fl.do("GET", "/v1/workers", "")
		var v struct{ Workers []job.Heartbeat }
		if err := json.Unmarshal(body, &v); err == nil {
			for _, hb := range v.Workers {
				for i := range hb.Models {
					if hb.Host == "h2" && hb.Models[i].Ref == "demo" && hb.Models[i].ColdStartMS > 0 && hb.Models[i].JobMS > 0 {
						ms = &hb.Models[i]
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ms == nil {
		t.Error("h2's heartbeat reports no cold start and job time for the model")
	}
}

// The worker refuses a blob server without a fleet token, and a token too
// short to be a secret, saying which setting to fix.
func TestWorkerPeerFlagsRefused(t *testing.T) {
	t.Setenv("GENFLEET_REDIS", "127.0.0.1:1")
	t.Setenv("GENFLEET_S3_ENDPOINT", "http://127.0.0.1:1")
	for _, tc := range []struct {
		name, token string
		args        []string
		want        string
	}{
		{"server without token", "", []string{"--peer-listen", "127.0.0.1:0"}, "--peer-listen needs a fleet token (GENFLEET_FLEET_TOKEN"},
		{"short token", "short", nil, "GENFLEET_FLEET_TOKEN (--fleet-token) must be at least 16 characters"},
		{"bad bandwidth", testFleetToken, []string{"--peer-bandwidth", "fast"}, `--peer-bandwidth "fast"`},
		{"bad advertise", testFleetToken, []string{"--peer-listen", "127.0.0.1:0", "--peer-advertise", "nohostport"}, `--peer-advertise "nohostport": want host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GENFLEET_FLEET_TOKEN", tc.token)
			code, _, stderr := runCLI(append([]string{"worker", "--cache-dir", t.TempDir(), "--metrics-listen", ""}, tc.args...)...)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant %q", code, stderr, tc.want)
			}
		})
	}
}
