package cuda

import _ "embed"

//go:generate ./gen.sh

// kernelsPTX is kernels.cu compiled by gen.sh. The PTX is committed so
// that building genfleet needs no CUDA compiler.
//
//go:embed kernels.ptx
var kernelsPTX []byte

// Kernel names in kernels.ptx.
const kernelChunkSums = "refgen_chunk_sums"
