package ui

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// sessionCookie names the cookie of a signed-in browser.
const sessionCookie = "genfleet_session"

// session is who is asking: the token the page calls the API with ("" on
// an open API) and the CSRF token its forms must carry.
type session struct {
	token string
	CSRF  string
	// Open says the API has no tokens: nobody signs in or out.
	Open bool
}

// mac is HMAC-SHA256(key, parts joined by NUL).
func mac(key []byte, parts ...string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(strings.Join(parts, "\x00")))
	return m.Sum(nil)
}

// sessionValue is the cookie value of a session for token expiring at
// exp: "<unix seconds>.<base64url HMAC(token, expiry)>". It does not hold
// the token, and it stops working when exp passes or when the token is
// removed from the API's tokens.
func sessionValue(token string, exp time.Time) string {
	e := strconv.FormatInt(exp.Unix(), 10)
	return e + "." + base64.RawURLEncoding.EncodeToString(mac([]byte(token), "genfleet-ui-session", e))
}

// session returns the requester's session: the page's open one where the
// API has no tokens; else the one an "Authorization: Bearer" header or
// the session cookie proves. ok is false for a requester not signed in.
func (u *UI) session(r *http.Request) (s *session, ok bool) {
	if len(u.cfg.Tokens) == 0 {
		return &session{Open: true, CSRF: hex.EncodeToString(mac(u.openKey, "genfleet-ui-csrf"))}, true
	}
	if scheme, tok, found := strings.Cut(r.Header.Get("Authorization"), " "); found && strings.EqualFold(scheme, "Bearer") {
		if t, ok := u.knownToken(strings.TrimSpace(tok)); ok {
			return &session{token: t, CSRF: hex.EncodeToString(mac([]byte(t), "genfleet-ui-csrf", "bearer"))}, true
		}
		return nil, false
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, false
	}
	e, sig, found := strings.Cut(c.Value, ".")
	exp, err := strconv.ParseInt(e, 10, 64)
	if !found || err != nil || time.Now().Unix() >= exp {
		return nil, false
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return nil, false
	}
	// Every token is tried, without an early exit, like the API does.
	var match string
	for _, t := range u.cfg.Tokens {
		if hmac.Equal(got, mac([]byte(t), "genfleet-ui-session", e)) {
			match = t
		}
	}
	if match == "" {
		return nil, false
	}
	return &session{token: match, CSRF: hex.EncodeToString(mac([]byte(match), "genfleet-ui-csrf", c.Value))}, true
}

// knownToken returns the configured token equal to t, comparing SHA-256
// digests in constant time against every token.
func (u *UI) knownToken(t string) (string, bool) {
	got := sha256.Sum256([]byte(t))
	var match string
	for _, want := range u.cfg.Tokens {
		w := sha256.Sum256([]byte(want))
		if subtle.ConstantTimeCompare(got[:], w[:]) == 1 {
			match = want
		}
	}
	return match, match != "" && t != ""
}

// crossSite reports a request that a browser says came from another site
// (Sec-Fetch-Site), or whose Origin is not this host.
func crossSite(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s == "cross-site" || s == "same-site" {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		if ou, err := url.Parse(o); err != nil || ou.Host != r.Host {
			return true
		}
	}
	return false
}

// checkCSRF reports whether a form post carries the session's CSRF token
// and did not come from another site.
func checkCSRF(r *http.Request, s *session) bool {
	if crossSite(r) {
		return false
	}
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.CSRF)) == 1
}

// page wraps a page handler: a requester not signed in is sent to the
// sign-in page (and back here after it); a form post without the
// session's CSRF token is refused with 403.
func (u *UI) page(h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := u.session(r)
		if !ok {
			next := r.URL.RequestURI()
			if r.Method != http.MethodGet {
				next = Prefix + "/"
			}
			http.Redirect(w, r, Prefix+"/login?next="+url.QueryEscape(next), http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost && !checkCSRF(r, s) {
			u.renderError(w, r, s, http.StatusForbidden, "This form has expired or did not come from this page. Go back, reload the page and try again.")
			return
		}
		h(w, r, s)
	})
}

// part wraps the handler of a fragment or image the page's script or an
// <img> fetches: a requester not signed in gets 401 (the script then
// reloads the page, which leads to the sign-in).
func (u *UI) part(h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := u.session(r)
		if !ok {
			http.Error(w, "sign in at "+Prefix+"/login", http.StatusUnauthorized)
			return
		}
		h(w, r, s)
	})
}

// safeNext returns next when it is a path of this page, else the page's
// root: the sign-in never redirects elsewhere.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix+"/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix + "/"
	}
	return next
}

func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (u *UI) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := u.session(r); ok {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	u.render(w, r, http.StatusOK, "login", &view{Title: "Sign in", Data: loginView{Next: safeNext(r.URL.Query().Get("next"))}})
}

// loginView is the sign-in form.
type loginView struct {
	Next  string
	Error string
}

func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.PostFormValue("next"))
	if len(u.cfg.Tokens) == 0 {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	if crossSite(r) {
		http.Error(w, "sign-in from another site refused", http.StatusForbidden)
		return
	}
	t, ok := u.knownToken(strings.TrimSpace(r.PostFormValue("token")))
	if !ok {
		u.cfg.Logger.Warn("ui sign-in refused: unknown token", "remote", r.RemoteAddr)
		u.render(w, r, http.StatusUnauthorized, "login", &view{Title: "Sign in", Data: loginView{Next: next,
			Error: "That is not one of this scheduler's API tokens (GENFLEET_API_TOKEN)."}})
		return
	}
	exp := time.Now().Add(u.cfg.SessionTTL)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sessionValue(t, exp), Path: Prefix,
		Expires: exp, MaxAge: int(u.cfg.SessionTTL.Seconds()), HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r)})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request) {
	s, ok := u.session(r)
	if ok && !s.Open && !checkCSRF(r, s) {
		u.renderError(w, r, s, http.StatusForbidden, "This form has expired. Reload the page and try again.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: Prefix, MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r)})
	http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
}
