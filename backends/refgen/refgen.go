// Package refgen is genfleet's built-in reference model family,
// "genfleet-refgen-v1": a safetensors file of pseudo-random F32 weights and
// a deterministic image generator that reads every weight at every step.
// It lets the fleet be run, tested and benchmarked end to end with no
// third-party weights, with the same memory traffic as a real diffusion
// model of the same size.
//
// # File layout
//
// Make writes a safetensors file (see package modelformat) whose metadata
// holds genfleet.family = Family, the weight seed, the parameter count and
// the block size, and whose tensors are, in file order and back to back:
//
//	blocks.000.weight  F32 [n]  n = BlockParams except in the last block
//	blocks.001.weight  ...
//	tail               U8 [r]   only when r = (data bytes mod 4) is not 0
//
// Weight i (counting across blocks) is the float32 bits of
// (int32(h) >> 8) * 2^-23, a value in [-1, 1), where h is the low 32 bits
// of splitmix64(seed, i/2) for even i and the high 32 bits for odd i; see
// weightPair. The header's metadata includes a padding string so that the
// file is exactly the size asked for.
//
// # Generation
//
// A Generation is a pure function of the model bytes, the model digest
// and the request. With W the weights, L = 8 lanes and a 16×16×3 latent:
//
//  1. Conditioning: cond = sha256 of the request (see conditionHash); a
//     splitmix64 stream seeded from cond gives the initial latent (values
//     in [-1, 1)) and the per-lane and per-channel constants. A second hash
//     of the prompt and negative prompt alone gives the colour palette, so
//     one prompt keeps its colours across seeds.
//  2. Each step s = 1..steps: derive 8 float32 coefficients c_j from s and
//     the current latent; sweep every weight once, S_j = Σ_{i mod 8 = j}
//     w_i·c_j; squash u_j = tanh(S_j / sqrt(n_j/3)); move the latent a
//     fixed fraction toward a smooth wave pattern shaped by u.
//  3. Render: upsample the latent to width×height with Catmull-Rom
//     interpolation and map it through the prompt's cosine palette.
//
// The sweep is split into chunks of ChunkParams weights. Each chunk sums
// its weights in index order into 8 float64 lanes starting from 0, and the
// chunk sums are added in chunk order, so the result does not depend on
// GOMAXPROCS or scheduling. Products float64(w)·float64(c) of two float32
// values are exact, so fused multiply-adds do not change the sums either.
// A generation may apply LoRAs (lora.go: low-rank deltas whose part of
// each sweep is computed from their factors, the mapped weights untouched)
// and blend its picture over an init image, optionally through a mask
// (blend.go).
//
// Results are bit-identical for a given binary; another architecture or a
// port (such as a CUDA backend) may differ in the last bits of the
// transcendental functions and should compare images with a tolerance.
package refgen

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/genfleet/genfleet/backends"
	"github.com/genfleet/genfleet/modelformat"
)

// Family is the value of the genfleet.family metadata key of a reference
// model.
const Family = "genfleet-refgen-v1"

// Engine is the engine name manifests of refgen models carry (the
// built-in engine; a manifest that names no engine means this one).
const Engine = "refgen"

// Features are what the built-in engine does beyond one text-to-image
// picture: image to image (blend.go), inpainting and LoRAs (lora.go).
var Features = []string{backends.FeatureInitImage, backends.FeatureMask, backends.FeatureLoRAs}

// Metadata keys of a reference model.
const (
	MetaFamily      = "genfleet.family"
	MetaSeed        = "genfleet.refgen.seed"
	MetaParams      = "genfleet.refgen.params"
	MetaBlockParams = "genfleet.refgen.block_params"
	// MetaPad holds spaces that make the file exactly the size asked for.
	MetaPad = "genfleet.refgen.pad"
)

const (
	// MinSize is the smallest model Make writes, 64 KiB.
	MinSize = 64 << 10
	// BlockParams is the number of weights per blocks.NNN.weight tensor
	// (64 MiB of F32) except in the last one.
	BlockParams = 16 << 20
	// tailName is the U8 tensor that pads the data to the exact size.
	tailName = "tail"
)

// blockName returns the name of weight block i.
func blockName(i int) string { return fmt.Sprintf("blocks.%03d.weight", i) }

// splitmix64 returns the p-th output of the splitmix64 generator seeded
// with seed.
func splitmix64(seed, p uint64) uint64 {
	z := seed + (p+1)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// weightBits returns the float32 bits of a weight drawn from 32 random
// bits: (int32(r) >> 8) * 2^-23, in [-1, 1).
func weightBits(r uint32) uint32 {
	return math.Float32bits(float32(int32(r)>>8) * (1.0 / (1 << 23)))
}

// weightPair returns the float32 bits of weights 2p and 2p+1 of a model
// with the given seed.
func weightPair(seed, p uint64) (uint32, uint32) {
	r := splitmix64(seed, p)
	return weightBits(uint32(r)), weightBits(uint32(r >> 32))
}

// fillWeights writes the little-endian bytes of weights first,
// first+1, ... into buf, whose length must be a multiple of 4.
func fillWeights(buf []byte, seed, first uint64) {
	i := first
	if i%2 == 1 && len(buf) >= 4 {
		_, hi := weightPair(seed, i/2)
		binary.LittleEndian.PutUint32(buf, hi)
		buf, i = buf[4:], i+1
	}
	for p := i / 2; len(buf) >= 8; p++ {
		r := splitmix64(seed, p)
		binary.LittleEndian.PutUint32(buf[0:4], weightBits(uint32(r)))
		binary.LittleEndian.PutUint32(buf[4:8], weightBits(uint32(r>>32)))
		buf = buf[8:]
		i += 2
	}
	if len(buf) >= 4 {
		lo, _ := weightPair(seed, i/2)
		binary.LittleEndian.PutUint32(buf, lo)
	}
}

// layout returns the metadata and tensors of a model with the given seed
// whose data section is dataBytes long, with pad spaces of padding.
func layout(seed uint64, dataBytes int64, pad int, scratch []byte) (map[string]string, []modelformat.TensorSpec) {
	params := dataBytes / 4
	meta := map[string]string{
		MetaFamily:      Family,
		MetaSeed:        strconv.FormatUint(seed, 10),
		MetaParams:      strconv.FormatInt(params, 10),
		MetaBlockParams: strconv.Itoa(BlockParams),
		MetaPad:         strings.Repeat(" ", pad),
	}
	var specs []modelformat.TensorSpec
	for first, i := int64(0), 0; first < params; first, i = first+BlockParams, i+1 {
		n := min(BlockParams, params-first)
		specs = append(specs, modelformat.TensorSpec{
			Name: blockName(i), DType: "F32", Shape: []int64{n},
			Write: func(w io.Writer) error {
				for done := int64(0); done < n; {
					k := min(int64(len(scratch)/4), n-done)
					buf := scratch[:4*k]
					fillWeights(buf, seed, uint64(first+done))
					if _, err := w.Write(buf); err != nil {
						return err
					}
					done += k
				}
				return nil
			},
		})
	}
	if r := dataBytes % 4; r != 0 {
		specs = append(specs, modelformat.TensorSpec{
			Name: tailName, DType: "U8", Shape: []int64{r},
			Write: func(w io.Writer) error {
				_, err := w.Write(make([]byte, r))
				return err
			},
		})
	}
	return meta, specs
}

// Make writes a reference model of exactly size bytes with weights drawn
// from seed to w. The output is a deterministic function of (size, seed).
// It streams: memory use is a few MiB whatever the size. It returns an
// error for a size below MinSize, or w's error wrapped (w then holds a
// partial file).
func Make(w io.Writer, size int64, seed uint64) error {
	if size < MinSize {
		return fmt.Errorf("refgen: model size %d bytes is below the minimum of %d (64 KiB)", size, MinSize)
	}
	const scratchSize = 1 << 20
	scratch := make([]byte, scratchSize)
	// Find a header length n (a multiple of 8) such that the header for
	// the data section that n leaves, padded by MetaPad, is exactly n long.
	// The unpadded header shrinks or stays put as n grows, so this
	// converges in a step or two.
	n := int64(0)
	for range 16 {
		meta, specs := layout(seed, size-8-n, 0, scratch)
		h, err := modelformat.SafetensorsHeader(meta, specs)
		if err != nil {
			return fmt.Errorf("refgen: %w", err)
		}
		need := int64(len(h)) - 8
		if need > n {
			n = need
			continue
		}
		meta, specs = layout(seed, size-8-n, int(n-need), scratch)
		bw := bufio.NewWriterSize(w, scratchSize)
		if err := modelformat.WriteSafetensors(bw, meta, specs); err != nil {
			return fmt.Errorf("refgen: writing model: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("refgen: writing model: %w", err)
		}
		return nil
	}
	return fmt.Errorf("refgen: no header length fits a %d-byte model", size)
}

// Model is an opened reference model: a view of the caller's bytes.
type Model struct {
	// Seed is the seed the weights were drawn from.
	Seed uint64
	// Params is the number of F32 weights.
	Params int64
	// Header is the parsed safetensors header.
	Header *modelformat.Safetensors
	// weights are the F32 weights, little-endian, back to back: a slice
	// of the data passed to Open, never copied or written.
	weights []byte
}

// Weights returns the model's F32 weights as little-endian bytes. The
// slice aliases the data given to Open; callers must not write it.
func (m *Model) Weights() []byte { return m.weights }

func badModel(format string, args ...any) error {
	return fmt.Errorf("refgen: "+format+": %w", append(args, backends.ErrBadModel)...)
}

// Open checks that data is a reference model and returns a view of it.
// It parses only the header and keeps slices of data without copying the
// weights, so data must stay mapped while the Model is used. Anything
// else yields an error wrapping backends.ErrBadModel that says why.
func Open(data []byte) (*Model, error) {
	st, err := modelformat.ParseSafetensors(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("refgen: model is not a valid safetensors file: %w: %w", err, backends.ErrBadModel)
	}
	if fam := st.Metadata[MetaFamily]; fam != Family {
		return nil, badModel("model is not a genfleet reference model (metadata %s = %q, want %q)", MetaFamily, fam, Family)
	}
	m := &Model{Header: st}
	if m.Seed, err = strconv.ParseUint(st.Metadata[MetaSeed], 10, 64); err != nil {
		return nil, badModel("metadata %s = %q is not a uint64", MetaSeed, st.Metadata[MetaSeed])
	}
	if m.Params, err = strconv.ParseInt(st.Metadata[MetaParams], 10, 64); err != nil || m.Params <= 0 {
		return nil, badModel("metadata %s = %q is not a positive count", MetaParams, st.Metadata[MetaParams])
	}
	if bp := st.Metadata[MetaBlockParams]; bp != strconv.Itoa(BlockParams) {
		return nil, badModel("metadata %s = %q, this version reads only %d", MetaBlockParams, bp, BlockParams)
	}
	ts := st.Tensors
	if len(ts) > 0 && ts[len(ts)-1].Name == tailName {
		if t := ts[len(ts)-1]; t.DType != "U8" || t.Size() > 3 {
			return nil, badModel("tensor %q is %s%v, want U8 of at most 3 bytes", t.Name, t.DType, t.Shape)
		}
		ts = ts[:len(ts)-1]
	}
	if len(ts) == 0 {
		return nil, badModel("model has no weight blocks")
	}
	for i, t := range ts {
		if want := blockName(i); t.Name != want {
			return nil, badModel("tensor %d (by offset) is %q, want %q", i, t.Name, want)
		}
	}
	var total int64
	for i, t := range ts {
		switch {
		case t.DType != "F32" || len(t.Shape) != 1:
			return nil, badModel("tensor %q is %s%v, want F32 [n]", t.Name, t.DType, t.Shape)
		case t.Shape[0] == 0 || t.Shape[0] > BlockParams || (i < len(ts)-1 && t.Shape[0] != BlockParams):
			return nil, badModel("tensor %q has %d weights, want %d (or 1 to %[3]d in the last block)", t.Name, t.Shape[0], BlockParams)
		case i > 0 && t.Begin != ts[i-1].End:
			return nil, badModel("tensor %q does not follow %q directly", t.Name, ts[i-1].Name)
		}
		total += t.Shape[0]
	}
	if total != m.Params {
		return nil, badModel("blocks hold %d weights, metadata %s says %d", total, MetaParams, m.Params)
	}
	begin, end := ts[0].Begin, ts[len(ts)-1].End
	m.weights = data[begin:end:end]
	return m, nil
}
