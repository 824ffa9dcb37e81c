package job

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzEncodeRecord holds encodeRecord to json.Marshal, byte for byte (or
// both failing), over records built from the fuzzer's strings, numbers and
// times: strings with HTML, control characters, invalid UTF-8 and U+2028;
// floats tiny, huge, negative zero and not finite; times in any zone and
// out of JSON's range; every optional part present or not.
func FuzzEncodeRecord(f *testing.F) {
	f.Add("job-1", "<a&b>\u2028\x00\xff\"\\\t", "s3://m/x", 1.5, 1e-7, int64(0), int64(7), uint8(0xff))
	f.Add("", "", "", 0.0, math.Copysign(0, -1), int64(1<<62), int64(-3600), uint8(0))
	f.Add("x", "\u00e9\U0001F600", "p", 1e21, 123456789.125, int64(-62135596800e3), int64(86399), uint8(0x55))
	f.Add("x", "y", "z", math.NaN(), 1.0, int64(253402300800e3), int64(0), uint8(0x0f))
	f.Add("x", "y", "z", 7.5, math.Inf(1), int64(1e18), int64(19800), uint8(0xf0))
	f.Fuzz(func(t *testing.T, s1, s2, s3 string, f1, f2 float64, nanos, offset int64, parts uint8) {
		zone := time.FixedZone("z", int(offset%(48*3600)))
		// Seconds from nanos/1000 reach years far outside 0–9999.
		at := time.Unix(nanos/1000, (nanos%1e9+1e9)%1e9).In(zone)
		r := &Record{ID: s1, Status: Status(s2), Model: s3, Attempt: int(f2)}
		if parts&1 != 0 {
			r.Queue, r.Error = s2, s3
			r.Route = &Route{Queue: s1, Host: s2, Pool: s3, Reason: s1 + s2}
		}
		if parts&2 != 0 {
			r.Request = &Request{Model: s1, Prompt: s2, NegativePrompt: s3, Width: int(nanos % 4096), Height: int(offset),
				Steps: int(f2), Seed: nanos, Guidance: f1, SamplingMethod: s3, Scheduler: s2, OutputFormat: s1}
			if parts&32 != 0 {
				addGeneration(r.Request, s1, s2, f1, f2, nanos)
			}
		}
		if parts&4 != 0 {
			r.Progress = &Progress{Step: int(offset), Steps: int(nanos % 100)}
		}
		if parts&8 != 0 {
			r.Timings = map[string]float64{s1: f1, s2: f2, "total": f1 + f2, s3 + "x": -f2}
		}
		if parts&16 != 0 {
			r.Result = &Output{Bucket: s1, Key: s2, URL: s3, ContentType: s1, Bytes: nanos, SHA256: s2,
				ModelDigest: s3, Width: int(offset), Height: -1, CacheHit: parts&32 != 0,
				ModelSource: s2, ModelWaitMS: f2, ModelFetchedBytes: offset}
			r.Worker = &WorkerInfo{Host: s3, PID: int(offset), Backend: s1}
			if parts&4 != 0 {
				r.Outputs = []Output{*r.Result, {Key: s3, ModelWaitMS: f1, Seed: nanos + 1}}
			}
		}
		if parts&64 != 0 {
			r.CreatedAt = at
			r.FinishedAt = at.Add(time.Duration(offset))
		}
		if parts&128 != 0 {
			r.StartedAt = at.UTC()
		}
		want, werr := json.Marshal(r)
		got, gerr := encodeRecord(r)
		if (werr != nil) != (gerr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("encodeRecord\n got %s (%v)\nwant %s (%v)", got, gerr, want, werr)
		}
	})
}

// FuzzEncodePayload holds encodePayloadJSON to json.Marshal, as
// FuzzEncodeRecord does encodeRecord.
func FuzzEncodePayload(f *testing.F) {
	f.Add("demo", "<a&b>\u2028\x00\xff\"\\\t", 7.5, int64(1e18), int64(0), true)
	f.Add("", "", math.NaN(), int64(0), int64(3600), false)
	f.Add("x", "y", 1e-9, int64(253402300800e3), int64(-60), true)
	f.Fuzz(func(t *testing.T, s1, s2 string, g float64, nanos, offset int64, routed bool) {
		at := time.Unix(nanos/1000, (nanos%1e9+1e9)%1e9).In(time.FixedZone("z", int(offset%(48*3600))))
		p := &Payload{Version: int(offset), SubmittedAt: at,
			Request: Request{Model: s1, Prompt: s2, Width: int(nanos % 100), Seed: nanos, Guidance: g, OutputFormat: s1}}
		if routed {
			p.Route = &Route{Queue: s1, Host: s2, Pool: s1, Reason: s2}
			addGeneration(&p.Request, s1, s2, g, float64(offset), nanos)
		}
		if offset%7 == 0 {
			p.SubmittedAt = time.Time{}
		}
		want, werr := json.Marshal(p)
		got, gerr := encodePayloadJSON(p)
		if (werr != nil) != (gerr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("encodePayloadJSON\n got %s (%v)\nwant %s (%v)", got, gerr, want, werr)
		}
	})
}

// FuzzDecodeCanonicalPayload: whatever the canonical decoder accepts, the
// strict encoding/json decode accepts too and decodes to the same payload;
// and any payload encodePayloadJSON writes with strings that need no
// escapes is taken by the canonical decoder (so the fast path is the path).
func FuzzDecodeCanonicalPayload(f *testing.F) {
	f.Add([]byte(`{"v":1,"request":{"model":"demo","prompt":"noop","width":64,"height":64,"steps":1,"seed":0,"guidance":7.5,"output_format":"png"},"submitted_at":"2026-11-27T12:00:00.123456789Z","route":{"queue":"pool:cpu","pool":"pool:cpu","reason":"cold"}}`), "demo", "a lighthouse", 7.5, int64(1e18), true)
	f.Add([]byte(`{"v":1,"request":{"model":"demo","prompt":"x","width":01,"seed":0,"guidance":1}}`), "", "", 0.0, int64(0), false)
	f.Add([]byte(`{"v":1,"request":{"model":"demo","prompt":"x","seed":-0,"guidance":-0.5e-3}}`), "é", "\u2028", 1e300, int64(-1), true)
	f.Add([]byte(`{"v":1,"request":{"model":"d","prompt":"x","seed":1,"guidance":1e400}}`), "x", "<&>", -0.0, int64(5), false)
	f.Add([]byte(`{"v":1,"request":{"model":"d","prompt":"x","seed":1,"guidance":1,"n":3,"init_image":"upload:sha256:00","mask":"m","strength":-0,"loras":[{"model":"a","weight":1e-9},{"model":"b","weight":2}]}}`), "x", "y", 0.5, int64(7), true)
	f.Add([]byte(`{"v":1,"request":{"model":"d","prompt":"x","seed":1,"guidance":1,"loras":[]}}`), "x", "y", 0.5, int64(7), true)
	f.Add([]byte(`{"v":1,"request":{"model":"d","prompt":"x","seed":1,"guidance":1,"loras":[{"model":"a","weight":1},]}}`), "x", "y", 0.5, int64(7), true)
	f.Fuzz(func(t *testing.T, b []byte, s1, s2 string, g float64, nanos int64, routed bool) {
		if fast, ok := decodeCanonicalPayload(b); ok {
			slow, err := decodePayloadJSON(b)
			if err != nil || !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%s\ncanonical decoder: %+v\nencoding/json:     %+v (%v)", b, fast, slow, err)
			}
		}
		p := &Payload{Version: PayloadVersion, SubmittedAt: time.Unix(0, nanos).UTC(),
			Request: Request{Model: s1, Prompt: s2, Width: int(nanos % 3), Seed: nanos, Guidance: g, OutputFormat: s1, N: Count(nanos % 5)}}
		if routed {
			p.Route = &Route{Queue: s2, Host: s1, Pool: s2, Reason: s1}
			p.Request.InitImage, p.Request.Mask, p.Request.Strength = s2, s1, Float(g)
			p.Request.LoRAs = []LoRA{{Model: s1, Weight: g}, {Model: s2, Weight: 1}}
		}
		enc, err := encodePayloadJSON(p)
		if err != nil {
			return
		}
		fast, ok := decodeCanonicalPayload(enc)
		slow, err := decodePayloadJSON(enc)
		if err != nil {
			t.Fatalf("encoding/json cannot decode %s: %v", enc, err)
		}
		plain := func(s string) bool {
			return utf8.ValidString(s) && !strings.ContainsAny(s, "\"\\<>&\u2028\u2029") && !hasControl(s)
		}
		if !ok {
			if plain(s1) && plain(s2) && !math.IsNaN(g) && !math.IsInf(g, 0) {
				t.Fatalf("canonical decoder refused %s", enc)
			}
			return
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%s\ncanonical decoder: %+v\nencoding/json:     %+v", enc, fast, slow)
		}
	})
}

// addGeneration sets every generation feature of q from fuzzed values:
// counts, refs, a strength that may be NaN, LoRA weights, and options of
// every kind (a NaN one makes encoding/json fail).
func addGeneration(q *Request, s1, s2 string, f1, f2 float64, n int64) {
	q.N = Count(n % 20)
	q.InitImage, q.Mask = s1, s2
	q.Strength = Float(f1)
	q.LoRAs = []LoRA{{Model: s1, Weight: f2}, {Model: s2, Weight: -f1}}
	q.Options = map[string]any{s1: f1, s2: s1, "b": n%2 == 0, "i": n}
	if n%3 == 0 {
		q.Options = nil
	}
}

func hasControl(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// A payload as the scheduler writes it takes the canonical path.
func TestSchedulerPayloadIsCanonical(t *testing.T) {
	req := Request{Model: "demo", Prompt: "a lighthouse at dusk", NegativePrompt: "blur", Seed: 42, SamplingMethod: "euler_a", Scheduler: "karras"}
	task, _, err := NewRoutedTask("id-1", withDefaults(req), "cpu", &Route{Queue: "host:h1", Host: "h1", Pool: "pool:cpu", Reason: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := decodeCanonicalPayload(task.Payload()); !ok {
		t.Fatalf("payload %s is not read by the canonical decoder", task.Payload())
	}
}

func withDefaults(r Request) Request {
	r.ApplyDefaults()
	return r
}
