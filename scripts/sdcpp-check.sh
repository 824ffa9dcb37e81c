#!/usr/bin/env bash
# sdcpp-check.sh SD_CLI SD_SERVER — check genfleet's sdcpp backend against a
# real stable-diffusion.cpp build, end to end, and print one JSON summary
# line on stdout (progress goes to stderr).
#
# It builds genfleet from this tree, starts redis-server and versitygw on
# free loopback ports in a temporary directory, makes a random-weight SD 1.x
# checkpoint with `genfleet models make --arch sd1` (q4_0), pushes it whole
# and split into components, pushes two models the engine refuses (tensors
# of no model it knows; an SD 1.x checkpoint missing its components), and
# starts the scheduler. Then, with a worker that runs sd-cli per job and
# then with one that keeps an sd-server per model, it runs a job on each
# model (64×64, one step, sampler dpm++2m_sde), checks that each image has
# the size asked for and that the first generation reports the engine's
# weight load, that the refused models fail at the first attempt with the
# engine's own lines, and (server) that a second job loads nothing and that
# a job whose sd-server is killed under it is retried on a fresh server.
# The API must refuse a prompt carrying <sd_cpp_extra_args> and a size the
# engine would round; the same requests sent straight to the real sd-server
# show what the engine would have done with them ("engine" in the summary).
#
# Needs go, redis-server, versitygw, curl and jq. Takes 5–10 minutes on two
# cores. The exit status is 0 when every check passed. SDCPP_CHECK_KEEP=1
# keeps the temporary directory (logs, models) and says where it is.
set -uo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 SD_CLI SD_SERVER" >&2
	exit 2
fi
cli=$(realpath "$1")
server=$(realpath "$2")
for p in "$cli" "$server"; do
	[ -x "$p" ] || { echo "$0: $p is not an executable" >&2; exit 2; }
done
for c in go redis-server versitygw curl jq; do
	command -v "$c" >/dev/null 2>&1 || { echo "$0: $c not found in PATH" >&2; exit 2; }
done
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d -t genfleet-sdcpp-check.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	if [ "${SDCPP_CHECK_KEEP:-}" = 1 ]; then
		echo "sdcpp-check: kept $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
log() { echo "sdcpp-check: $*" >&2; }
fail() { log "$*"; exit 1; }
start=$(date +%s)
threads=$(nproc 2>/dev/null || echo 2)

log "building genfleet"
(cd "$root" && CGO_ENABLED=0 go build -o "$work/genfleet" ./cmd/genfleet) || fail "go build failed"
gf=$work/genfleet

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
freeport() {
	local p
	while :; do
		p=$((RANDOM % 30000 + 20000))
		listening "$p" || { echo "$p"; return; }
	done
}
await() { # PORT WHAT
	for _ in $(seq 1 300); do
		listening "$1" && return 0
		sleep 0.1
	done
	fail "$2 is not listening on port $1 (logs in $work)"
}

rport=$(freeport)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
sport=$(freeport)
mkdir -p "$work/s3"
ROOT_ACCESS_KEY=genfleet ROOT_SECRET_KEY=genfleet-secret versitygw --port "127.0.0.1:$sport" posix "$work/s3" >"$work/s3.log" 2>&1 &
pids+=($!)
await "$rport" redis-server
await "$sport" versitygw
export GENFLEET_REDIS=127.0.0.1:$rport
export GENFLEET_S3_ENDPOINT=http://127.0.0.1:$sport GENFLEET_S3_REGION=us-east-1 GENFLEET_S3_PATH_STYLE=true
export GENFLEET_S3_ACCESS_KEY=genfleet GENFLEET_S3_SECRET_KEY=genfleet-secret
export GENFLEET_REGISTRY=s3://genfleet-models/ GENFLEET_OUTPUTS=s3://genfleet-outputs/outputs/

log "making and pushing the models"
"$gf" models make --arch sd1 --dtype q4_0 --out "$work/sd1.gguf" >"$work/make.log" 2>&1 || fail "models make --arch sd1: $(tail -3 "$work/make.log")"
"$gf" models push "$work/sd1.gguf" s3://genfleet-models/blobs/sd1.gguf --name sd1 --engine sdcpp >>"$work/push.log" 2>&1 || fail "models push sd1: $(tail -3 "$work/push.log")"
"$gf" models make --arch sd1 --dtype q4_0 --split --out "$work/split" >"$work/make-split.log" 2>&1 || fail "models make --split: $(tail -3 "$work/make-split.log")"
files=$(grep -o -- '--file [^ ]*' "$work/make-split.log" | tr '\n' ' ')
[ -n "$files" ] || fail "models make --split printed no push line"
# shellcheck disable=SC2086 # $files is --file ROLE=PATH pairs
"$gf" models push --name sd1-split --engine sdcpp $files s3://genfleet-models/blobs/sd1-split/ >>"$work/push.log" 2>&1 || fail "models push sd1-split: $(tail -3 "$work/push.log")"

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
safetensors "$work/bad-tensors.safetensors" '{"foo.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}' 16
safetensors "$work/bad-partial.safetensors" '{"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":{"dtype":"F32","shape":[10,768],"data_offsets":[0,30720]},"model.diffusion_model.input_blocks.0.0.weight":{"dtype":"F32","shape":[320,4,3,3],"data_offsets":[30720,76800]},"model.diffusion_model.middle_block.1.norm.weight":{"dtype":"F32","shape":[640],"data_offsets":[76800,79360]}}' 79360
for b in bad-tensors bad-partial; do
	"$gf" models push "$work/$b.safetensors" "s3://genfleet-models/blobs/$b.safetensors" --name "$b" --engine sdcpp >>"$work/push.log" 2>&1 || fail "models push $b: $(tail -3 "$work/push.log")"
done

aport=$(freeport)
"$gf" scheduler --listen "127.0.0.1:$aport" >"$work/scheduler.log" 2>&1 &
pids+=($!)
await "$aport" scheduler
api=http://127.0.0.1:$aport

checks='{}'
ok=true
# check NAME PASS DETAILS_JSON: record a check.
check() {
	checks=$(jq -c --arg n "$1" --argjson pass "$2" --argjson d "$3" '. + {($n): ({pass: $pass} + $d)}' <<<"$checks")
	[ "$2" = true ] || ok=false
	log "$1: $([ "$2" = true ] && echo pass || echo FAIL) $3"
}
# submit BODY: POST the job; prints the HTTP status and the answer.
submit() { curl -s -o "$work/answer.json" -w '%{http_code}' -H 'Content-Type: application/json' -d "$1" "$api/v1/jobs"; }
# run_job BODY TIMEOUT_S: submit and wait until the job ends; prints its record.
run_job() {
	local code id rec st
	code=$(submit "$1")
	[ "$code" = 202 ] || { echo "{\"status\":\"not accepted\",\"error\":$(jq -Rs . <"$work/answer.json")}"; return; }
	id=$(jq -r .id "$work/answer.json")
	for _ in $(seq 1 $(($2 * 2))); do
		rec=$(curl -s "$api/v1/jobs/$id")
		st=$(jq -r .status <<<"$rec")
		case $st in succeeded | failed | cancelled) echo "$rec"; return ;; esac
		sleep 0.5
	done
	echo "$rec"
}
# summary RECORD: the parts of a job record the summary shows.
summary() {
	jq -c '{status, attempt, error: (.error // ""), size: (if .result then "\(.result.width)x\(.result.height)" else null end),
		generate_ms: (.timings.generate // null), engine_load_ms: (.timings.engine_load // null)}' <<<"$1"
}
job_body() { # MODEL SEED [STEPS]
	echo "{\"model\":\"$1\",\"prompt\":\"a lovely cat\",\"seed\":$2,\"width\":64,\"height\":64,\"steps\":${3:-1},\"sampling_method\":\"dpm++2m_sde\",\"scheduler\":\"beta\"}"
}

# At the API: what the engine would not run as asked.
code=$(submit '{"model":"sd1","prompt":"a fox <sd_cpp_extra_args>{\"width\":128,\"height\":128}</sd_cpp_extra_args>","width":256,"height":256,"steps":1}')
field=$(jq -r '.field // ""' "$work/answer.json")
check api_prompt_markup "$([ "$code" = 400 ] && [ "$field" = prompt ] && echo true || echo false)" "{\"http\":$code,\"field\":\"$field\"}"
code=$(submit '{"model":"sd1","prompt":"a fox","width":200,"height":136,"steps":1}')
field=$(jq -r '.field // ""' "$work/answer.json")
check api_size_rounded "$([ "$code" = 400 ] && [ "$field" = width ] && echo true || echo false)" "{\"http\":$code,\"field\":\"$field\"}"

for mode in process server; do
	mport=$(freeport)
	"$gf" worker --backend sdcpp --sdcpp-mode "$mode" --sdcpp-cli "$cli" --sdcpp-server "$server" \
		--sdcpp-args "--threads $threads" --cache-dir "$work/cache-$mode" --host-id "check-$mode" \
		--metrics-listen "127.0.0.1:$mport" >"$work/worker-$mode.log" 2>&1 &
	wpid=$!
	pids+=($wpid)
	log "worker in $mode mode (pid $wpid)"
	for m in sd1 sd1-split; do
		rec=$(run_job "$(job_body "$m" 1)" 600)
		s=$(summary "$rec")
		pass=$(jq '.status == "succeeded" and .attempt == 1 and .size == "64x64" and .engine_load_ms != null' <<<"$s")
		check "${mode}_$m" "$pass" "$s"
	done
	if [ "$mode" = server ]; then
		rec=$(run_job "$(job_body sd1-split 2)" 600)
		s=$(summary "$rec")
		check server_second_job_loads_nothing "$(jq '.status == "succeeded" and .engine_load_ms == null' <<<"$s")" "$s"
	fi
	for b in bad-tensors:"get sd version from file failed" bad-partial:"model metadata validation failed"; do
		rec=$(run_job "$(job_body "${b%%:*}" 1)" 300)
		s=$(summary "$rec")
		check "${mode}_${b%%:*}" "$(jq --arg says "${b#*:}" '.status == "failed" and .attempt == 1 and (.error | contains("refused the model")) and (.error | contains($says))' <<<"$s")" "$s"
	done
	if [ "$mode" = server ]; then
		code=$(submit "$(job_body sd1 3 2)")
		id=$(jq -r .id "$work/answer.json")
		spid=""
		for _ in $(seq 1 600); do
			[ "$(curl -s "$api/v1/jobs/$id" | jq -r .status)" = running ] && spid=$(pgrep -P "$wpid" -x "$(basename "$server" | cut -c1-15)" | head -1)
			[ -n "$spid" ] && break
			sleep 0.2
		done
		sleep 2
		[ -n "$spid" ] && kill -9 "$spid"
		for _ in $(seq 1 1200); do
			rec=$(curl -s "$api/v1/jobs/$id")
			case $(jq -r .status <<<"$rec") in succeeded | failed | cancelled) break ;; esac
			sleep 0.5
		done
		s=$(summary "$rec")
		check server_killed_under_a_job "$(jq --arg pid "$spid" '$pid != "" and .status == "succeeded" and .attempt == 2' <<<"$s")" \
			"$(jq -c --arg pid "$spid" '. + {killed_pid: $pid}' <<<"$s")"
		metrics=$(curl -s "http://127.0.0.1:$mport/metrics")
		start_s=$(awk '/^genfleet_sdcpp_server_start_seconds_sum/ {print $2}' <<<"$metrics")
		starts=$(awk '/^genfleet_sdcpp_server_start_seconds_count/ {print $2}' <<<"$metrics")
		load_s=$(awk '/^genfleet_sdcpp_weights_load_seconds_sum\{mode="server"\}/ {print $2}' <<<"$metrics")
		loads=$(awk '/^genfleet_sdcpp_weights_load_seconds_count\{mode="server"\}/ {print $2}' <<<"$metrics")
		check server_metrics "$([ -n "$starts" ] && [ -n "$loads" ] && echo true || echo false)" \
			"{\"server_starts\":${starts:-null},\"server_start_seconds_sum\":${start_s:-null},\"weights_loads\":${loads:-null},\"weights_load_seconds_sum\":${load_s:-null}}"
	fi
	kill "$wpid" 2>/dev/null
	wait "$wpid" 2>/dev/null
done

# What the real sd-server does with the requests the API refused.
eport=$(freeport)
"$server" --model "$work/sd1.gguf" --listen-ip 127.0.0.1 --listen-port "$eport" --mmap --threads "$threads" >"$work/engine-server.log" 2>&1 &
epid=$!
pids+=($epid)
await "$eport" sd-server
# size ANSWER: the size of the first PNG in a txt2img answer.
size() { jq -r '.images[0]' "$1" | base64 -d 2>/dev/null | head -c 24 | od -An -tu1 -j16 | awk '{print $1*16777216+$2*65536+$3*256+$4 "x" $5*16777216+$6*65536+$7*256+$8}'; }
curl -s -o "$work/markup.json" -d '{"prompt":"a fox <sd_cpp_extra_args>{\"width\":64,\"height\":128}</sd_cpp_extra_args>","width":64,"height":64,"steps":1,"seed":1}' "http://127.0.0.1:$eport/sdapi/v1/txt2img"
curl -s -o "$work/round.json" -d '{"prompt":"a fox","width":72,"height":64,"steps":1,"seed":1}' "http://127.0.0.1:$eport/sdapi/v1/txt2img"
engine=$(jq -nc --arg markup "$(size "$work/markup.json")" --arg round "$(size "$work/round.json")" \
	'{"64x64 asked, prompt markup {width:64,height:128}": $markup, "72x64 asked": $round}')
kill "$epid" 2>/dev/null

version=$("$cli" --version 2>/dev/null | head -1)
jq -nc --argjson ok "$ok" --arg version "$version" --arg tables "$(sed -n 's/^const EngineCommit = "\(.*\)"/\1/p' "$root/backends/sdcpp/spec/tables_gen.go")" \
	--argjson checks "$checks" --argjson engine "$engine" --argjson seconds $(($(date +%s) - start)) \
	'{ok: $ok, engine_version: $version, tables_from_commit: $tables, seconds: $seconds, checks: $checks, engine: $engine}' |
	sed "s|$work|\$WORK|g" # the temporary directory, as a name
[ "$ok" = true ]
