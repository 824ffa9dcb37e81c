package job

import "strconv"

// decodeRequestFast decodes b into r, which holds the defaults already, if
// b is a request of the plain kind clients send: a JSON object whose keys
// are the request's own field names, each once, in any order, with values
// that are strings without escapes or numbers. It reports whether it did;
// for anything else (an escape, null, an unknown or repeated key, LoRAs,
// engine options, a webhook, a number that does not fit) it leaves the
// decode to
// encoding/json, which gives the same result or the error
// (FuzzDecodeRequestFast holds the two together). The API decodes every
// submitted request, and reflection was most of a batch's CPU.
func decodeRequestFast(b []byte, r *Request) bool {
	d := canonDecoder{b: b, ok: true}
	d.ws()
	d.lit(`{`)
	d.ws()
	if d.opt(`}`) {
		return d.end()
	}
	var seen uint16
	for d.ok {
		key := d.key()
		d.ws()
		d.lit(`:`)
		d.ws()
		bit, ok := requestKeys[key]
		if !ok || seen&bit != 0 {
			return false // unknown, repeated or not plain: encoding/json's to judge
		}
		seen |= bit
		switch key {
		case "model":
			r.Model = d.str()
		case "prompt":
			r.Prompt = d.str()
		case "negative_prompt":
			r.NegativePrompt = d.str()
		case "width":
			r.Width = d.intOf(strconv.IntSize)
		case "height":
			r.Height = d.intOf(strconv.IntSize)
		case "steps":
			r.Steps = d.intOf(strconv.IntSize)
		case "seed":
			r.Seed = d.int()
		case "guidance":
			r.Guidance = d.float()
		case "sampling_method":
			r.SamplingMethod = d.str()
		case "scheduler":
			r.Scheduler = d.str()
		case "output_format":
			r.OutputFormat = d.str()
		case "n":
			r.N = Count(d.intOf(strconv.IntSize))
		case "init_image":
			r.InitImage = d.str()
		case "mask":
			r.Mask = d.str()
		case "strength":
			f := d.float()
			r.Strength = &f
		case "priority":
			r.Priority = Priority(d.str())
		}
		d.ws()
		if d.opt(`}`) {
			return d.end()
		}
		d.lit(`,`)
		d.ws()
	}
	return false
}

// requestKeys are the keys decodeRequestFast takes, each a bit of its
// seen set. (LoRAs, options and a webhook, objects and arrays, are left
// to encoding/json.)
var requestKeys = map[string]uint16{
	"model": 1 << 0, "prompt": 1 << 1, "negative_prompt": 1 << 2, "width": 1 << 3, "height": 1 << 4,
	"steps": 1 << 5, "seed": 1 << 6, "guidance": 1 << 7, "sampling_method": 1 << 8, "scheduler": 1 << 9,
	"output_format": 1 << 10, "priority": 1 << 11, "n": 1 << 12, "init_image": 1 << 13, "mask": 1 << 14,
	"strength": 1 << 15,
}

// ws skips JSON whitespace.
func (d *canonDecoder) ws() {
	for d.ok && d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// key reads an object key made of a-z and '_' only: a key encoding/json
// would match to a field only by its exact name.
func (d *canonDecoder) key() string {
	if !d.ok || d.i >= len(d.b) || d.b[d.i] != '"' {
		d.ok = false
		return ""
	}
	for j := d.i + 1; j < len(d.b); j++ {
		c := d.b[j]
		if c == '"' {
			k := string(d.b[d.i+1 : j])
			d.i = j + 1
			return k
		}
		if !(c >= 'a' && c <= 'z' || c == '_') {
			d.ok = false
			return ""
		}
	}
	d.ok = false
	return ""
}

// intOf reads an integer literal that fits an int of bits bits.
func (d *canonDecoder) intOf(bits int) int {
	s, integer := d.number()
	if !d.ok || !integer {
		d.ok = false
		return 0
	}
	n, err := strconv.ParseInt(s, 10, bits)
	if err != nil {
		d.ok = false
	}
	return int(n)
}

// end reports whether the object ended the input (whitespace aside) and
// every read was plain.
func (d *canonDecoder) end() bool {
	d.ws()
	return d.ok && d.i == len(d.b)
}
