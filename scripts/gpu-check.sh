#!/bin/sh
# gpu-check.sh OUTDIR — the cuda backend's checks on a GPU machine that
# has no Go toolchain. Build the binaries first, on any machine, from the
# repository root:
#
#   CGO_ENABLED=0 go build -o bin/genfleet ./cmd/genfleet
#   CGO_ENABLED=0 go test -c -o bin/cuda.test ./backends/cuda
#
# then run this script from the repository root (or with bin/ next to the
# script, or GENFLEET_BIN pointing at the folder). It runs the cuda
# package's tests (GPU tests included: upload strategies, residency,
# CPU/GPU image parity) and `genfleet bench upload --size 4GiB --json`
# with a sweep of staging worker counts, and writes into OUTDIR:
#
#   env.txt              date, kernel, binaries used
#   nvidia-smi.txt       nvidia-smi and nvidia-smi -q output, if present
#   cuda-test.log        bin/cuda.test -test.v
#   bench-upload.log     the bench's stdout and stderr
#   bench-upload.json    the bench's result (its last stdout line)
#   summary.txt          exit codes and seconds per step
#
# Everything is bounded by timeouts that add up to under 5 minutes. The
# exit status is 0 only when the tests passed with no GPU test skipped
# and the bench produced JSON.
set -u

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
OUT=$1
mkdir -p "$OUT" || exit 2

here=$(cd "$(dirname "$0")" && pwd)
BIN=${GENFLEET_BIN:-}
if [ -z "$BIN" ]; then
	for d in "$here/bin" "$here/../bin" "./bin"; do
		if [ -x "$d/genfleet" ] && [ -x "$d/cuda.test" ]; then
			BIN=$d
			break
		fi
	done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN/genfleet" ] || [ ! -x "$BIN/cuda.test" ]; then
	echo "gpu-check: bin/genfleet and bin/cuda.test not found; build them first (see the top of $0)" >&2
	exit 2
fi

now() { date +%s; }
start=$(now)
{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "kernel: $(uname -srm)"
	echo "cpus: $(nproc 2>/dev/null || echo '?')"
	echo "bin: $BIN"
	ls -l "$BIN/genfleet" "$BIN/cuda.test"
} >"$OUT/env.txt" 2>&1

if command -v nvidia-smi >/dev/null 2>&1; then
	{
		timeout 30 nvidia-smi
		echo
		timeout 30 nvidia-smi -q
	} >"$OUT/nvidia-smi.txt" 2>&1
else
	echo "nvidia-smi not found" >"$OUT/nvidia-smi.txt"
fi

t0=$(now)
timeout 170 "$BIN/cuda.test" -test.v -test.timeout 160s >"$OUT/cuda-test.log" 2>&1
test_rc=$?
t1=$(now)

timeout 120 "$BIN/genfleet" bench upload --size 4GiB --sweep-threads 1,2,4,8,12,16 --json >"$OUT/bench-upload.log" 2>&1
bench_rc=$?
t2=$(now)
# The JSON object is the last line the bench printed on stdout.
grep '^{' "$OUT/bench-upload.log" | tail -n 1 >"$OUT/bench-upload.json"

# On a GPU machine no GPU test may skip: a skip means the driver was not
# found, and the run proves nothing.
skips=$(grep -c -- '--- SKIP: TestGPU' "$OUT/cuda-test.log" || true)
{
	echo "cuda.test: exit $test_rc in $((t1 - t0)) s ($skips GPU tests skipped)"
	echo "bench upload: exit $bench_rc in $((t2 - t1)) s"
	echo "total: $((t2 - start)) s"
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
grep -E -- '^(--- |ok|FAIL|PASS)|PSNR|GB/s|no usable GPU' "$OUT/cuda-test.log" | head -n 60
cat "$OUT/bench-upload.json"

[ "$test_rc" -eq 0 ] && [ "$skips" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ -s "$OUT/bench-upload.json" ]
