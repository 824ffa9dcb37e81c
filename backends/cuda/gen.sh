#!/bin/sh
# Regenerates kernels.ptx from kernels.cu. Needs only clang (Debian
# bookworm: apt-get install clang, version 14); no CUDA SDK, no nvcc.
# Run from anywhere: go generate ./backends/cuda
set -eu
cd "$(dirname "$0")"
clang -x cuda --cuda-device-only --cuda-gpu-arch=sm_80 -nocudainc -nocudalib \
	-O3 -ffp-contract=off -S -o kernels.ptx kernels.cu
