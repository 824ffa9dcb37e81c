package job

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// encodeRecord returns r as JSON, byte for byte what json.Marshal gives
// (FuzzEncodeRecord holds it to that), written by hand: a worker encodes a
// record at every state change, and reflection made that the largest CPU
// cost of a short job after the network. Anything encoding/json would
// refuse or treat specially (a NaN timing, a year outside 0–9999) goes
// through json.Marshal itself.
func encodeRecord(r *Record) ([]byte, error) {
	if !plainRecord(r) {
		return json.Marshal(r)
	}
	b := make([]byte, 0, 768)
	b = append(b, `{"id":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"status":`...)
	b = appendString(b, string(r.Status))
	b = append(b, `,"model":`...)
	b = appendString(b, r.Model)
	if r.Queue != "" {
		b = append(b, `,"queue":`...)
		b = appendString(b, r.Queue)
	}
	if r.Route != nil {
		b = append(b, `,"route":`...)
		b = appendRoute(b, r.Route)
	}
	if r.Error != "" {
		b = append(b, `,"error":`...)
		b = appendString(b, r.Error)
	}
	if q := r.Request; q != nil {
		b = append(b, `,"request":`...)
		b = appendRequest(b, q)
	}
	if p := r.Progress; p != nil {
		b = append(b, `,"progress":{"step":`...)
		b = strconv.AppendInt(b, int64(p.Step), 10)
		b = append(b, `,"steps":`...)
		b = strconv.AppendInt(b, int64(p.Steps), 10)
		b = append(b, '}')
	}
	if len(r.Timings) > 0 {
		b = append(b, `,"timings":{`...)
		keys := make([]string, 0, len(r.Timings))
		for k := range r.Timings {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendFloat(b, r.Timings[k])
		}
		b = append(b, '}')
	}
	if o := r.Result; o != nil {
		b = append(b, `,"result":`...)
		b = appendOutput(b, o)
	}
	if len(r.Outputs) > 0 {
		b = append(b, `,"outputs":[`...)
		for i := range r.Outputs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendOutput(b, &r.Outputs[i])
		}
		b = append(b, ']')
	}
	if w := r.Worker; w != nil {
		b = append(b, `,"worker":{"host":`...)
		b = appendString(b, w.Host)
		b = append(b, `,"pid":`...)
		b = strconv.AppendInt(b, int64(w.PID), 10)
		b = append(b, `,"backend":`...)
		b = appendString(b, w.Backend)
		b = append(b, '}')
	}
	if r.Attempt != 0 {
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(r.Attempt), 10)
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{`,"created_at":`, r.CreatedAt}, {`,"started_at":`, r.StartedAt}, {`,"finished_at":`, r.FinishedAt}} {
		if f.t.IsZero() {
			continue // omitzero
		}
		t, err := f.t.MarshalJSON()
		if err != nil {
			return json.Marshal(r) // its error names the field
		}
		b = append(b, f.name...)
		b = append(b, t...)
	}
	return append(b, '}'), nil
}

func appendOutput(b []byte, o *Output) []byte {
	b = append(b, `{"bucket":`...)
	b = appendString(b, o.Bucket)
	b = append(b, `,"key":`...)
	b = appendString(b, o.Key)
	b = append(b, `,"url":`...)
	b = appendString(b, o.URL)
	b = append(b, `,"content_type":`...)
	b = appendString(b, o.ContentType)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, o.Bytes, 10)
	b = append(b, `,"sha256":`...)
	b = appendString(b, o.SHA256)
	b = append(b, `,"model_digest":`...)
	b = appendString(b, o.ModelDigest)
	b = append(b, `,"width":`...)
	b = strconv.AppendInt(b, int64(o.Width), 10)
	b = append(b, `,"height":`...)
	b = strconv.AppendInt(b, int64(o.Height), 10)
	b = append(b, `,"cache_hit":`...)
	b = strconv.AppendBool(b, o.CacheHit)
	b = append(b, `,"model_source":`...)
	b = appendString(b, o.ModelSource)
	b = append(b, `,"model_wait_ms":`...)
	b = appendFloat(b, o.ModelWaitMS)
	b = append(b, `,"model_fetched_bytes":`...)
	b = strconv.AppendInt(b, o.ModelFetchedBytes, 10)
	b = append(b, `,"seed":`...)
	b = strconv.AppendInt(b, o.Seed, 10)
	return append(b, '}')
}

// plainRecord reports whether every float in r is finite (encoding/json
// refuses the others) and its request's options encode (plainOptions).
func plainRecord(r *Record) bool {
	for _, v := range r.Timings {
		if !finite(v) {
			return false
		}
	}
	if r.Result != nil && !finite(r.Result.ModelWaitMS) {
		return false
	}
	for i := range r.Outputs {
		if !finite(r.Outputs[i].ModelWaitMS) {
			return false
		}
	}
	return r.Request == nil || plainReq(r.Request)
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// plainReq reports whether appendRequest writes q as encoding/json does:
// every float finite and the options encodable.
func plainReq(q *Request) bool {
	if !finite(q.Guidance) || (q.Strength != nil && !finite(*q.Strength)) {
		return false
	}
	for _, l := range q.LoRAs {
		if !finite(l.Weight) {
			return false
		}
	}
	if len(q.Options) > 0 {
		if _, err := json.Marshal(q.Options); err != nil {
			return false
		}
	}
	return true
}

// encodePayloadJSON returns p as JSON, byte for byte what json.Marshal
// gives (FuzzEncodePayload): the scheduler encodes one per submit.
func encodePayloadJSON(p *Payload) ([]byte, error) {
	if !plainReq(&p.Request) {
		return json.Marshal(p)
	}
	b := make([]byte, 0, 384)
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(p.Version), 10)
	b = append(b, `,"request":`...)
	b = appendRequest(b, &p.Request)
	if !p.SubmittedAt.IsZero() {
		t, err := p.SubmittedAt.MarshalJSON()
		if err != nil {
			return json.Marshal(p) // its error names the field
		}
		b = append(b, `,"submitted_at":`...)
		b = append(b, t...)
	}
	if p.Route != nil {
		b = append(b, `,"route":`...)
		b = appendRoute(b, p.Route)
	}
	return append(b, '}'), nil
}

func appendRoute(b []byte, rt *Route) []byte {
	b = append(b, `{"queue":`...)
	b = appendString(b, rt.Queue)
	if rt.Host != "" {
		b = append(b, `,"host":`...)
		b = appendString(b, rt.Host)
	}
	b = append(b, `,"pool":`...)
	b = appendString(b, rt.Pool)
	b = append(b, `,"reason":`...)
	b = appendString(b, rt.Reason)
	return append(b, '}')
}

func appendRequest(b []byte, q *Request) []byte {
	b = append(b, `{"model":`...)
	b = appendString(b, q.Model)
	b = append(b, `,"prompt":`...)
	b = appendString(b, q.Prompt)
	if q.NegativePrompt != "" {
		b = append(b, `,"negative_prompt":`...)
		b = appendString(b, q.NegativePrompt)
	}
	if q.Width != 0 {
		b = append(b, `,"width":`...)
		b = strconv.AppendInt(b, int64(q.Width), 10)
	}
	if q.Height != 0 {
		b = append(b, `,"height":`...)
		b = strconv.AppendInt(b, int64(q.Height), 10)
	}
	if q.Steps != 0 {
		b = append(b, `,"steps":`...)
		b = strconv.AppendInt(b, int64(q.Steps), 10)
	}
	b = append(b, `,"seed":`...)
	b = strconv.AppendInt(b, q.Seed, 10)
	b = append(b, `,"guidance":`...)
	b = appendFloat(b, q.Guidance)
	if q.SamplingMethod != "" {
		b = append(b, `,"sampling_method":`...)
		b = appendString(b, q.SamplingMethod)
	}
	if q.Scheduler != "" {
		b = append(b, `,"scheduler":`...)
		b = appendString(b, q.Scheduler)
	}
	if q.OutputFormat != "" {
		b = append(b, `,"output_format":`...)
		b = appendString(b, q.OutputFormat)
	}
	if !q.N.IsZero() {
		b = append(b, `,"n":`...)
		b = strconv.AppendInt(b, int64(q.N), 10)
	}
	if q.InitImage != "" {
		b = append(b, `,"init_image":`...)
		b = appendString(b, q.InitImage)
	}
	if q.Mask != "" {
		b = append(b, `,"mask":`...)
		b = appendString(b, q.Mask)
	}
	if q.Strength != nil {
		b = append(b, `,"strength":`...)
		b = appendFloat(b, *q.Strength)
	}
	if len(q.LoRAs) > 0 {
		b = append(b, `,"loras":[`...)
		for i, l := range q.LoRAs {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"model":`...)
			b = appendString(b, l.Model)
			b = append(b, `,"weight":`...)
			b = appendFloat(b, l.Weight)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if len(q.Options) > 0 {
		// Rare, and a map of any values: encoding/json's own bytes (keys
		// sorted), which is what it writes for the field. plainReq has
		// checked that they encode.
		ob, _ := json.Marshal(q.Options)
		b = append(b, `,"options":`...)
		b = append(b, ob...)
	}
	return append(b, '}')
}

// appendFloat appends f as encoding/json does: the shortest
// representation, in exponent form only for very small or large values,
// with a two-digit exponent kept short (1e-07 → 1e-7).
func appendFloat(b []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString appends s quoted as encoding/json does by default: HTML
// characters, U+2028 and U+2029 escaped, invalid UTF-8 replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
