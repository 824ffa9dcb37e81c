#!/usr/bin/env bash
# sdcpp-help.sh SD_CLI SD_SERVER [COMMIT] — refresh what genfleet knows of a
# stable-diffusion.cpp build from the build itself:
#
#   backends/sdcpp/testdata/sd-cli-help.txt     sd-cli --help
#   backends/sdcpp/testdata/sd-server-help.txt  sd-server --help
#   backends/sdcpp/testdata/refusals.txt        what each program prints, and
#                                               its exit status, when it refuses
#                                               a model (a file of no known
#                                               format, tensors of no known
#                                               model, an SD 1.x checkpoint
#                                               missing its components) or
#                                               cannot find the file
#
# then regenerates backends/sdcpp/spec/tables_gen.go (flags, sampling
# methods, schedulers) with go generate. Each file starts with a
# "# commit: …" line: COMMIT, else the commit the programs' --version
# prints, else `git rev-parse --short HEAD` in the source tree two levels
# above SD_CLI (build/bin/sd-cli). Run from anywhere; review the diff, run
# `go test ./backends/sdcpp/...` and commit.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
	echo "usage: $0 SD_CLI SD_SERVER [COMMIT]" >&2
	exit 2
fi
cli=$(realpath "$1")
server=$(realpath "$2")
commit=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
td=$root/backends/sdcpp/testdata

if [ -z "$commit" ]; then
	commit=$("$cli" --version 2>/dev/null | sed -n 's/.*commit \([0-9a-f]\{7,\}\).*/\1/p' | head -1)
fi
if [ -z "$commit" ]; then
	commit=$(git -C "$(dirname "$cli")/../.." rev-parse --short HEAD 2>/dev/null || true)
fi
if [ -z "$commit" ]; then
	echo "$0: cannot tell the engine's commit (--version says none, no git tree above $cli); pass it as COMMIT" >&2
	exit 2
fi

# help PROG NAME: the program's --help under a header, with the program's
# path in the usage line cut to its name and the version line dropped (the
# header names the commit).
help() {
	{
		echo "# stable-diffusion.cpp $2 --help, captured by scripts/sdcpp-help.sh; do not edit."
		echo "# commit: $commit"
		"$1" --help 2>&1 |
			sed -e '/^stable-diffusion\.cpp version/d' -e "s|^Usage: .*$2 |Usage: $2 |"
	} >"$td/$2-help.txt"
}
help "$cli" sd-cli
help "$server" sd-server

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# safetensors FILE JSON BYTES: a safetensors file with header JSON and
# BYTES zero bytes of tensor data.
safetensors() {
	local json=$2 n
	while [ $((${#json} % 8)) -ne 0 ]; do json="$json "; done
	n=${#json}
	printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((n & 255)) $((n >> 8 & 255)) $((n >> 16 & 255)) $((n >> 24 & 255)))\\000\\000\\000\\000" >"$1"
	printf '%s' "$json" >>"$1"
	head -c "$3" /dev/zero >>"$1"
}
head -c 65536 /dev/urandom >"$work/garbage"
safetensors "$work/no-version" '{"foo.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}' 16
safetensors "$work/missing-component" '{"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":{"dtype":"F32","shape":[10,768],"data_offsets":[0,30720]},"model.diffusion_model.input_blocks.0.0.weight":{"dtype":"F32","shape":[320,4,3,3],"data_offsets":[30720,76800]},"model.diffusion_model.middle_block.1.norm.weight":{"dtype":"F32","shape":[640],"data_offsets":[76800,79360]}}' 79360

# refusal NAME PROG ARGS…: run PROG on the model file $work/NAME and write
# a case: its exit status and its output without DEBUG lines, the path
# written as {path}, each run of per-tensor metadata errors cut to its first
# and last line.
refusal() {
	local name=$1 prog=$2 rc=0
	shift 2
	timeout 120 "$prog" "$@" >"$work/out" 2>&1 </dev/null || rc=$?
	echo "== $name $(basename "$prog") exit $rc"
	grep -v '^\[DEBUG' "$work/out" | sed "s|$work/$name|{path}|g" | awk '
		/in model metadata/ { if (!n) print; n++; last = $0; next }
		{ if (n > 1) print last; n = 0; print }
		END { if (n > 1) print last }'
}
port=$(( (RANDOM % 20000) + 30000 ))
{
	echo "# What stable-diffusion.cpp prints, and its exit status, when it refuses a"
	echo "# model or cannot find its file; captured by scripts/sdcpp-help.sh; do not edit."
	echo "# commit: $commit"
	echo "# A \"== CASE PROGRAM exit STATUS\" line starts a case. DEBUG lines are left"
	echo "# out, the model's path is written {path}, and a run of per-tensor metadata"
	echo "# errors is cut to its first and last line."
	for name in garbage no-version missing-component not-found; do
		refusal "$name" "$cli" --model "$work/$name" --prompt x --width 64 --height 64 --steps 1 --mmap --output "$work/out.png"
		refusal "$name" "$server" --model "$work/$name" --listen-ip 127.0.0.1 --listen-port "$port" --mmap
	done
} >"$td/refusals.txt"

(cd "$root/backends/sdcpp/spec" && go generate .)
echo "captured stable-diffusion.cpp commit $commit into $td and regenerated backends/sdcpp/spec/tables_gen.go"
