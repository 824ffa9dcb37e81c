// Package client is the Go client of genfleet's API (docs/jobs.md, "HTTP
// API"): submit a job or a batch of them, read a job, follow its events,
// wait for it, fetch its images and thumbnails, upload an init image or a
// mask, cancel a job and list the registered models.
//
// A Client sends the API's bearer token with every request. An answer the
// API gives as an error comes back as an *Error, which carries the API's
// {"error","field"}; a request that never got an answer returns the
// transport's error.
//
// Of genfleet it imports only package job (and an internal reader of
// Server-Sent Events): the request and record types are the ones the
// scheduler and the workers use.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Client talks to one scheduler's API. Its fields are read on every
// request; set them before using the client from several goroutines.
type Client struct {
	// BaseURL is the API's base URL, e.g. "http://127.0.0.1:8080"; a
	// trailing slash is ignored.
	BaseURL string
	// Token is the bearer token the scheduler requires (its
	// --api-token); empty sends none.
	Token string
	// HTTP sends the requests; nil means http.DefaultClient. An event
	// stream stays open for as long as the job runs, so a client with a
	// Timeout cuts Follow short (Follow then reconnects).
	HTTP *http.Client
}

// New returns a client of the API at baseURL that sends token (when not
// empty) as its bearer token.
func New(baseURL, token string) *Client {
	return &Client{BaseURL: baseURL, Token: token}
}

// Error is an error answer of the API: its status and, when the body was
// the API's JSON error, its message and the field it blames.
type Error struct {
	// Method and Path are the request's, e.g. "POST" and "/v1/jobs".
	Method, Path string
	// StatusCode and Status are the answer's, e.g. 400 and "400 Bad Request".
	StatusCode int
	Status     string
	// Message is the API's "error"; empty when the body held none.
	Message string
	// Field is the API's "field": the request field, header or parameter
	// to blame ("width", "model", "Idempotency-Key"); often empty.
	Field string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%s %s: %s: %s", e.Method, e.Path, e.Status, e.Message)
	}
	return fmt.Sprintf("%s %s: %s", e.Method, e.Path, e.Status)
}

// maxJSON bounds a JSON answer the client reads (a batch of 1,000 results
// or a long model list fits well within it).
const maxJSON = 16 << 20

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// newRequest builds a request for path (which starts with "/") with the
// bearer token set.
func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, body)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// send sends req and returns the response when its status is one of want;
// any other status is read and closed and becomes an *Error.
func (c *Client) send(req *http.Request, want ...int) (*http.Response, error) {
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, err
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, apiError(req, resp)
}

// apiError reads resp's body (a little of it) into an *Error.
func apiError(req *http.Request, resp *http.Response) *Error {
	e := &Error{Method: req.Method, Path: req.URL.Path, StatusCode: resp.StatusCode, Status: resp.Status}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var body struct {
		Error string `json:"error"`
		Field string `json:"field"`
	}
	if json.Unmarshal(b, &body) == nil {
		e.Message, e.Field = body.Error, body.Field
	}
	return e
}

// doJSON sends a request with body in (JSON, when not nil) and decodes an
// answer of status want into out.
func (c *Client) doJSON(ctx context.Context, method, path string, in any, want int, out any, header ...string) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return c.decode(req, out, want)
}

// decode sends req and decodes an answer whose status is one of want
// into out.
func (c *Client) decode(req *http.Request, out any, want ...int) error {
	resp, err := c.send(req, want...)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJSON))
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: %s: %w", req.Method, req.URL.Path, resp.Status, err)
	}
	return nil
}
