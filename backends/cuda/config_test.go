package cuda

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/backends"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Config
		wantErr []string // variables named in the error
	}{
		{name: "nothing set", env: nil, want: Config{}},
		{name: "everything set", env: map[string]string{
			EnvDevice: "1", EnvMemBudget: "40GiB", EnvKeepAlive: "5m", EnvUpload: "registered",
			EnvUploadThreads: "8", EnvStaging: "3x32MiB",
		}, want: Config{Device: 1, MemBudget: 40 << 30, KeepAlive: 5 * time.Minute, Upload: Registered,
			UploadThreads: 8, StagingBuffers: 3, StagingBufferBytes: 32 << 20}},
		{name: "budget as a percentage", env: map[string]string{EnvMemBudget: "80%"}, want: Config{MemBudgetPercent: 80}},
		{name: "keep forever", env: map[string]string{EnvKeepAlive: "-1s"}, want: Config{KeepAlive: -time.Second}},
		{name: "bad values all reported", env: map[string]string{
			EnvDevice: "gpu0", EnvMemBudget: "150%", EnvKeepAlive: "soon", EnvUpload: "fast",
			EnvUploadThreads: "0", EnvStaging: "64MiB",
		}, wantErr: []string{EnvDevice, EnvMemBudget, EnvKeepAlive, EnvUpload, EnvUploadThreads, EnvStaging}},
		{name: "staging too small", env: map[string]string{EnvStaging: "4x1000"}, wantErr: []string{EnvStaging}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ConfigFromEnv(func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, v := range tt.wantErr {
					if !strings.Contains(err.Error(), v) {
						t.Errorf("error %q does not name %s", err, v)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	want := Config{MemBudgetPercent: 90, KeepAlive: 30 * time.Minute, Upload: Auto,
		UploadThreads: min(runtime.NumCPU(), 8), StagingBuffers: 4, StagingBufferBytes: 2 << 20}
	if c != want {
		t.Errorf("defaults %+v\nwant %+v", c, want)
	}
	if c := (Config{KeepAlive: -1}).withDefaults(); c.KeepAlive != -1 {
		t.Errorf("negative keep-alive became %v", c.KeepAlive)
	}
}

func TestNewReportsBadEnv(t *testing.T) {
	t.Setenv(EnvUpload, "warp")
	_, err := New()
	if err == nil || !strings.Contains(err.Error(), EnvUpload) {
		t.Fatalf("New with a bad %s: %v", EnvUpload, err)
	}
	if errors.Is(err, backends.ErrUnavailable) {
		t.Error("a configuration error must not read as 'unavailable'")
	}
}
