package peer

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/genfleet/genfleet/modelcache"
)

func TestHostConfigCheck(t *testing.T) {
	tests := []struct {
		name string
		cfg  HostConfig
		want string // in the error; "" for none
	}{
		{"no token, no server", HostConfig{}, ""},
		{"server without a token", HostConfig{Listen: ":9092"}, "--peer-listen needs a fleet token"},
		{"short token", HostConfig{Token: "short", PartWait: time.Second}, "at least 16 characters; got 5"},
		{"no part wait", HostConfig{Token: testToken}, "--peer-wait 0s: want a duration > 0"},
		{"advertise without a port", HostConfig{Token: testToken, PartWait: time.Second, Advertise: "gpu-7"}, `--peer-advertise "gpu-7": want host:port`},
		{"good", HostConfig{Token: testToken, PartWait: time.Second, Listen: ":9092", Advertise: "gpu-7:9092"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Check()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// The address a blob server is advertised at: the one given, the bound
// one when it names a host, else one other hosts can reach, with the port.
func TestAdvertiseAddr(t *testing.T) {
	if a, err := advertiseAddr("gpu-7:9092", &net.TCPAddr{IP: net.IPv4zero, Port: 1}); err != nil || a != "gpu-7:9092" {
		t.Fatalf("given: %q %v", a, err)
	}
	if a, err := advertiseAddr("", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9092}); err != nil || a != "127.0.0.1:9092" {
		t.Fatalf("bound to loopback: %q %v", a, err)
	}
	a, err := advertiseAddr("", &net.TCPAddr{IP: net.IPv6unspecified, Port: 9092})
	host, port, _ := net.SplitHostPort(a)
	if err != nil || port != "9092" || host == "" || host == "::" {
		t.Fatalf("bound to every interface: %q %v", a, err)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		t.Fatalf("advertised %s, a loopback address", a)
	}
}

// Without a token the host is S3 alone: no server, no Redis, nothing
// advertised.
func TestHostWithoutToken(t *testing.T) {
	e := newEnv(t)
	h, err := NewHost(HostConfig{Origin: e.origin, Redis: func() (redis.UniversalClient, error) {
		t.Fatal("Redis opened without a fleet token")
		return nil, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Source() != modelcache.Source(e.origin) {
		t.Fatalf("source %T, want the origin", h.Source())
	}
	cache, err := modelcache.Open(t.TempDir(), h.Source())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Serve(t.Context(), cache); err != nil || h.Advertise(cache) != nil {
		t.Fatalf("serve %v, advertise %v: want neither", err, h.Advertise(cache) != nil)
	}
}

// With a token and a listener the host serves its cache to peers who
// carry the token, advertises what it holds at the bound address, stops
// serving when its context ends, and closes its Redis client.
func TestHostServes(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "served", 3*testPart)
	var opened *redis.Client
	h, err := NewHost(HostConfig{Origin: e.origin, Token: testToken, Listen: "127.0.0.1:0", PartWait: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Redis: func() (redis.UniversalClient, error) {
			opened = redis.NewClient(e.rdb.Options())
			return opened, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Source().(*Source); !ok {
		t.Fatalf("source %T, want peers in front of S3", h.Source())
	}
	cache, err := modelcache.Open(t.TempDir(), h.Source())
	if err != nil {
		t.Fatal(err)
	}
	model, err := cache.Acquire(t.Context(), m)
	if err != nil {
		t.Fatal(err)
	}
	model.Close()
	ctx, stop := context.WithCancel(t.Context())
	if err := h.Serve(ctx, cache); err != nil {
		t.Fatal(err)
	}
	st := h.Advertise(cache)()
	if st == nil || !strings.HasPrefix(st.Addr, "127.0.0.1:") || len(st.Blobs) != 1 || st.Blobs[0] != m.Files[0].Digest {
		t.Fatalf("advertised %+v", st)
	}
	get := func(token string) (int, int) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+st.Addr+"/v1/blobs/"+st.Blobs[0], nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, len(b)
	}
	if code, n := get(testToken); code != http.StatusOK || n != len(data) {
		t.Fatalf("GET the blob with the token: %d, %d bytes", code, n)
	}
	if code, _ := get("another-token-of-enough-length"); code != http.StatusUnauthorized {
		t.Fatalf("GET the blob with another token: %d", code)
	}
	stop()
	deadline := time.Now().Add(5 * time.Second)
	for code, _ := get(testToken); code != 0; code, _ = get(testToken) {
		if time.Now().After(deadline) {
			t.Fatal("the blob server still serves after its context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.Close()
	if err := opened.Ping(context.Background()).Err(); err == nil {
		t.Fatal("the host's Redis client is still open after Close")
	}
}
