package peer

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/genfleet/genfleet/internal/defaults"
	"github.com/genfleet/genfleet/modelcache"
)

// MinTokenLen is the shortest fleet token a Server or Source accepts.
const MinTokenLen = 16

// DefaultBandwidth is the default cap on the bytes per second a Server
// sends to all its peers together: 250 MB/s (2 Gbit/s), a fraction of a
// GPU host's NIC that leaves the rest to its own jobs.
const DefaultBandwidth = 250e6

// ServerConfig configures a Server. Fields without a stated default are
// required.
type ServerConfig struct {
	// Cache is what the server serves, read through its peer API.
	Cache *modelcache.Cache
	// Token is the fleet token every request must carry ("Authorization:
	// Bearer <token>"); at least MinTokenLen characters.
	Token string
	// Bandwidth caps the bytes per second sent to all peers together
	// (a token bucket). Default DefaultBandwidth; negative means no cap.
	Bandwidth float64
	// MaxStreams caps the transfers served at once; more are refused with
	// 503 and Retry-After, and the peer asks elsewhere. Default 32.
	MaxStreams int
	// Metrics, when set, receives the server's collectors.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Server serves a cache's blobs to peers (see the package doc and
// docs/fleet.md for the protocol). It is an http.Handler.
type Server struct {
	cfg     ServerConfig
	token   [32]byte
	limit   *rate.Limiter // nil: no cap
	streams chan struct{}
	mux     *http.ServeMux
	m       *serverMetrics
}

// chunk is how much a transfer reads, waits for and writes at a time; the
// token bucket's burst.
const chunk = 256 << 10

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Cache == nil {
		return nil, errors.New("peer server: no cache")
	}
	if err := checkToken(cfg.Token); err != nil {
		return nil, fmt.Errorf("peer server: %w", err)
	}
	defaults.Zero(&cfg.Bandwidth, DefaultBandwidth) // negative: no cap
	defaults.Positive(&cfg.MaxStreams, 32)
	defaults.Zero(&cfg.Logger, slog.Default())
	s := &Server{cfg: cfg, token: sha256.Sum256([]byte(cfg.Token)), streams: make(chan struct{}, cfg.MaxStreams)}
	if cfg.Bandwidth > 0 {
		s.limit = rate.NewLimiter(rate.Limit(cfg.Bandwidth), chunk)
	}
	m, err := newServerMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s.m = m
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /v1/blobs/{digest}", s.getBlob)
	s.mux.HandleFunc("GET /v1/blobs/{digest}/parts", s.getParts)
	return s, nil
}

// checkToken refuses a missing or short fleet token.
func checkToken(token string) error {
	if len(token) < MinTokenLen {
		return fmt.Errorf("the fleet token (GENFLEET_FLEET_TOKEN) must be at least %d characters; got %d", MinTokenLen, len(token))
	}
	return nil
}

// ServeHTTP authenticates the request, then serves it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	got := sha256.Sum256([]byte(token))
	if !ok || subtle.ConstantTimeCompare(got[:], s.token[:]) != 1 {
		s.m.request("401")
		w.Header().Set("WWW-Authenticate", `Bearer realm="genfleet-peer"`)
		httpError(w, http.StatusUnauthorized, "missing or wrong fleet token")
		return
	}
	s.mux.ServeHTTP(w, r)
}

// PartMap is the answer of GET /v1/blobs/{digest}/parts.
type PartMap struct {
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	Complete bool   `json:"complete"`
	// PartSize and Have describe a download in progress: Have[i] is '1'
	// when part i is verified and may be read, '0' when not.
	PartSize int64  `json:"part_size,omitempty"`
	Have     string `json:"have,omitempty"`
}

func (s *Server) getParts(w http.ResponseWriter, r *http.Request) {
	b, ok := s.open(w, r)
	if !ok {
		return
	}
	defer b.Close()
	pm := PartMap{Digest: b.Digest, Size: b.Size, Complete: b.Complete(), PartSize: b.PartSize}
	if !pm.Complete {
		have := make([]byte, len(b.Have()))
		for i, ok := range b.Have() {
			have[i] = '0'
			if ok {
				have[i] = '1'
			}
		}
		pm.Have = string(have)
	}
	s.m.request("200")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(pm)
}

// open opens the blob the request names, answering 400 or 404 itself.
func (s *Server) open(w http.ResponseWriter, r *http.Request) (*modelcache.PeerBlob, bool) {
	digest := r.PathValue("digest")
	if !validDigest(digest) {
		s.m.request("400")
		httpError(w, http.StatusBadRequest, fmt.Sprintf("invalid digest %q: want sha256:<64 lowercase hex digits>", digest))
		return nil, false
	}
	b, err := s.cfg.Cache.OpenPeerBlob(digest)
	switch {
	case errors.Is(err, modelcache.ErrNotCached):
		s.m.request("404")
		httpError(w, http.StatusNotFound, err.Error())
		return nil, false
	case err != nil:
		s.m.request("500")
		s.cfg.Logger.Warn("peer server: open blob", "digest", r.PathValue("digest"), "err", err)
		httpError(w, http.StatusInternalServerError, "cannot read the blob")
		return nil, false
	}
	return b, true
}

func (s *Server) getBlob(w http.ResponseWriter, r *http.Request) {
	b, ok := s.open(w, r)
	if !ok {
		return
	}
	defer b.Close()
	off, n, partial, err := parseRange(r.Header.Get("Range"), b.Size)
	if err != nil {
		s.m.request("416")
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", b.Size))
		httpError(w, http.StatusRequestedRangeNotSatisfiable, err.Error())
		return
	}
	if !b.Covers(off, n) {
		// Downloading here, but not that far yet: ask again soon, or
		// elsewhere.
		s.m.request("503")
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusServiceUnavailable, fmt.Sprintf("bytes %d-%d of %s are not verified here yet", off, off+n-1, b.Digest))
		return
	}
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		s.m.request("503")
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusServiceUnavailable, "serving as many transfers as allowed; ask another peer")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	code := http.StatusOK
	if partial {
		code = http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, b.Size))
	}
	w.WriteHeader(code)
	s.m.request(strconv.Itoa(code))
	if err := s.send(w, r, b, off, n); err != nil {
		s.cfg.Logger.Debug("peer server: transfer ended early", "digest", b.Digest, "off", off, "bytes", n, "err", err)
	}
}

// send writes n bytes of b from off, a chunk at a time, each after the
// token bucket allows it. A peer that stops reading is dropped after 30s
// without progress.
func (s *Server) send(w http.ResponseWriter, r *http.Request, b *modelcache.PeerBlob, off, n int64) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, min(chunk, n))
	for end := off + n; off < end; {
		k := min(int64(len(buf)), end-off)
		if s.limit != nil {
			if err := s.limit.WaitN(r.Context(), int(k)); err != nil {
				return err
			}
		}
		if _, err := b.ReadAt(buf[:k], off); err != nil {
			return err
		}
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		n, err := w.Write(buf[:k])
		s.m.served.Add(float64(n))
		if err == nil && int64(n) < k {
			err = io.ErrShortWrite
		}
		if err != nil {
			return err
		}
		off += k
	}
	return nil
}

// parseRange parses a Range header for a blob of size bytes: empty (the
// whole blob), "bytes=a-b", "bytes=a-" or "bytes=-n". One range only.
func parseRange(h string, size int64) (off, n int64, partial bool, err error) {
	if h == "" {
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, false, fmt.Errorf("range %q: want one range, bytes=FIRST-LAST", h)
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, false, fmt.Errorf("range %q: want bytes=FIRST-LAST", h)
	}
	if first == "" { // the last n bytes
		k, err := strconv.ParseInt(last, 10, 64)
		if err != nil || k <= 0 {
			return 0, 0, false, fmt.Errorf("range %q: bad suffix length", h)
		}
		k = min(k, size)
		return size - k, k, true, nil
	}
	a, err := strconv.ParseInt(first, 10, 64)
	if err != nil || a < 0 || a >= size {
		return 0, 0, false, fmt.Errorf("range %q: first byte outside the blob's %d bytes", h, size)
	}
	b := size - 1
	if last != "" {
		if b, err = strconv.ParseInt(last, 10, 64); err != nil || b < a {
			return 0, 0, false, fmt.Errorf("range %q: bad last byte", h)
		}
		b = min(b, size-1)
	}
	return a, b - a + 1, true, nil
}

// validDigest reports whether d is "sha256:<64 lowercase hex digits>".
func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
