// Package ui is genfleet's web page: the hosts with the models they hold
// warm, the queues by device class and priority, recent jobs with their
// images, one job's request, images and phase timings, and a submit form.
//
// It is a client of the API, in the same process: every page is made from
// the JSON of the API's own endpoints (GET /v1/workers, /v1/queues,
// /v1/jobs, /v1/jobs/{id}, /v1/models), called in-process with the
// session's bearer token, so the page shows what the API shows and keeps
// no store of its own. Lists are HTML made on the server (readable without
// JavaScript); a small script refreshes them by fetching the same HTML
// fragments every few seconds. Assets are embedded; nothing is loaded from
// elsewhere.
//
// Authentication: where the API has bearer tokens, a browser signs in once
// with one of them at /ui/login; the page then keeps a session cookie
// (HttpOnly, SameSite=Strict, Path=/ui, 12 hours) that holds an expiry and
// an HMAC of it keyed with the token, never the token itself. Forms that
// change something (submit, cancel, sign out) carry a CSRF token derived
// from the session. See docs/ui.md.
package ui

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// Prefix is the path the page is served under.
const Prefix = "/ui"

// Config configures the page.
type Config struct {
	// API is the API's handler, authentication included: the page calls
	// it in-process for every piece of data it shows. Required.
	API http.Handler
	// Tokens are the API's bearer tokens; empty means the API is open,
	// and so is the page (no sign-in).
	Tokens []string
	// SessionTTL is how long a sign-in lasts. Default 12h.
	SessionTTL time.Duration
	// Refresh is how often the page's script fetches fresh lists.
	// Default 3s.
	Refresh time.Duration
	Logger  *slog.Logger
}

// UI serves the page under Prefix.
type UI struct {
	cfg    Config
	mux    *http.ServeMux
	pages  *pages
	static http.Handler
	// openKey keys the CSRF tokens of a page without sign-in (no API
	// tokens): random per process.
	openKey []byte
}

// New returns the page's handler for paths under Prefix.
func New(cfg Config) *UI {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u := &UI{cfg: cfg, mux: http.NewServeMux(), pages: loadPages(), openKey: make([]byte, 32)}
	_, _ = rand.Read(u.openKey)
	sub, _ := fs.Sub(assets, "assets")
	u.static = http.StripPrefix(Prefix+"/static/", http.FileServerFS(sub))

	m := u.mux
	m.HandleFunc("GET "+Prefix, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
	})
	m.HandleFunc("GET "+Prefix+"/static/", u.serveStatic)
	m.HandleFunc("GET "+Prefix+"/login", u.loginPage)
	m.HandleFunc("POST "+Prefix+"/login", u.login)
	m.HandleFunc("POST "+Prefix+"/logout", u.logout)

	m.Handle("GET "+Prefix+"/{$}", u.page(u.fleetPage))
	m.Handle("GET "+Prefix+"/jobs", u.page(u.jobsPage))
	m.Handle("GET "+Prefix+"/jobs/{id}", u.page(u.jobPage))
	m.Handle("GET "+Prefix+"/submit", u.page(u.submitPage))
	m.Handle("POST "+Prefix+"/submit", u.page(u.submit))
	m.Handle("POST "+Prefix+"/jobs/{id}/cancel", u.page(u.cancel))

	m.Handle("GET "+Prefix+"/part/hosts", u.part(u.hostsPart))
	m.Handle("GET "+Prefix+"/part/queues", u.part(u.queuesPart))
	m.Handle("GET "+Prefix+"/part/jobs", u.part(u.jobsPart))
	m.Handle("GET "+Prefix+"/part/jobs/{id}", u.part(u.jobPart))

	// Images pass through from the API, conditional requests included.
	m.Handle("GET "+Prefix+"/img/{id}/{kind}", u.part(u.image))
	m.Handle("GET "+Prefix+"/img/{id}/images/{k}", u.part(u.image))
	return u
}

// ServeHTTP serves the page. Every answer forbids framing and sets a
// content security policy that allows the page's own assets and images
// only.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	u.mux.ServeHTTP(w, r)
}

// Mount returns a handler that serves the page under Prefix and passes
// every other path to api. cfg.API is set to api.
func Mount(api http.Handler, cfg Config) http.Handler {
	cfg.API = api
	u := New(cfg)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == Prefix || strings.HasPrefix(r.URL.Path, Prefix+"/") {
			u.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

func (u *UI) serveStatic(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	u.static.ServeHTTP(w, r)
}

// apiAnswer is what an in-process API call answered.
type apiAnswer struct {
	code   int
	header http.Header
	body   []byte
}

// recorder is the ResponseWriter of an in-process API call.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (rr *recorder) Header() http.Header { return rr.header }
func (rr *recorder) Write(b []byte) (int, error) {
	if rr.code == 0 {
		rr.code = http.StatusOK
	}
	return rr.body.Write(b)
}
func (rr *recorder) WriteHeader(code int) {
	if rr.code == 0 {
		rr.code = code
	}
}

// call sends method path (with body, and headers in pairs) to the API as
// the session's token.
func (u *UI) call(ctx context.Context, token, method, path string, body io.Reader, hdr ...string) apiAnswer {
	req, err := http.NewRequestWithContext(ctx, method, path, body)
	if err != nil {
		return apiAnswer{code: http.StatusBadRequest, body: []byte(`{"error":"bad path"}`)}
	}
	req.RemoteAddr = "127.0.0.1:0" // in-process
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rr := &recorder{header: http.Header{}}
	u.cfg.API.ServeHTTP(rr, req)
	if rr.code == 0 {
		rr.code = http.StatusOK
	}
	return apiAnswer{code: rr.code, header: rr.header, body: rr.body.Bytes()}
}
