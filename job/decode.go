package job

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// decodeCanonicalPayload decodes b if it is exactly in the form
// encodePayloadJSON writes (fields in its order, no whitespace, strings
// without escapes) and reports whether it was. It gives what the strict
// encoding/json decode in DecodePayload gives for the same bytes
// (FuzzDecodeCanonicalPayload holds it to that); anything else, valid or
// not, is left to that decode. A worker decodes every task's payload, and
// reflection cost more than anything else it does for a short job.
func decodeCanonicalPayload(b []byte) (Payload, bool) {
	d := canonDecoder{b: b, ok: true}
	p := Payload{Request: requestDefaults}
	d.lit(`{"v":`)
	p.Version = int(d.int())
	d.lit(`,"request":{"model":`)
	q := &p.Request
	q.Model = d.str()
	d.lit(`,"prompt":`)
	q.Prompt = d.str()
	if d.opt(`,"negative_prompt":`) {
		q.NegativePrompt = d.str()
	}
	if d.opt(`,"width":`) {
		q.Width = int(d.int())
	}
	if d.opt(`,"height":`) {
		q.Height = int(d.int())
	}
	if d.opt(`,"steps":`) {
		q.Steps = int(d.int())
	}
	d.lit(`,"seed":`)
	q.Seed = d.int()
	d.lit(`,"guidance":`)
	q.Guidance = d.float()
	if d.opt(`,"sampling_method":`) {
		q.SamplingMethod = d.str()
	}
	if d.opt(`,"scheduler":`) {
		q.Scheduler = d.str()
	}
	if d.opt(`,"output_format":`) {
		q.OutputFormat = d.str()
	}
	if d.opt(`,"n":`) {
		q.N = Count(d.int())
	}
	if d.opt(`,"init_image":`) {
		q.InitImage = d.str()
	}
	if d.opt(`,"mask":`) {
		q.Mask = d.str()
	}
	if d.opt(`,"strength":`) {
		s := d.float()
		q.Strength = &s
	}
	if d.opt(`,"loras":[`) {
		for d.ok {
			d.lit(`{"model":`)
			l := LoRA{Model: d.str()}
			d.lit(`,"weight":`)
			l.Weight = d.float()
			d.lit(`}`)
			q.LoRAs = append(q.LoRAs, l)
			if !d.opt(`,`) {
				break
			}
		}
		d.lit(`]`)
	}
	// "options" is never canonical: a payload with it takes the strict
	// decode.
	d.lit(`}`)
	if d.opt(`,"submitted_at":`) {
		p.SubmittedAt = d.time()
	}
	if d.opt(`,"route":{"queue":`) {
		rt := &Route{}
		rt.Queue = d.str()
		if d.opt(`,"host":`) {
			rt.Host = d.str()
		}
		d.lit(`,"pool":`)
		rt.Pool = d.str()
		d.lit(`,"reason":`)
		rt.Reason = d.str()
		d.lit(`}`)
		p.Route = rt
	}
	d.lit(`}`)
	if !d.ok || d.i != len(b) {
		return Payload{}, false
	}
	return p, true
}

// canonDecoder reads canonical JSON; the first mismatch clears ok, and
// every later read is a no-op.
type canonDecoder struct {
	b  []byte
	i  int
	ok bool
}

func (d *canonDecoder) has(l string) bool {
	return d.ok && len(d.b)-d.i >= len(l) && string(d.b[d.i:d.i+len(l)]) == l
}

// lit consumes l, which must come next.
func (d *canonDecoder) lit(l string) {
	if !d.has(l) {
		d.ok = false
		return
	}
	d.i += len(l)
}

// opt consumes l if it comes next.
func (d *canonDecoder) opt(l string) bool {
	if !d.has(l) {
		return false
	}
	d.i += len(l)
	return true
}

// str reads a string with no escapes and no control characters, in valid
// UTF-8: one that decodes to its bytes as they are.
func (d *canonDecoder) str() string {
	if !d.ok || d.i >= len(d.b) || d.b[d.i] != '"' {
		d.ok = false
		return ""
	}
	start := d.i + 1
	for j := start; j < len(d.b); j++ {
		switch c := d.b[j]; {
		case c == '"':
			s := d.b[start:j]
			if !utf8.Valid(s) {
				d.ok = false
				return ""
			}
			d.i = j + 1
			return string(s)
		case c == '\\' || c < 0x20:
			d.ok = false
			return ""
		}
	}
	d.ok = false
	return ""
}

// number returns the JSON number that comes next: -?(0|[1-9][0-9]*)
// (\.[0-9]+)?([eE][+-]?[0-9]+)?, and whether it is an integer literal.
func (d *canonDecoder) number() (string, bool) {
	if !d.ok {
		return "", false
	}
	b, j := d.b, d.i
	digits := func() int {
		n := 0
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
			n++
		}
		return n
	}
	if j < len(b) && b[j] == '-' {
		j++
	}
	switch {
	case j < len(b) && b[j] == '0':
		j++
	case digits() == 0:
		d.ok = false
		return "", false
	}
	integer := true
	if j < len(b) && b[j] == '.' {
		j++
		integer = false
		if digits() == 0 {
			d.ok = false
			return "", false
		}
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		integer = false
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		if digits() == 0 {
			d.ok = false
			return "", false
		}
	}
	s := string(b[d.i:j])
	d.i = j
	return s, integer
}

// int reads an integer literal that fits an int64.
func (d *canonDecoder) int() int64 {
	s, integer := d.number()
	if !d.ok || !integer {
		d.ok = false
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		d.ok = false
	}
	return n
}

// float reads a number that fits a float64.
func (d *canonDecoder) float() float64 {
	s, _ := d.number()
	if !d.ok {
		return 0
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		d.ok = false
	}
	return f
}

// time reads a string time.Time's UnmarshalJSON accepts, as encoding/json
// would hand it over.
func (d *canonDecoder) time() time.Time {
	start := d.i
	d.str()
	if !d.ok {
		return time.Time{}
	}
	var t time.Time
	if err := t.UnmarshalJSON(d.b[start:d.i]); err != nil {
		d.ok = false
	}
	return t
}
