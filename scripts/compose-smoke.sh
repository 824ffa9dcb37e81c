#!/usr/bin/env bash
# compose-smoke.sh: run the Docker Compose fleet end to end, once.
#
#   scripts/compose-smoke.sh
#
# Builds genfleet:dev from infra/docker/Dockerfile, starts the default services
# of docker-compose.yml, waits until init has registered the demo model and
# the scheduler and every worker are healthy, submits one job through the
# HTTP API, fetches its PNG, checks that every worker mounts the one model
# cache volume and sees the job's model in it, and tears everything down
# (containers and volumes). Exits non-zero, with the reason and the services'
# recent logs, on the first failure.
#
# It runs as its own Compose project (COMPOSE_PROJECT_NAME, default
# genfleet-smoke), so the final `down -v` never removes the volumes of the
# fleet you run day to day. It does use the same published ports: stop that
# fleet first, or set GENFLEET_API_PORT, GENFLEET_S3_PORT, ... (docs/deploy.md,
# "Compose variables").
#
# Environment: KEEP=1 leaves the fleet running; SMOKE_TIMEOUT (seconds,
# default 600) bounds each wait: for the services to be healthy once
# `docker compose up -d --build` has returned, and for the job's image;
# GENFLEET_API_TOKEN, when set, is sent as the bearer token.
set -euo pipefail

cd "$(dirname "$0")/.."

project=${COMPOSE_PROJECT_NAME:-genfleet-smoke}
timeout=${SMOKE_TIMEOUT:-600}
workers=${GENFLEET_CPU_WORKERS:-2}
bind=${GENFLEET_BIND:-127.0.0.1}
case $bind in 0.0.0.0 | "") bind=127.0.0.1 ;; esac
api=http://$bind:${GENFLEET_API_PORT:-8080}

dc() { docker compose -p "$project" "$@"; }
say() { echo "compose-smoke: $*" >&2; }
fail() {
	say "FAIL: $*"
	exit 1
}

for tool in docker curl; do
	command -v "$tool" >/dev/null || fail "$tool is not installed"
done
docker compose version >/dev/null 2>&1 || fail "the Docker Compose plugin (docker compose) is not installed"
docker info >/dev/null 2>&1 || fail "cannot reach the Docker engine (docker info failed)"

work=$(mktemp -d)
finish() {
	status=$?
	if [ "$status" -ne 0 ]; then
		dc ps -a >&2 || true
		dc logs --no-color --tail 40 >&2 || true
	fi
	if [ "${KEEP:-0}" = 1 ]; then
		say "KEEP=1: the fleet is still running (docker compose -p $project down -v removes it)"
	else
		dc down -v --remove-orphans >/dev/null 2>&1 || say "docker compose down failed; remove project $project by hand"
	fi
	rm -rf "$work"
	exit "$status"
}
trap finish EXIT

auth=()
if [ -n "${GENFLEET_API_TOKEN:-}" ]; then
	auth=(-H "Authorization: Bearer $GENFLEET_API_TOKEN")
fi

say "building and starting project $project"
dc up -d --build

# health ID: the container's health status ("none" when it has no check).
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1"; }

say "waiting for init, the scheduler and $workers worker(s)"
deadline=$((SECONDS + timeout))
state=
while :; do
	init=$(dc ps -a -q init)
	if [ -n "$init" ]; then
		state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$init")
		case $state in
		"exited 0") ;;
		exited*) fail "init exited with code ${state#exited } (it registers the demo model)" ;;
		esac
	fi
	ready=1
	[ "$state" = "exited 0" ] || ready=0
	sched=$(dc ps -q scheduler)
	if [ -z "$sched" ] || [ "$(health "$sched")" != healthy ]; then
		ready=0
	fi
	ids=$(dc ps -q worker)
	[ "$(echo "$ids" | grep -c .)" -eq "$workers" ] || ready=0
	for id in $ids; do
		[ "$(health "$id")" = healthy ] || ready=0
	done
	[ "$ready" = 1 ] && break
	[ "$SECONDS" -lt "$deadline" ] || fail "the fleet was not healthy after ${timeout}s"
	sleep 2
done

say "submitting a job to $api"
resp=$(curl -sS ${auth[@]+"${auth[@]}"} -X POST "$api/v1/jobs" -H 'Content-Type: application/json' \
	-d '{"model":"demo","prompt":"a red fox","seed":7,"width":256,"height":256,"steps":4}') ||
	fail "POST $api/v1/jobs failed"
job=$(echo "$resp" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -n 1)
[ -n "$job" ] || fail "POST /v1/jobs returned no job id: $resp"

say "waiting for job $job"
png=$work/job.png
deadline=$((SECONDS + timeout))
while :; do
	code=$(curl -sS ${auth[@]+"${auth[@]}"} -o "$png" -w '%{http_code}' "$api/v1/jobs/$job/image") ||
		fail "GET /v1/jobs/$job/image failed"
	[ "$code" = 200 ] && break
	if grep -Eq '\(status (failed|cancelled)\)' "$png"; then
		curl -sS ${auth[@]+"${auth[@]}"} "$api/v1/jobs/$job" >&2 || true
		fail "job $job did not succeed"
	fi
	[ "$SECONDS" -lt "$deadline" ] || fail "job $job had no image after ${timeout}s: $(cat "$png")"
	sleep 1
done
magic=$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')
[ "$magic" = 89504e470d0a1a0a ] || fail "GET /v1/jobs/$job/image is not a PNG (first bytes $magic)"
say "job $job: PNG of $(wc -c <"$png" | tr -d ' ') bytes"

record=$(curl -sS ${auth[@]+"${auth[@]}"} "$api/v1/jobs/$job") || fail "GET /v1/jobs/$job failed"
digest=$(echo "$record" | sed -n 's/.*"model_digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' | head -n 1)
[ -n "$digest" ] || fail "job $job's record has no model_digest"

# Every worker mounts the same volume at the cache directory and sees the
# model that one of them fetched for the job.
volume=
for id in $(dc ps -q worker); do
	v=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/var/cache/genfleet"}}{{.Name}}{{end}}{{end}}' "$id")
	[ -n "$v" ] || fail "worker container $id has no volume at /var/cache/genfleet"
	[ -z "$volume" ] || [ "$v" = "$volume" ] || fail "workers mount different cache volumes: $volume and $v"
	volume=$v
	[ "$(health "$id")" = healthy ] || fail "worker container $id is $(health "$id")"
	docker exec "$id" genfleet cache ls | grep -q "${digest#sha256:}" ||
		fail "worker container $id does not see model $digest in the shared cache"
done
say "OK: $workers worker(s) healthy, sharing volume $volume with model $digest"
