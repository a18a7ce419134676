#!/usr/bin/env bash
# The whole aiserver stack on this machine, in containers on one network: PostgreSQL, Redis, the
# task runner and the API (on 127.0.0.1:${AISERVER_API_PORT:-8000}).
#
#   deploy/run-local.sh start     build the wheelhouses and both images, then start the stack
#   deploy/run-local.sh logs      follow the logs of the API and the task runner (Ctrl-C stops)
#   deploy/run-local.sh status    what runs, and whether the services answer their health checks
#   deploy/run-local.sh stop      stop (35 s grace), then remove the containers and network of start
#   deploy/run-local.sh stop --purge   ... and the database volume and the images too
#   deploy/run-local.sh --help    this text
#
# Environment of the services: the file AISERVER_ENV_FILE (default .local/aiserver.env). start
# writes it from services/*/.env.example the first time, pointed at the stack's PostgreSQL and
# Redis; edit it there (it is git-ignored). Settings of this script, from the environment:
#   CONTAINER_ENGINE   docker or podman (default: docker where its daemon answers, else podman)
#   BASE_IMAGE         base of both images (default python:3.12-slim-bookworm)
#   LOCAL_BACKING      official (postgres:16-bookworm and redis:7-bookworm, pulled) or debian
#                      (both from deploy/TestBacking.Dockerfile on BASE_IMAGE: no registry needed
#                      beyond the base)
#   AISERVER_API_PORT  the API's port on 127.0.0.1 (default 8000)
#   AISERVER_LOCAL     name prefix and label of everything start creates (default aiserver-local)
#   NO_BUILD=1         start with the images as they are
#
# Everything start creates carries the label io.aiserver.run-local=$AISERVER_LOCAL; stop removes
# what has that label and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=${AISERVER_LOCAL:-aiserver-local}
LABEL="io.aiserver.run-local=${NAME}"
ENV_FILE=${AISERVER_ENV_FILE:-.local/aiserver.env}
API_PORT=${AISERVER_API_PORT:-8000}
BASE_IMAGE=${BASE_IMAGE:-python:3.12-slim-bookworm}
BACKING=${LOCAL_BACKING:-official}
API_IMAGE="localhost/aiserver-api:local"
TASKRUNNER_IMAGE="localhost/aiserver-taskrunner:local"
BACKING_IMAGE="localhost/aiserver-test-backing:local"
NETWORK="${NAME}-net"
VOLUME="${NAME}-pgdata"
DB_PASSWORD="aiserver-local"  # a throwaway stack on 127.0.0.1; never a real secret

say() { printf '==> %s\n' "$*"; }
die() { printf 'run-local.sh: %s\n' "$*" >&2; exit 1; }

pick_engine() {
  if [ -n "${CONTAINER_ENGINE:-}" ]; then
    ENGINE=$CONTAINER_ENGINE
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  else
    die "neither a docker daemon nor podman is available"
  fi
  BUILD_FORMAT=()
  if [ "$ENGINE" = podman ]; then
    BUILD_FORMAT=(--format docker)  # keeps HEALTHCHECK, which the OCI format drops
    # rootful podman on the CI-like machines needs runc and explicit ulimits
    if [ "$(id -u)" = 0 ] && [ -z "${CONTAINERS_CONF:-}" ] && command -v runc >/dev/null; then
      export CONTAINERS_CONF="$PWD/deploy/containers.conf"
    fi
    # podman build reads it again in helper processes of another directory: a path of its own
    case "${CONTAINERS_CONF:-/}" in
      /*) ;;
      *) CONTAINERS_CONF="$(cd "$OLDPWD" && realpath "$CONTAINERS_CONF")"; export CONTAINERS_CONF ;;
    esac
  fi
}

c() { "$ENGINE" "$@"; }

# What to do when an image cannot be had: a build's base or a backing image is pulled by name.
NO_REGISTRY="could not get an image (above). Without a registry, build on a local base:
  LOCAL_BACKING=debian BASE_IMAGE=\$(python3 deploy/local_base_image.py) deploy/run-local.sh start
(podman resolves a short name like postgres:16-bookworm only through unqualified-search-registries
in /etc/containers/registries.conf, or BASE_IMAGE and LOCAL_BACKING as above)"

pulled() {  # pulled COMMAND...: run it; a failure is an image that could not be had
  "$@" || die "$NO_REGISTRY"
}

write_env_file() {
  [ -f "$ENV_FILE" ] && return 0
  mkdir -p "$(dirname "$ENV_FILE")"
  install -m 600 /dev/null "$ENV_FILE"  # it holds a secret (WEBHOOK_SECRET_KEYS)
  {
    echo "# aiserver services on run-local.sh's network (written by deploy/run-local.sh start)."
    echo "# From services/api/.env.example and services/taskrunner/.env.example; edit freely."
    grep -hE '^[A-Z_]+=' services/api/.env.example services/taskrunner/.env.example \
      | awk -F= '!seen[$1]++' \
      | sed -e "s#^DATABASE_URL=.*#DATABASE_URL=postgresql://aiserver:${DB_PASSWORD}@postgres:5432/aiserver#" \
            -e "s#^REDIS_URL=.*#REDIS_URL=redis://redis:6379/0#" \
            -e "s#^LOG_FORMAT=.*#LOG_FORMAT=console#" \
            -e "s#^WEBHOOK_SECRET_KEYS=.*#WEBHOOK_SECRET_KEYS=$(head -c 32 /dev/urandom | base64)#"
  } >"$ENV_FILE"
  say "wrote $ENV_FILE (from services/*/.env.example)"
}

build_images() {
  say "wheelhouses (hatch run build:api, build:taskrunner)"
  hatch run build:api
  hatch run build:taskrunner
  say "images ($ENGINE build, base $BASE_IMAGE)"
  pulled c build "${BUILD_FORMAT[@]}" -f deploy/API.Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "$LABEL" -t "$API_IMAGE" .
  pulled c build "${BUILD_FORMAT[@]}" -f deploy/TaskRunner.Dockerfile \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "$LABEL" -t "$TASKRUNNER_IMAGE" .
  if [ "$BACKING" = debian ]; then
    pulled c build "${BUILD_FORMAT[@]}" -f deploy/TestBacking.Dockerfile \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "$LABEL" -t "$BACKING_IMAGE" .
  fi
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq 1 "$seconds"); do
    if "$@" >/dev/null 2>&1; then say "$what: ready"; return 0; fi
    sleep 1
  done
  die "$what: not ready after ${seconds} s (deploy/run-local.sh logs)"
}

run() {  # run ROLE [options...] IMAGE [command...]
  local role=$1; shift
  c run --detach --name "${NAME}-${role}" --label "$LABEL" --network "$NETWORK" \
    --network-alias "$role" "$@" >/dev/null
}

start() {
  [ -z "$(c ps -aq --filter "label=$LABEL")" ] || die "$NAME is already running: stop it first"
  write_env_file
  [ "${NO_BUILD:-}" = 1 ] || build_images
  say "network $NETWORK"
  # a start that failed before its containers (an image it could not pull) left it: reused
  c network inspect "$NETWORK" >/dev/null 2>&1 || c network create --label "$LABEL" "$NETWORK" >/dev/null
  case "$BACKING" in
    official)
      c volume inspect "$VOLUME" >/dev/null 2>&1 || c volume create --label "$LABEL" "$VOLUME" >/dev/null
      pulled run postgres -e POSTGRES_USER=aiserver -e "POSTGRES_PASSWORD=$DB_PASSWORD" \
        -e POSTGRES_DB=aiserver -v "$VOLUME:/var/lib/postgresql/data" postgres:16-bookworm
      pulled run redis redis:7-bookworm redis-server --save "" --appendonly no
      wait_for PostgreSQL 60 c exec "${NAME}-postgres" pg_isready -h 127.0.0.1 -U aiserver -d aiserver
      ;;
    debian)
      run postgres --user postgres "$BACKING_IMAGE" postgres
      run redis --user redis "$BACKING_IMAGE" redis
      wait_for PostgreSQL 60 c exec "${NAME}-postgres" pg_isready -h 127.0.0.1
      c exec "${NAME}-postgres" psql -h 127.0.0.1 -U postgres -qc \
        "CREATE ROLE aiserver LOGIN PASSWORD '${DB_PASSWORD}'" >/dev/null
      c exec "${NAME}-postgres" createdb -h 127.0.0.1 -U postgres -O aiserver aiserver
      ;;
    *) die "LOCAL_BACKING must be official or debian, not $BACKING" ;;
  esac
  say "task runner (migrates and seeds the database at start)"
  run taskrunner --env-file "$ENV_FILE" "$TASKRUNNER_IMAGE"
  wait_for "task runner" 180 c exec "${NAME}-taskrunner" aiserver-taskrunner check
  say "API on http://127.0.0.1:${API_PORT}"
  run api --env-file "$ENV_FILE" -p "127.0.0.1:${API_PORT}:8000" "$API_IMAGE"
  wait_for API 60 c exec "${NAME}-api" python -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=3)"
  say "up: curl http://127.0.0.1:${API_PORT}/health ; deploy/run-local.sh logs | status | stop"
  say "a first project and its key (whoever reaches the database is the operator):"
  printf '    %s exec %s aiserver-ledger projects create my-app --name "My App"\n' "$ENGINE" "${NAME}-api"
  printf '    %s exec %s aiserver-ledger keys create --project my-app --name app --scope ingest --scope read\n' \
    "$ENGINE" "${NAME}-api"
}

# Seconds a container gets to stop on SIGTERM before it is killed: the API lets requests in
# flight finish for 20 s, the task runner running jobs for 25 s (deploy/deployment.md, Stopping).
STOP_TIMEOUT=35

stop_running() {  # stop_running WHAT [filter...]: stop the running containers of $LABEL that match
  local what=$1 ids; shift
  ids=$(c ps -q --filter "label=$LABEL" "$@")
  [ -z "$ids" ] && return 0
  say "stopping $what (up to ${STOP_TIMEOUT} s)"
  c stop -t "$STOP_TIMEOUT" $ids >/dev/null
}

stop() {
  local ids
  # the services first, while PostgreSQL and Redis still serve what they finish
  stop_running "the API" --filter "name=${NAME}-api"
  stop_running "the task runner" --filter "name=${NAME}-taskrunner"
  stop_running "the other containers"
  ids=$(c ps -aq --filter "label=$LABEL")
  [ -z "$ids" ] || { say "removing containers"; c rm -f $ids >/dev/null; }
  for network in $(c network ls -q --filter "label=$LABEL"); do
    say "removing network"; c network rm "$network" >/dev/null
  done
  if [ "${1:-}" = --purge ]; then
    for volume in $(c volume ls -q --filter "label=$LABEL"); do
      say "removing volume $volume"; c volume rm "$volume" >/dev/null
    done
    ids=$(c images -q --filter "label=$LABEL" | sort -u)
    [ -z "$ids" ] || { say "removing images"; c rmi -f $ids >/dev/null || true; }
  fi
  say "stopped $NAME"
}

logs() {
  local pids=()
  for role in taskrunner api; do
    c logs -f --tail 100 "${NAME}-${role}" 2>&1 | sed -u "s/^/${role} | /" &
    pids+=($!)
  done
  trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM EXIT
  wait
}

status() {
  c ps -a --filter "label=$LABEL" --format '{{.Names}}\t{{.Status}}'
  # podman runs HEALTHCHECKs from systemd timers, which a container host may lack: ask directly
  if c exec "${NAME}-taskrunner" aiserver-taskrunner check >/dev/null 2>&1; then
    echo "task runner: healthy"
  else
    echo "task runner: not healthy"
  fi
  if c exec "${NAME}-api" python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=3).read().decode())" 2>/dev/null; then
    echo "api: ready on http://127.0.0.1:${API_PORT}"
  else
    echo "api: not ready"
  fi
}

# The comment at the top of this file is its usage (--help).
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }
# A command line it cannot run: one line that says why, a pointer to the usage, exit 2, and
# nothing started or stopped (before, `stop --prge` stopped the stack and kept its volume).
refuse() {
  printf 'run-local.sh: %s (deploy/run-local.sh --help shows the usage)\n' "$*" >&2
  exit 2
}

command=${1:-}
[ $# -eq 0 ] || shift
case "$command" in
  start | logs | status) [ $# -eq 0 ] || refuse "$command takes no arguments, not: $*" ;;
  stop)
    [ $# -eq 0 ] || { [ $# -eq 1 ] && [ "$1" = --purge ]; } \
      || refuse "stop takes --purge or nothing, not: $*" ;;
  -h | --help | help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
  *) refuse "unknown command '$command': start, stop [--purge], logs or status" ;;
esac
case "$command" in
  start) pick_engine; start ;;
  stop) pick_engine; stop "${1:-}" ;;
  logs) pick_engine; logs ;;
  status) pick_engine; status ;;
esac
