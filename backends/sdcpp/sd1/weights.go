package sd1

import (
	"encoding/binary"
	"hash/fnv"
	"io"
	"math"
	"sync"
)

// How the random values are drawn. Each tensor has its own stream, seeded
// from the model's seed and the tensor's name, so a tensor has the same
// bytes in a single file and in a split one, and in any order. Each
// 64-bit output of the stream gives four 16-bit draws; a draw indexes a
// table of 65536 quantiles of the normal distribution, so the values are
// normal-ish, bounded (±4.3 standard deviations) and cheap to make.
//
// The spreads keep the engine's numbers finite and the image not flat:
// weights have a standard deviation of 1/sqrt(fan-in), which keeps the
// activations near unit scale layer after layer; norms scale by about 1;
// biases and the embedding tables are small.
const (
	normWeightMean   = 1.0
	normWeightStd    = 0.02
	biasStd          = 0.01
	tokenEmbedStd    = 0.02
	positionEmbedStd = 0.01
	// q8Range and q4Range are how many standard deviations the largest
	// quantized code stands for.
	q8Range = 4.5
	q4Range = 3.0
)

// rng is a wyrand stream: fast, and good enough for random weights.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0xa0761d6478bd642f
	hi, lo := mul64(r.s, r.s^0xe7037ed1a0b428db)
	return hi ^ lo
}

func mul64(a, b uint64) (uint64, uint64) {
	const mask32 = 1<<32 - 1
	a0, a1 := a&mask32, a>>32
	b0, b1 := b&mask32, b>>32
	w0 := a0 * b0
	t := a1*b0 + w0>>32
	w1 := t&mask32 + a0*b1
	hi := a1*b1 + t>>32 + w1>>32
	return hi, a * b
}

// tensorRNG returns the stream of the tensor named name in a model with
// the given seed.
func tensorRNG(seed uint64, name string) *rng {
	h := fnv.New64a()
	h.Write([]byte(name))
	return &rng{s: splitmix64(splitmix64(seed) ^ h.Sum64())}
}

// splitmix64 is SplitMix64's finalizer: it spreads nearby seeds and names
// far apart in the stream's state space.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// quantiles[i] is the normal quantile at (i+0.5)/65536, rounded to
// float32, which hides the last-bit differences math.Erfinv may have
// between platforms; what is made from it is float32 arithmetic with
// explicit conversions, which the compiler may not fuse.
var quantiles = sync.OnceValue(func() *[1 << 16]float32 {
	var q [1 << 16]float32
	for i := range q {
		p := (float64(i) + 0.5) / (1 << 16)
		q[i] = float32(math.Sqrt2 * math.Erfinv(2*p-1))
	}
	return &q
})

// tables caches the f16, q8_0 and q4_0 code tables per standard deviation.
var tables sync.Map // tableKey → *[1 << 16]uint16 or *[1 << 16]int8

type tableKey struct {
	kind string
	std  float32
}

// f16Table maps a draw to the f16 bits of std × its quantile.
func f16Table(std float32) *[1 << 16]uint16 {
	k := tableKey{"f16", std}
	if t, ok := tables.Load(k); ok {
		return t.(*[1 << 16]uint16)
	}
	q := quantiles()
	var t [1 << 16]uint16
	for i := range t {
		t[i] = f32ToF16(q[i] * std)
	}
	v, _ := tables.LoadOrStore(k, &t)
	return v.(*[1 << 16]uint16)
}

// codeTable maps a draw to a quantized code: for q8_0 a signed code in
// [-127, 127] with q8Range standard deviations at 127, for q4_0 an
// unsigned code in [0, 15] standing for code-8, with q4Range standard
// deviations at 8.
func codeTable(kind string) *[1 << 16]int8 {
	k := tableKey{kind, 0}
	if t, ok := tables.Load(k); ok {
		return t.(*[1 << 16]int8)
	}
	q := quantiles()
	var t [1 << 16]int8
	for i := range t {
		if kind == StorageQ8_0 {
			t[i] = int8(max(-127, min(127, math.Round(float64(q[i])*127/q8Range))))
		} else {
			t[i] = int8(max(0, min(15, math.Round(float64(q[i])*8/q4Range)+8)))
		}
	}
	v, _ := tables.LoadOrStore(k, &t)
	return v.(*[1 << 16]int8)
}

// spread returns the mean and standard deviation of t's values.
func (t Tensor) spread() (mean, std float32) {
	switch t.Kind {
	case KindNormWeight:
		return normWeightMean, normWeightStd
	case KindBias:
		return 0, biasStd
	case KindTokenEmbedding:
		return 0, tokenEmbedStd
	case KindPositionEmbedding:
		return 0, positionEmbedStd
	}
	return 0, float32(1 / math.Sqrt(float64(t.FanIn)))
}

// chunkBytes is how much of a tensor is made at once before it is
// written; a multiple of every block size (4, 2, 34 and 18 bytes).
const chunkBytes = 34 * 18 * 4 << 10

// writeData writes t's values in storage type st to w, chunk by chunk.
func (t Tensor) writeData(w io.Writer, st string, seed uint64, buf []byte) error {
	r := tensorRNG(seed, t.Name)
	total := storageBytes(st, t.NumElements())
	mean, std := t.spread()
	for total > 0 {
		n := min(total, int64(len(buf)))
		b := buf[:n]
		switch st {
		case StorageF16:
			fillF16(b, r, f16Table(std))
		case StorageF32:
			fillF32(b, r, mean, std)
		case StorageQ8_0:
			fillQ8(b, r, f32ToF16(std*q8Range/127), codeTable(StorageQ8_0))
		case StorageQ4_0:
			fillQ4(b, r, f32ToF16(std*q4Range/8), codeTable(StorageQ4_0))
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		total -= n
	}
	return nil
}

// storageBytes returns the bytes n elements take in storage type st.
func storageBytes(st string, n int64) int64 {
	switch st {
	case StorageF32:
		return 4 * n
	case StorageQ8_0:
		return n / 32 * 34
	case StorageQ4_0:
		return n / 32 * 18
	}
	return 2 * n
}

func fillF16(b []byte, r *rng, t *[1 << 16]uint16) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.next()
		binary.LittleEndian.PutUint16(b[i:], t[uint16(v)])
		binary.LittleEndian.PutUint16(b[i+2:], t[uint16(v>>16)])
		binary.LittleEndian.PutUint16(b[i+4:], t[uint16(v>>32)])
		binary.LittleEndian.PutUint16(b[i+6:], t[uint16(v>>48)])
	}
	if rest := len(b) % 8; rest != 0 {
		v := r.next()
		for i := len(b) - rest; i < len(b); i += 2 {
			binary.LittleEndian.PutUint16(b[i:], t[uint16(v)])
			v >>= 16
		}
	}
}

func fillF32(b []byte, r *rng, mean, std float32) {
	q := quantiles()
	var v uint64
	for i := 0; i < len(b); i += 4 {
		if i%16 == 0 {
			v = r.next()
		}
		binary.LittleEndian.PutUint32(b[i:], math.Float32bits(mean+float32(std*q[uint16(v)])))
		v >>= 16
	}
}

// fillQ8 fills q8_0 blocks: an f16 scale d, then 32 signed codes; a
// value is d × code.
func fillQ8(b []byte, r *rng, d uint16, t *[1 << 16]int8) {
	for blk := 0; blk+34 <= len(b); blk += 34 {
		binary.LittleEndian.PutUint16(b[blk:], d)
		for i := blk + 2; i < blk+34; i += 4 {
			v := r.next()
			b[i] = byte(t[uint16(v)])
			b[i+1] = byte(t[uint16(v>>16)])
			b[i+2] = byte(t[uint16(v>>32)])
			b[i+3] = byte(t[uint16(v>>48)])
		}
	}
}

// fillQ4 fills q4_0 blocks: an f16 scale d, then 16 bytes holding 32
// codes, element j in the low nibble of byte j and element j+16 in its
// high nibble; a value is d × (code-8).
func fillQ4(b []byte, r *rng, d uint16, t *[1 << 16]int8) {
	for blk := 0; blk+18 <= len(b); blk += 18 {
		binary.LittleEndian.PutUint16(b[blk:], d)
		for i := blk + 2; i < blk+18; i += 2 {
			v := r.next()
			b[i] = byte(t[uint16(v)]) | byte(t[uint16(v>>16)])<<4
			b[i+1] = byte(t[uint16(v>>32)]) | byte(t[uint16(v>>48)])<<4
		}
	}
}

// f32ToF16 converts f to IEEE half precision, rounding to nearest even;
// values beyond the range become infinities, tiny ones subnormals or zero.
func f32ToF16(f float32) uint16 {
	x := math.Float32bits(f)
	sign := uint16(x>>16) & 0x8000
	exp := int32(x>>23&0xff) - 127 + 15
	mant := x & 0x7fffff
	switch {
	case x&0x7fffffff > 0x7f800000: // NaN
		return sign | 0x7e00
	case exp >= 31: // overflow or infinity
		return sign | 0x7c00
	case exp <= 0: // subnormal or zero
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - exp)
		h := mant >> shift
		rem := mant & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 != 0) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 != 0) {
		h++ // may carry into the exponent, which is right
	}
	return sign | uint16(h)
}
