package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/genfleet/genfleet/modelcache"
)

// get asks h's blob server for path with the given headers.
func (h *host) get(t *testing.T, path, token string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+h.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// Every request needs the fleet token; a server or source refuses to start
// with a missing or short one.
func TestServerAuth(t *testing.T) {
	e := newEnv(t)
	m, data := e.push(t, "auth", 3*testPart)
	h := e.newHost(t, "a", hostOpts{})
	h.acquire(t, m, data)
	path := "/v1/blobs/" + m.Files[0].Digest
	for _, tc := range []struct {
		name, token string
		code        int
	}{
		{"no token", "", 401},
		{"wrong token", testToken + "x", 401},
		{"prefix of the token", testToken[:MinTokenLen], 401},
		{"the token", testToken, 200},
	} {
		resp, body := h.get(t, path, tc.token, nil)
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %s %s, want %d", tc.name, resp.Status, body, tc.code)
		}
		if tc.code == 401 && (resp.Header.Get("WWW-Authenticate") == "" || bytes.Contains(body, data[:16])) {
			t.Errorf("%s: 401 without a challenge, or with blob bytes", tc.name)
		}
	}
	// A basic-auth header with the token as password is no bearer token.
	if resp, _ := h.get(t, path, "", map[string]string{"Authorization": "Basic " + testToken}); resp.StatusCode != 401 {
		t.Errorf("basic auth: %s", resp.Status)
	}
	if _, err := NewServer(ServerConfig{Cache: h.cache, Token: "short"}); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Errorf("short token: %v", err)
	}
	if _, err := NewSource(SourceConfig{Origin: e.origin, Fleet: NewHeartbeatFleet(e.rdb)}); err == nil || !strings.Contains(err.Error(), "GENFLEET_FLEET_TOKEN") {
		t.Errorf("no token: %v", err)
	}
}

// Ranges over a complete blob: one range per request, answered with 206
// and the exact bytes; the whole blob without a Range; 416 for what cannot
// be satisfied, 404 for a blob not here, 400 for a malformed digest.
func TestServerRanges(t *testing.T) {
	e := newEnv(t)
	const size = 3*testPart + 10
	m, data := e.push(t, "ranges", size)
	h := e.newHost(t, "a", hostOpts{})
	h.acquire(t, m, data)
	path := "/v1/blobs/" + m.Files[0].Digest
	for _, tc := range []struct {
		rng       string
		code      int
		off, n    int
		wantRange string
	}{
		{"bytes=0-99", 206, 0, 100, fmt.Sprintf("bytes 0-99/%d", size)},
		{fmt.Sprintf("bytes=%d-", size-5), 206, size - 5, 5, fmt.Sprintf("bytes %d-%d/%d", size-5, size-1, size)},
		{"bytes=-7", 206, size - 7, 7, fmt.Sprintf("bytes %d-%d/%d", size-7, size-1, size)},
		{fmt.Sprintf("bytes=%d-%d", testPart-3, size+100), 206, testPart - 3, size - testPart + 3, fmt.Sprintf("bytes %d-%d/%d", testPart-3, size-1, size)},
		{"", 200, 0, size, ""},
		{fmt.Sprintf("bytes=%d-", size), 416, 0, 0, ""},
		{"bytes=5-2", 416, 0, 0, ""},
		{"bytes=0-1,5-6", 416, 0, 0, ""},
		{"items=0-1", 416, 0, 0, ""},
	} {
		hdr := map[string]string{}
		if tc.rng != "" {
			hdr["Range"] = tc.rng
		}
		resp, body := h.get(t, path, testToken, hdr)
		if resp.StatusCode != tc.code {
			t.Errorf("Range %q: %s %s, want %d", tc.rng, resp.Status, body, tc.code)
			continue
		}
		if tc.code >= 300 {
			continue
		}
		if !bytes.Equal(body, data[tc.off:tc.off+tc.n]) || resp.Header.Get("Content-Range") != tc.wantRange {
			t.Errorf("Range %q: %d bytes, Content-Range %q; want %d bytes at %d, %q", tc.rng, len(body), resp.Header.Get("Content-Range"), tc.n, tc.off, tc.wantRange)
		}
	}
	if resp, _ := h.get(t, "/v1/blobs/sha256:"+strings.Repeat("0", 64), testToken, nil); resp.StatusCode != 404 {
		t.Errorf("unknown blob: %s", resp.Status)
	}
	if resp, _ := h.get(t, "/v1/blobs/sha256:XYZ", testToken, nil); resp.StatusCode != 400 {
		t.Errorf("malformed digest: %s", resp.Status)
	}
	resp, body := h.get(t, path+"/parts", testToken, nil)
	var pm PartMap
	if err := json.Unmarshal(body, &pm); err != nil || resp.StatusCode != 200 || !pm.Complete || pm.Size != size || pm.Have != "" {
		t.Errorf("part map of a complete blob: %s %s", resp.Status, body)
	}
}

// A download in progress serves its verified parts: the part map says
// which, a range inside them is served, one reaching past them gets 503
// with Retry-After (ask again, or elsewhere).
func TestServerPartialParts(t *testing.T) {
	e := newEnv(t)
	const size = 6 * testPart
	m, data := e.push(t, "partial", size)
	release := make(chan struct{})
	h := e.newHost(t, "a", hostOpts{src: func(c *SourceConfig) {
		c.Origin = &gatedOrigin{Source: e.origin, after: 2, release: release}
	}})
	done := make(chan error, 1)
	go func() {
		mod, err := h.cache.Acquire(context.Background(), m)
		if err == nil {
			mod.Close()
		}
		done <- err
	}()
	path := "/v1/blobs/" + m.Files[0].Digest
	var pm PartMap
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, body := h.get(t, path+"/parts", testToken, nil)
		if resp.StatusCode == 200 && json.Unmarshal(body, &pm) == nil && strings.Count(pm.Have, "1") == 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pm.Complete || pm.PartSize != testPart || len(pm.Have) != 6 || strings.Count(pm.Have, "1") != 2 {
		t.Fatalf("part map during the download: %+v", pm)
	}
	first := strings.IndexByte(pm.Have, '1')
	resp, body := h.get(t, path, testToken, map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", first*testPart, (first+1)*testPart-1)})
	if resp.StatusCode != 206 || !bytes.Equal(body, data[first*testPart:(first+1)*testPart]) {
		t.Errorf("verified part %d: %s, %d bytes", first, resp.Status, len(body))
	}
	missing := strings.IndexByte(pm.Have, '0')
	resp, _ = h.get(t, path, testToken, map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", missing*testPart, missing*testPart+10)})
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("unverified part %d: %s, Retry-After %q; want 503 with Retry-After", missing, resp.Status, resp.Header.Get("Retry-After"))
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// gatedOrigin passes the first `after` ranged GETs on, then holds the rest
// until release is closed.
type gatedOrigin struct {
	modelcache.Source
	after   int
	release chan struct{}
	mu      sync.Mutex
	n       int
}

func (g *gatedOrigin) GetRange(ctx context.Context, bucket, key, etag string, off, n int64) (io.ReadCloser, error) {
	g.mu.Lock()
	g.n++
	k := g.n
	g.mu.Unlock()
	if k > g.after {
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.Source.GetRange(ctx, bucket, key, etag, off, n)
}

// The bandwidth cap holds for all transfers together: two peers reading
// 2 MiB each from a server capped at 4 MB/s take about a second.
func TestServerBandwidthLimit(t *testing.T) {
	e := newEnv(t)
	const size = 2 << 20
	m, data := e.push(t, "bw", size)
	const bw = 4e6
	h := e.newHost(t, "a", hostOpts{bandwidth: bw})
	h.acquire(t, m, data)
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			resp, body := h.get(t, "/v1/blobs/"+m.Files[0].Digest, testToken, nil)
			if resp.StatusCode != 200 || !bytes.Equal(body, data) {
				t.Errorf("transfer: %s, %d bytes", resp.Status, len(body))
			}
		})
	}
	wg.Wait()
	// The bucket starts full (one chunk): the rest must wait for tokens.
	if min := time.Duration(float64(2*size-chunk) / bw * float64(time.Second)); time.Since(start) < min {
		t.Errorf("4 MiB at %g B/s took %v; the cap allows no less than %v", bw, time.Since(start), min)
	}
	if got := counter(t, h.metrics, "genfleet_peer_served_bytes_total", nil); got != 2*size {
		t.Errorf("served bytes counter = %v, want %d", got, 2*size)
	}
}
