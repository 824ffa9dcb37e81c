package scheduler

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/genfleet/genfleet/job"
)

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// writeError answers code with err's message, and the field a
// job.FieldError names.
func writeError(w http.ResponseWriter, code int, err error) {
	body := apiError{Error: err.Error()}
	var fe *job.FieldError
	if errors.As(err, &fe) {
		body.Field = fe.Field
	}
	writeJSON(w, code, body)
}

// requestError is the message for a POST /v1/jobs body that did not
// decode: a syntax error is called one; anything else is job's own message
// (a field error, a body that is not a JSON object, invalid UTF-8).
func requestError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("request body is not valid JSON: %w", err)
	}
	return err
}

// checkJobID answers 400 for an id that cannot be a job's (job.ValidID)
// and returns false; no lookup is made for it.
func checkJobID(w http.ResponseWriter, id string) bool {
	if err := job.ValidID(id); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return false
	}
	return true
}

// jsonErrors wraps mux so that the answers it makes itself, 404 for a path
// no route matches and 405 for a method a path's routes do not take, are
// JSON like every other answer of the API (http.ServeMux writes plain
// text), keeping the 405's Allow header. Requests a route matches pass
// through untouched.
func (s *Server) jsonErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		// Let the mux's own handler decide (404 or 405 and its Allow
		// header), then answer in JSON instead of its text.
		c := &capture{header: http.Header{}}
		h.ServeHTTP(c, r)
		var msg string
		switch c.code {
		case http.StatusMethodNotAllowed:
			allow := c.header.Get("Allow")
			w.Header().Set("Allow", allow)
			msg = fmt.Sprintf("method %s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow)
		case http.StatusNotFound:
			msg = fmt.Sprintf("no such endpoint: %s %s (see docs/jobs.md for the API)", r.Method, r.URL.Path)
		default:
			msg = http.StatusText(c.code)
		}
		s.requests.WithLabelValues("unmatched", strconv.Itoa(c.code)).Inc()
		writeJSON(w, c.code, apiError{Error: msg})
	})
}

// capture is a ResponseWriter that keeps the status and headers written to
// it and drops the body.
type capture struct {
	header http.Header
	code   int
}

func (c *capture) Header() http.Header { return c.header }

func (c *capture) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	return len(b), nil
}

func (c *capture) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
}
