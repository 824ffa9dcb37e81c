package scheduler

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
)

// openPaths answer without a token: liveness and readiness probes come
// from the kubelet, /metrics from Prometheus and /autoscale from KEDA, none
// of which should need the API's secret. None of them reveals a job, a
// prompt, an image or a credential: /metrics carries counts by queue, route
// class and status code only, /autoscale counts and seconds per device
// class (its per-model detail is /v1/autoscale, behind the token). Keep
// them off the public network (docs/reliability.md).
var openPaths = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true, "/autoscale": true}

// authenticate wraps next so that every request except openPaths must carry
// "Authorization: Bearer <token>" with one of Config.APITokens. Without
// tokens it returns next unchanged (and New has logged a warning).
//
// Tokens are compared by their SHA-256 digests with
// subtle.ConstantTimeCompare, against every configured token without an
// early exit, so neither the time taken nor a length mismatch tells a
// caller how close a guess was.
func (s *Server) authenticate(next http.Handler) http.Handler {
	if len(s.cfg.APITokens) == 0 {
		s.log.Warn("API authentication is off: every client may submit, read and cancel jobs; set --api-token (GENFLEET_API_TOKEN)")
		return next
	}
	want := make([][32]byte, 0, len(s.cfg.APITokens))
	for _, t := range s.cfg.APITokens {
		want = append(want, sha256.Sum256([]byte(t)))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if openPaths[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		token, ok := bearerToken(r.Header.Get("Authorization"))
		if !ok {
			s.requests.WithLabelValues("auth", "401").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="genfleet"`)
			writeError(w, http.StatusUnauthorized, errors.New("missing bearer token: send Authorization: Bearer <token>"))
			return
		}
		got := sha256.Sum256([]byte(token))
		match := 0
		for i := range want {
			match |= subtle.ConstantTimeCompare(got[:], want[i][:])
		}
		if match != 1 {
			s.requests.WithLabelValues("auth", "401").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="genfleet", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, errors.New("invalid bearer token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearerToken returns the token of an "Authorization: Bearer <token>"
// header value (the scheme is case-insensitive, RFC 6750).
func bearerToken(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
