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

// LoRA files of the reference family ("genfleet-refgen-lora-v1").
//
// A LoRA is a safetensors file whose metadata holds genfleet.family =
// LoRAFamily and the rank, and which has, for each weight block T it
// adapts ("blocks.000.weight", …), two F32 tensors:
//
//	T.lora_down  F32 [rank, cols]   cols a multiple of Lanes
//	T.lora_up    F32 [rows, rank]
//
// Applied with weight α to a model, it changes the block's first rows·cols
// weights: w[row·cols + col] += α · Σ_k up[row, k] · down[k, col] (the
// block's other weights are unchanged; rows·cols must not exceed the
// block). The model's mapped weights are never copied or written: a step's
// sweep sums w_i·c_j per lane, and the delta's part of that sum is
// c_j · α · D_j with D_j = Σ_k (Σ_row up[row, k]) · (Σ_{col ≡ j mod Lanes}
// down[k, col]) (a block starts at a multiple of Lanes, so weight
// row·cols + col is in lane col mod Lanes). D is computed once per
// generation from the factors, in float64, in index order: rows, then k,
// then targets in file order, then LoRAs in the job's order. So the same
// job with and without a LoRA gives different images, each reproducible.
const (
	// LoRAFamily is the genfleet.family of a reference LoRA.
	LoRAFamily = "genfleet-refgen-lora-v1"
	// MetaLoRARank is the metadata key of the LoRA's rank.
	MetaLoRARank = "genfleet.refgen.lora.rank"
	// MetaLoRASeed records the seed MakeLoRA drew the factors from.
	MetaLoRASeed = "genfleet.refgen.lora.seed"
	// MaxLoRARank bounds a LoRA's rank.
	MaxLoRARank = 256

	loraDownSuffix = ".lora_down"
	loraUpSuffix   = ".lora_up"
)

// LoRAOptions say what MakeLoRA writes.
type LoRAOptions struct {
	// Seed draws the factors: the same options give the same bytes.
	Seed uint64
	// Rank is the inner dimension of the factors. Default 4.
	Rank int
	// Rows and Cols shape the delta of each target: it covers a block's
	// first Rows·Cols weights. Cols must be a multiple of Lanes. Defaults
	// 32 and 256 (8192 weights, which fit the smallest model Make writes).
	Rows, Cols int
	// Targets are the weight blocks adapted. Default blocks.000.weight.
	Targets []string
}

func (o *LoRAOptions) defaults() {
	if o.Rank == 0 {
		o.Rank = 4
	}
	if o.Rows == 0 {
		o.Rows = 32
	}
	if o.Cols == 0 {
		o.Cols = 256
	}
	if len(o.Targets) == 0 {
		o.Targets = []string{blockName(0)}
	}
}

// MakeLoRA writes a reference LoRA with factors drawn from o.Seed (values
// in [-1, 1), as the model's weights are) to w.
func MakeLoRA(w io.Writer, o LoRAOptions) error {
	o.defaults()
	switch {
	case o.Rank < 1 || o.Rank > MaxLoRARank:
		return fmt.Errorf("refgen: LoRA rank %d is outside 1..%d", o.Rank, MaxLoRARank)
	case o.Rows < 1 || o.Cols < Lanes || o.Cols%Lanes != 0:
		return fmt.Errorf("refgen: LoRA shape %dx%d: rows must be at least 1 and cols a positive multiple of %d", o.Rows, o.Cols, Lanes)
	case int64(o.Rows)*int64(o.Cols) > BlockParams:
		return fmt.Errorf("refgen: LoRA shape %dx%d covers more than a block's %d weights", o.Rows, o.Cols, BlockParams)
	}
	meta := map[string]string{
		MetaFamily:   LoRAFamily,
		MetaLoRARank: strconv.Itoa(o.Rank),
		MetaLoRASeed: strconv.FormatUint(o.Seed, 10),
	}
	var specs []modelformat.TensorSpec
	seen := map[string]bool{}
	for ti, target := range o.Targets {
		if _, ok := blockIndex(target); !ok || seen[target] {
			return fmt.Errorf("refgen: LoRA target %q: want distinct weight block names such as %s", target, blockName(0))
		}
		seen[target] = true
		// Each factor has its own stream: seed, target and factor.
		stream := func(f uint64) uint64 { return splitmix64(o.Seed, uint64(ti)*2+f) }
		for _, t := range []struct {
			suffix string
			shape  []int64
			seed   uint64
		}{
			{loraDownSuffix, []int64{int64(o.Rank), int64(o.Cols)}, stream(0)},
			{loraUpSuffix, []int64{int64(o.Rows), int64(o.Rank)}, stream(1)},
		} {
			n := t.shape[0] * t.shape[1]
			specs = append(specs, modelformat.TensorSpec{
				Name: target + t.suffix, DType: "F32", Shape: t.shape,
				Write: func(w io.Writer) error {
					buf := make([]byte, 4*n)
					fillWeights(buf, t.seed, 0)
					_, err := w.Write(buf)
					return err
				},
			})
		}
	}
	bw := bufio.NewWriter(w)
	if err := modelformat.WriteSafetensors(bw, meta, specs); err != nil {
		return fmt.Errorf("refgen: writing LoRA: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("refgen: writing LoRA: %w", err)
	}
	return nil
}

// blockIndex returns i for "blocks.<i, 3 or more digits>.weight".
func blockIndex(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "blocks.")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, ".weight")
	if !ok || len(s) < 3 {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || blockName(i) != name {
		return 0, false
	}
	return i, true
}

// LoRA is an opened reference LoRA: a view of the caller's bytes.
type LoRA struct {
	Rank    int
	Header  *modelformat.Safetensors
	targets []loraTarget
}

// loraTarget is one adapted block: its index and its factors' bytes.
type loraTarget struct {
	name       string
	block      int
	rows, cols int
	down, up   []byte // F32 little-endian, slices of the opened data
}

// OpenLoRA checks that data is a reference LoRA and returns a view of it
// (no copy: data must stay mapped while the LoRA is used). Anything else
// yields an error wrapping backends.ErrBadModel that says why.
func OpenLoRA(data []byte) (*LoRA, error) {
	st, err := modelformat.ParseSafetensors(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("refgen: LoRA is not a valid safetensors file: %w: %w", err, backends.ErrBadModel)
	}
	if fam := st.Metadata[MetaFamily]; fam != LoRAFamily {
		if fam == Family {
			return nil, badModel("the LoRA is a reference model, not a LoRA (metadata %s = %q)", MetaFamily, fam)
		}
		return nil, badModel("file is not a reference LoRA (metadata %s = %q, want %q)", MetaFamily, fam, LoRAFamily)
	}
	l := &LoRA{Header: st}
	if l.Rank, err = strconv.Atoi(st.Metadata[MetaLoRARank]); err != nil || l.Rank < 1 || l.Rank > MaxLoRARank {
		return nil, badModel("LoRA metadata %s = %q is not a rank in 1..%d", MetaLoRARank, st.Metadata[MetaLoRARank], MaxLoRARank)
	}
	byName := map[string]modelformat.Tensor{}
	for _, t := range st.Tensors {
		byName[t.Name] = t
	}
	for _, t := range st.Tensors {
		target, ok := strings.CutSuffix(t.Name, loraDownSuffix)
		if !ok {
			if _, up := strings.CutSuffix(t.Name, loraUpSuffix); up {
				continue // read with its down factor
			}
			return nil, badModel("LoRA tensor %q is neither a %s nor a %s factor", t.Name, loraDownSuffix, loraUpSuffix)
		}
		block, ok := blockIndex(target)
		if !ok {
			return nil, badModel("LoRA tensor %q adapts %q, which is not a weight block", t.Name, target)
		}
		up, ok := byName[target+loraUpSuffix]
		if !ok {
			return nil, badModel("LoRA tensor %q has no %s", t.Name, target+loraUpSuffix)
		}
		down := t
		switch {
		case down.DType != "F32" || len(down.Shape) != 2 || down.Shape[0] != int64(l.Rank):
			return nil, badModel("LoRA tensor %q is %s%v, want F32 [%d, cols]", down.Name, down.DType, down.Shape, l.Rank)
		case up.DType != "F32" || len(up.Shape) != 2 || up.Shape[1] != int64(l.Rank):
			return nil, badModel("LoRA tensor %q is %s%v, want F32 [rows, %d]", up.Name, up.DType, up.Shape, l.Rank)
		case down.Shape[1] < Lanes || down.Shape[1]%Lanes != 0:
			return nil, badModel("LoRA tensor %q has %d columns, want a positive multiple of %d", down.Name, down.Shape[1], Lanes)
		case up.Shape[0] < 1 || up.Shape[0]*down.Shape[1] > BlockParams:
			return nil, badModel("LoRA target %q is %dx%d, more than a block's %d weights", target, up.Shape[0], down.Shape[1], BlockParams)
		}
		l.targets = append(l.targets, loraTarget{
			name: target, block: block, rows: int(up.Shape[0]), cols: int(down.Shape[1]),
			down: data[down.Begin:down.End:down.End], up: data[up.Begin:up.End:up.End],
		})
	}
	// Every up factor was read with a down factor.
	for _, t := range st.Tensors {
		if target, ok := strings.CutSuffix(t.Name, loraUpSuffix); ok {
			if _, ok := byName[target+loraDownSuffix]; !ok {
				return nil, badModel("LoRA tensor %q has no %s", t.Name, target+loraDownSuffix)
			}
		}
	}
	if len(l.targets) == 0 {
		return nil, badModel("LoRA adapts no weight block")
	}
	return l, nil
}

// Targets names the weight blocks the LoRA adapts, in file order.
func (l *LoRA) Targets() []string {
	out := make([]string, len(l.targets))
	for i, t := range l.targets {
		out[i] = t.name
	}
	return out
}

// laneDelta returns D (see the file comment) of the LoRA on model m: per
// lane, the sum of the delta's weights in that lane at weight 1. It fails,
// wrapping backends.ErrBadModel, when a target is not a block of m or does
// not fit in it.
func (l *LoRA) laneDelta(m *Model) ([Lanes]float64, error) {
	var d [Lanes]float64
	for _, t := range l.targets {
		n, ok := m.blockLen(t.block)
		if !ok {
			return d, badModel("the LoRA adapts %s, which the model (%d weights) does not have", t.name, m.Params)
		}
		if int64(t.rows)*int64(t.cols) > n {
			return d, badModel("the LoRA's delta on %s is %dx%d = %d weights, the model's block has %d", t.name, t.rows, t.cols, t.rows*t.cols, n)
		}
		for k := range l.Rank {
			var u float64
			for row := range t.rows {
				u += float64(f32At(t.up, row*l.Rank+k))
			}
			var v [Lanes]float64
			for col := range t.cols {
				v[col%Lanes] += float64(f32At(t.down, k*t.cols+col))
			}
			for j := range Lanes {
				d[j] += u * v[j]
			}
		}
	}
	return d, nil
}

// f32At is float32 number i of little-endian F32 bytes b.
func f32At(b []byte, i int) float32 {
	return math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
}

// blockLen returns the number of weights in block i of m, and whether m
// has that block.
func (m *Model) blockLen(i int) (int64, bool) {
	first := int64(i) * BlockParams
	if i < 0 || first >= m.Params {
		return 0, false
	}
	return min(BlockParams, m.Params-first), true
}

// ApplyLoRAs opens each of a job's LoRAs (their mapped files, not copied)
// and applies it with its weight, before the first step. Errors name the
// LoRA.
func (g *Generation) ApplyLoRAs(ls []backends.LoRA) error {
	for _, bl := range ls {
		l, err := OpenLoRA(bl.File.Data)
		if err == nil {
			err = g.ApplyLoRA(l, bl.Weight)
		}
		if err != nil {
			return fmt.Errorf("LoRA %q: %w", bl.Name, err)
		}
	}
	return nil
}
