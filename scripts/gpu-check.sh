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
#   dev-cuda.log, dev-cpu.log, submit-*.log, fox-cuda.png, fox-cpu.png
#                        one job through `genfleet dev` with cuda workers
#                        and with cpu workers
#   summary.txt          exit codes and seconds per step
#
# Everything is bounded by timeouts that add up to under 10 minutes (it
# takes well under a minute on an H200). The exit status is 0 only when
# the tests passed with no GPU test skipped, the bench produced JSON, and
# the cuda and cpu fleets made the same PNG bytes.
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

# A job end to end: `genfleet dev` with cuda workers, then with cpu workers,
# the same request; the two PNGs must be the same bytes.
e2e() { # e2e BACKEND PORT: up to 60 s for dev to start, 90 s for the job
	"$BIN/genfleet" dev --backend "$1" --listen "127.0.0.1:$2" --demo-size 64MiB >"$OUT/dev-$1.log" 2>&1 &
	pid=$!
	ok=1
	for _ in $(seq 1 60); do
		grep -q 'genfleet dev is running' "$OUT/dev-$1.log" && break
		kill -0 "$pid" 2>/dev/null || break # dev exited: see its log
		sleep 1
	done
	if "$BIN/genfleet" submit --api "http://127.0.0.1:$2" --model demo --prompt "a red fox" --timeout 90s \
		--seed 7 --width 256 --height 256 --steps 4 -o "$OUT/fox-$1.png" >"$OUT/submit-$1.log" 2>&1; then
		ok=0
	fi
	kill -INT "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	return $ok
}
e2e cuda 18481
cuda_rc=$?
e2e cpu 18482
cpu_rc=$?
t3=$(now)
if [ "$cuda_rc" -eq 0 ] && [ "$cpu_rc" -eq 0 ] && cmp -s "$OUT/fox-cuda.png" "$OUT/fox-cpu.png"; then
	e2e_rc=0
else
	e2e_rc=1
fi

# On a GPU machine no GPU test may skip: a skip means the driver was not
# found, and the run proves nothing.
skips=$(grep -c -- '--- SKIP: TestGPU' "$OUT/cuda-test.log" || true)
{
	echo "cuda.test: exit $test_rc in $((t1 - t0)) s ($skips GPU tests skipped)"
	echo "bench upload: exit $bench_rc in $((t2 - t1)) s"
	echo "dev end to end: cuda $cuda_rc, cpu $cpu_rc, same PNG: $([ "$e2e_rc" -eq 0 ] && echo yes || echo no) in $((t3 - t2)) s"
	echo "total: $((t3 - start)) s"
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
grep -E -- '^(--- |ok|FAIL|PASS)|PSNR|GB/s|no usable GPU' "$OUT/cuda-test.log" | head -n 60
cat "$OUT/bench-upload.json"

[ "$test_rc" -eq 0 ] && [ "$skips" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ -s "$OUT/bench-upload.json" ] && [ "$e2e_rc" -eq 0 ]
