package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries a webhook POST's signature:
//
//	Genfleet-Signature: t=1764239822,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//
// t is the time of signing in Unix seconds; each v1 is the lowercase hex
// HMAC-SHA256, keyed with a webhook secret, of t, ".", and the request body
// exactly as sent. During a secret rotation there is one v1 per secret.
// A receiver recomputes the HMAC with its secret, compares it in constant
// time with each v1, and refuses a t too far from its clock (replay).
const SignatureHeader = "Genfleet-Signature"

// DefaultTolerance is how far from now a signature's time may be for
// Verify, unless its caller says otherwise.
const DefaultTolerance = 5 * time.Minute

// Sign returns the SignatureHeader value for body signed at t with every
// secret, in order.
func Sign(secrets []string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	var b strings.Builder
	b.WriteString("t=" + ts)
	for _, s := range secrets {
		b.WriteString(",v1=" + hex.EncodeToString(mac(s, ts, body)))
	}
	return b.String()
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors of Verify.
var (
	ErrBadSignature = errors.New("webhook signature does not match")
	ErrStale        = errors.New("webhook signature is too old or from the future")
)

// Verify checks a SignatureHeader value of body against secret: one of its
// v1 signatures is the HMAC of its t and body, and t is within tolerance
// of now. It is what a receiver written in Go runs (docs/jobs.md shows the
// same in a few lines of any language).
func Verify(secret, header string, body []byte, tolerance time.Duration, now time.Time) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			if s, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, s)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return fmt.Errorf("%w: header %q has no t= and v1=", ErrBadSignature, header)
	}
	want := mac(secret, ts, body)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed %v ago", ErrStale, d.Round(time.Second))
	}
	return nil
}
