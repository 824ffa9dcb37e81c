// Kernels of the cuda backend, compiled to PTX by gen.sh (clang, no CUDA
// SDK needed) and embedded in the Go binary; the driver JIT-compiles the
// PTX for the device it finds (sm_80 or newer).
//
// There is no CUDA header here: the few definitions the kernels need are
// spelled out with clang's attributes and NVVM builtins.

#define __global__ __attribute__((global))

typedef unsigned long long u64;

static __attribute__((device)) __attribute__((always_inline)) u64 global_thread_id(void) {
	return (u64)__nvvm_read_ptx_sreg_ctaid_x() * (u64)__nvvm_read_ptx_sreg_ntid_x() +
	       (u64)__nvvm_read_ptx_sreg_tid_x();
}

// Lane coefficients of one step, passed by value (64 bytes).
struct coefs {
	double c[8];
};

// refgen_chunk_sums computes, for every sweep chunk of chunk_params
// weights and every lane j in 0..7, the sum of w[i]·c[j] over the chunk's
// weights i with i mod 8 = j, in index order, starting from 0: exactly
// the per-chunk sums of refgen's CPU sweep (sweepChunk). Thread t handles
// chunk t/8, lane t%8, and writes partial[t]. The product of two float32
// values is exact in float64, so the fused multiply-add rounds exactly as
// the CPU's separate multiply and add, and the sums are bit-identical.
//
// Adjacent threads read adjacent weights, so a warp's loads touch four
// fully used 32-byte sectors.
extern "C" __global__ void refgen_chunk_sums(const float *__restrict__ w, u64 n, u64 chunk_params,
                                             struct coefs k, double *__restrict__ partial, u64 threads) {
	u64 t = global_thread_id();
	if (t >= threads) {
		return;
	}
	u64 lane = t & 7;
	u64 lo = (t >> 3) * chunk_params;
	u64 hi = lo + chunk_params;
	if (hi > n) {
		hi = n;
	}
	double c = k.c[lane];
	double acc = 0.0;
	u64 i = lo + lane;
	// Four loads in flight per iteration; the adds stay in index order.
	for (; i + 24 < hi; i += 32) {
		float a = w[i], b = w[i + 8], d = w[i + 16], e = w[i + 24];
		acc = __builtin_fma((double)a, c, acc);
		acc = __builtin_fma((double)b, c, acc);
		acc = __builtin_fma((double)d, c, acc);
		acc = __builtin_fma((double)e, c, acc);
	}
	for (; i < hi; i += 8) {
		acc = __builtin_fma((double)w[i], c, acc);
	}
	partial[t] = acc;
}
