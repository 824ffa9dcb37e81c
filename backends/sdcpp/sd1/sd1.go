// Package sd1 writes random-weight SD 1.x checkpoints in the layout
// stable-diffusion.cpp loads, for tests and benchmarks: every tensor the
// engine expects, with the original checkpoint names
// (model.diffusion_model.*, first_stage_model.*,
// cond_stage_model.transformer.*), shapes and types, and weights drawn
// from a seeded generator, so that anyone can make a model the real engine
// accepts without downloading one. The images such a model makes are
// noise.
//
// The tensor list is built from the architecture (Tensors), the way the
// engine's own model definition builds it, and can be checked without
// writing any data. Write streams the data; the same seed, type and layout
// always give the same bytes.
package sd1

import (
	"fmt"
	"strconv"
)

// The SD 1.x architecture. These are the sizes of the released
// checkpoints (v1-4, v1-5); the engine knows them too and refuses a file
// whose tensors disagree.
const (
	// UNet.
	modelChannels = 320
	timeEmbedDim  = 4 * modelChannels
	latentChans   = 4
	resBlocks     = 2 // per level, on the way down; one more on the way up
	contextDim    = 768
	ffMult        = 4

	// Text encoder (CLIP ViT-L/14).
	textWidth     = 768
	textLayers    = 12
	textFF        = 3072
	vocabSize     = 49408
	textPositions = 77

	// VAE (KL-f8).
	vaeChannels  = 128
	vaeResBlocks = 2
	zChannels    = 4
	imageChans   = 3
)

// Per-level channel multipliers and where the UNet has attention.
var (
	unetMult = []int64{1, 2, 4, 4}
	unetAttn = []bool{true, true, true, false}
	vaeMult  = []int64{1, 2, 4, 4}
)

// Part names the component of the checkpoint a tensor belongs to.
type Part string

// The three components of an SD 1.x checkpoint.
const (
	PartUNet        Part = "unet"
	PartTextEncoder Part = "text_encoder"
	PartVAE         Part = "vae"
)

// Kind says what a tensor is to the engine, which decides the type it
// holds it in (and so the type the file gives it; see Tensor.DType).
type Kind int

const (
	// KindConv is a convolution kernel; the engine holds it in f16
	// whatever the file's type.
	KindConv Kind = iota
	// KindLinear is a linear layer's weight matrix; the engine holds it in
	// the file's type.
	KindLinear
	// KindTokenEmbedding is the text encoder's token table; the engine
	// holds it in the file's type when it can look rows up in that type.
	KindTokenEmbedding
	// KindPositionEmbedding is the text encoder's position table, always f32.
	KindPositionEmbedding
	// KindNormWeight is a GroupNorm or LayerNorm scale, always f32.
	KindNormWeight
	// KindBias is a bias (of a layer or a norm), always f32.
	KindBias
)

func (k Kind) String() string {
	switch k {
	case KindConv:
		return "conv"
	case KindLinear:
		return "linear"
	case KindTokenEmbedding:
		return "token_embedding"
	case KindPositionEmbedding:
		return "position_embedding"
	case KindNormWeight:
		return "norm_weight"
	case KindBias:
		return "bias"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Tensor is one tensor of the checkpoint.
type Tensor struct {
	// Name is the tensor's name in the single-file checkpoint.
	Name string
	// Shape is outermost first, as safetensors and PyTorch write it: a
	// linear weight is [out, in], a convolution [out, in, kh, kw]. GGUF
	// and the engine list the same dimensions innermost first.
	Shape []int64
	Kind  Kind
	Part  Part
	// FanIn is the number of inputs each output of a weight sums over;
	// it sets the spread of the random values (0 for norms and biases).
	FanIn int64
}

// NumElements returns the product of the tensor's dimensions.
func (t Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// arch collects the tensor list as the builders below walk the model.
type arch struct {
	part Part
	out  []Tensor
}

func (a *arch) add(name string, kind Kind, fanIn int64, shape ...int64) {
	a.out = append(a.out, Tensor{Name: name, Shape: shape, Kind: kind, Part: a.part, FanIn: fanIn})
}

func (a *arch) bias(p string, n int64) { a.add(p+".bias", KindBias, 0, n) }

// linear is a weight [out, in] and, with bias, its bias.
func (a *arch) linear(p string, in, out int64, bias bool) {
	a.add(p+".weight", KindLinear, in, out, in)
	if bias {
		a.bias(p, out)
	}
}

// conv is a k×k convolution with a bias.
func (a *arch) conv(p string, in, out, k int64) {
	a.add(p+".weight", KindConv, in*k*k, out, in, k, k)
	a.bias(p, out)
}

// norm is a GroupNorm or LayerNorm over n channels.
func (a *arch) norm(p string, n int64) {
	a.add(p+".weight", KindNormWeight, 0, n)
	a.bias(p, n)
}

// Tensors returns every tensor of an SD 1.x checkpoint in the order Write
// writes them: the UNet, the text encoder, the VAE.
func Tensors() []Tensor {
	var all []Tensor
	for _, build := range []func(*arch){unet, textEncoder, vae} {
		var a arch
		build(&a)
		all = append(all, a.out...)
	}
	return all
}

// unet adds the denoising UNet (model.diffusion_model.*).
func unet(a *arch) {
	a.part = PartUNet
	const p = "model.diffusion_model."
	a.linear(p+"time_embed.0", modelChannels, timeEmbedDim, true)
	a.linear(p+"time_embed.2", timeEmbedDim, timeEmbedDim, true)

	// The way down: input_blocks.0 is the stem; each level has resBlocks
	// residual blocks (with attention on attention levels) and, but for
	// the last level, a downsampling convolution. skips records each
	// block's output channels, which the way up concatenates back in.
	a.conv(p+"input_blocks.0.0", latentChans, modelChannels, 3)
	ch := int64(modelChannels)
	skips := []int64{ch}
	block := 1
	for level, mult := range unetMult {
		for range resBlocks {
			b := p + "input_blocks." + strconv.Itoa(block)
			out := mult * modelChannels
			resBlock(a, b+".0", ch, out)
			ch = out
			if unetAttn[level] {
				spatialTransformer(a, b+".1", ch)
			}
			skips = append(skips, ch)
			block++
		}
		if level != len(unetMult)-1 {
			a.conv(p+"input_blocks."+strconv.Itoa(block)+".0.op", ch, ch, 3)
			skips = append(skips, ch)
			block++
		}
	}

	resBlock(a, p+"middle_block.0", ch, ch)
	spatialTransformer(a, p+"middle_block.1", ch)
	resBlock(a, p+"middle_block.2", ch, ch)

	// The way up: each level has resBlocks+1 residual blocks, each taking
	// one skip, and, but for the first level, an upsampling convolution
	// after its last block.
	block = 0
	for level := len(unetMult) - 1; level >= 0; level-- {
		for i := range resBlocks + 1 {
			b := p + "output_blocks." + strconv.Itoa(block)
			skip := skips[len(skips)-1]
			skips = skips[:len(skips)-1]
			out := unetMult[level] * modelChannels
			resBlock(a, b+".0", ch+skip, out)
			ch = out
			sub := 1
			if unetAttn[level] {
				spatialTransformer(a, b+".1", ch)
				sub++
			}
			if level != 0 && i == resBlocks {
				a.conv(b+"."+strconv.Itoa(sub)+".conv", ch, ch, 3)
			}
			block++
		}
	}

	a.norm(p+"out.0", ch)
	a.conv(p+"out.2", ch, latentChans, 3)
}

// resBlock is the UNet's residual block with the timestep embedding.
func resBlock(a *arch, p string, in, out int64) {
	a.norm(p+".in_layers.0", in)
	a.conv(p+".in_layers.2", in, out, 3)
	a.linear(p+".emb_layers.1", timeEmbedDim, out, true)
	a.norm(p+".out_layers.0", out)
	a.conv(p+".out_layers.3", out, out, 3)
	if in != out {
		a.conv(p+".skip_connection", in, out, 1)
	}
}

// spatialTransformer is the UNet's attention block: self-attention,
// cross-attention to the text, and a GEGLU feed-forward, between 1×1
// convolutions (SD 1.x projects with convolutions, not linear layers).
func spatialTransformer(a *arch, p string, ch int64) {
	a.norm(p+".norm", ch)
	a.conv(p+".proj_in", ch, ch, 1)
	t := p + ".transformer_blocks.0"
	attention(a, t+".attn1", ch, ch)
	a.linear(t+".ff.net.0.proj", ch, 2*ffMult*ch, true)
	a.linear(t+".ff.net.2", ffMult*ch, ch, true)
	attention(a, t+".attn2", ch, contextDim)
	for _, n := range []string{".norm1", ".norm2", ".norm3"} {
		a.norm(t+n, ch)
	}
	a.conv(p+".proj_out", ch, ch, 1)
}

func attention(a *arch, p string, ch, context int64) {
	a.linear(p+".to_q", ch, ch, false)
	a.linear(p+".to_k", context, ch, false)
	a.linear(p+".to_v", context, ch, false)
	a.linear(p+".to_out.0", ch, ch, true)
}

// textEncoder adds the CLIP text model
// (cond_stage_model.transformer.text_model.*).
func textEncoder(a *arch) {
	a.part = PartTextEncoder
	const p = "cond_stage_model.transformer.text_model."
	a.add(p+"embeddings.token_embedding.weight", KindTokenEmbedding, 1, vocabSize, textWidth)
	a.add(p+"embeddings.position_embedding.weight", KindPositionEmbedding, 1, textPositions, textWidth)
	for i := range textLayers {
		l := p + "encoder.layers." + strconv.Itoa(i)
		a.norm(l+".layer_norm1", textWidth)
		for _, proj := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			a.linear(l+".self_attn."+proj, textWidth, textWidth, true)
		}
		a.norm(l+".layer_norm2", textWidth)
		a.linear(l+".mlp.fc1", textWidth, textFF, true)
		a.linear(l+".mlp.fc2", textFF, textWidth, true)
	}
	a.norm(p+"final_layer_norm", textWidth)
}

// vae adds the KL autoencoder (first_stage_model.*): the encoder, which
// txt2img does not run but the engine loads, and the decoder.
func vae(a *arch) {
	a.part = PartVAE
	const p = "first_stage_model."
	top := vaeMult[len(vaeMult)-1] * vaeChannels

	a.conv(p+"encoder.conv_in", imageChans, vaeChannels, 3)
	ch := int64(vaeChannels)
	for level, mult := range vaeMult {
		d := p + "encoder.down." + strconv.Itoa(level)
		for i := range vaeResBlocks {
			vaeResBlock(a, d+".block."+strconv.Itoa(i), ch, mult*vaeChannels)
			ch = mult * vaeChannels
		}
		if level != len(vaeMult)-1 {
			a.conv(d+".downsample.conv", ch, ch, 3)
		}
	}
	vaeMid(a, p+"encoder.mid", top)
	a.norm(p+"encoder.norm_out", top)
	a.conv(p+"encoder.conv_out", top, 2*zChannels, 3) // mean and log-variance

	a.conv(p+"decoder.conv_in", zChannels, top, 3)
	vaeMid(a, p+"decoder.mid", top)
	ch = top
	for level := len(vaeMult) - 1; level >= 0; level-- {
		u := p + "decoder.up." + strconv.Itoa(level)
		for i := range vaeResBlocks + 1 {
			vaeResBlock(a, u+".block."+strconv.Itoa(i), ch, vaeMult[level]*vaeChannels)
			ch = vaeMult[level] * vaeChannels
		}
		if level != 0 {
			a.conv(u+".upsample.conv", ch, ch, 3)
		}
	}
	a.norm(p+"decoder.norm_out", ch)
	a.conv(p+"decoder.conv_out", ch, imageChans, 3)

	a.conv(p+"quant_conv", 2*zChannels, 2*zChannels, 1)
	a.conv(p+"post_quant_conv", zChannels, zChannels, 1)
}

func vaeResBlock(a *arch, p string, in, out int64) {
	a.norm(p+".norm1", in)
	a.conv(p+".conv1", in, out, 3)
	a.norm(p+".norm2", out)
	a.conv(p+".conv2", out, out, 3)
	if in != out {
		a.conv(p+".nin_shortcut", in, out, 1)
	}
}

// vaeMid is the middle of the encoder or decoder: two residual blocks
// around a single-head attention block whose projections are 1×1
// convolutions.
func vaeMid(a *arch, p string, ch int64) {
	vaeResBlock(a, p+".block_1", ch, ch)
	a.norm(p+".attn_1.norm", ch)
	for _, proj := range []string{"q", "k", "v", "proj_out"} {
		a.conv(p+".attn_1."+proj, ch, ch, 1)
	}
	vaeResBlock(a, p+".block_2", ch, ch)
}

// DType is the type a checkpoint is written in: the type of its weight
// matrices.
type DType string

// The types Write offers. F16 is written as safetensors, like the
// released fp16 checkpoints; the quantized types as GGUF, the format the
// engine reads them from.
const (
	F16  DType = "f16"
	Q8_0 DType = "q8_0"
	Q4_0 DType = "q4_0"
)

// DTypes lists the types Write offers, default first.
func DTypes() []DType { return []DType{F16, Q8_0, Q4_0} }

// ParseDType returns the DType named s, or an error listing the choices.
func ParseDType(s string) (DType, error) {
	for _, d := range DTypes() {
		if string(d) == s {
			return d, nil
		}
	}
	return "", fmt.Errorf("sd1: unknown type %q (choices: f16, q8_0, q4_0)", s)
}

// Ext returns the file name extension of a checkpoint of type d.
func (d DType) Ext() string {
	if d == F16 {
		return ".safetensors"
	}
	return ".gguf"
}

// Storage types of a tensor in a file: the safetensors dtype names, and
// the GGML names of the quantized types.
const (
	StorageF16  = "F16"
	StorageF32  = "F32"
	StorageQ8_0 = "Q8_0"
	StorageQ4_0 = "Q4_0"
)

// DType returns the type t is stored in in a checkpoint of type d. Each
// tensor gets the type the engine holds it in, so that with --mmap the
// engine uses every tensor of the file in place instead of converting
// it: norms, biases and the position table in f32, convolutions in f16,
// and linear weights in d. The token table stays f16 in the quantized
// types, as the engine's own converter leaves it.
func (t Tensor) DType(d DType) string {
	switch t.Kind {
	case KindNormWeight, KindBias, KindPositionEmbedding:
		return StorageF32
	case KindLinear:
		switch d {
		case Q8_0:
			return StorageQ8_0
		case Q4_0:
			return StorageQ4_0
		}
	}
	return StorageF16
}
