package worker

import (
	"testing"
	"time"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/modelcache"
)

// gpuBackend is the real cpu backend reporting a device, as cuda does:
// the test machine has no GPU, and the heartbeat's device fields are
// what is under test.
type gpuBackend struct{ backends.Backend }

func (gpuBackend) DeviceName() string          { return "Test GPU 80GB" }
func (gpuBackend) OnDevice(digest string) bool { return digest == "sha256:on" }

// A backend with a device puts its name in the heartbeat and marks the
// models whose weights it holds there.
func TestHeartbeatReportsTheDevice(t *testing.T) {
	w := noopWorker(t, "127.0.0.1:1", "h", 1) // state() makes no Redis call
	if hb := w.state(time.Now()); hb.Device != "" {
		t.Fatalf("cpu backend reports device %q", hb.Device)
	}
	w.cfg.Backend = gpuBackend{w.cfg.Backend}
	w.models.used("warm", modelcache.KindModel, []string{"sha256:x", "sha256:on"}, nil, false, false)
	w.models.used("cold", modelcache.KindModel, []string{"sha256:off"}, nil, false, false)
	hb := w.state(time.Now())
	if hb.Device != "Test GPU 80GB" {
		t.Fatalf("device %q", hb.Device)
	}
	for _, m := range hb.Models {
		if m.OnDevice != (m.Ref == "warm") {
			t.Errorf("model %s on device = %v", m.Ref, m.OnDevice)
		}
	}
}
