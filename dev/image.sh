#!/usr/bin/env bash
# The project's image, built and run on this machine with Podman: no Docker, no registry.
#
#   dev/image.sh install   Podman, runc and debootstrap from Debian (idempotent)
#   dev/image.sh base      the local base image: Debian bookworm + Debian's Python 3.11
#                          (dev/image_base.sh), made only when that recipe changed
#   dev/image.sh build     the base, then the Dockerfile with PYTHON_IMAGE=<that base>; prints the size
#   dev/image.sh up        every Deployment of manifests/ that runs the image, as a container run
#                          as the manifests run it (dev/image_containers.py), on the host's network
#                          with the ports and addresses of dev/defaults.env; waits until healthy
#   dev/image.sh down      stops and removes the containers `up` started (by name), keeping their logs
#   dev/image.sh test      build, then tests/test_image_system.py: the README walkthrough and the
#                          containers' confinement, against containers on free ports
#   dev/image.sh clean     removes the built image, the base and their build cache (a fresh start)
#   dev/image.sh status    the image, the base and the containers of `up`
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev/defaults.env
source "$ROOT/dev/defaults.env"
log() { printf '[image] %s\n' "$*" >&2; }
# shellcheck source=dev/apt.sh
source "$ROOT/dev/apt.sh"

RUN="${IMAGE_RUN_DIR:-$ROOT/.run/image}"
PREFIX="${IMAGE_RUN_NAME:-video2mp3}"
BASE_REPO=localhost/video2mp3-base
# Every image made from the base (the base itself, each build stage, the cache) carries this label.
BASE_LABEL=video2mp3.base-recipe
SIZE_BUDGET_MB=300

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

install() {
  apt_install podman runc debootstrap
}

# PODMAN: podman with its global options. The storage driver is Podman's own choice (overlay
# on this machine's ext4) unless IMAGE_STORAGE_DRIVER says otherwise or the storage lies on
# overlayfs (a container's own disk), where the kernel's overlay does not stack: then vfs, in a
# storage root of its own (a root keeps the driver it was made with).
podman_setup() {
  PODMAN=(podman)
  local driver="${IMAGE_STORAGE_DRIVER:-}"
  if [[ -z "$driver" ]]; then
    local where=/var/lib/containers
    [[ -d "$where" ]] || where=/var/lib
    [[ "$(stat -f -c %T "$where")" == overlayfs ]] && driver=vfs
  fi
  if [[ -n "$driver" ]]; then
    PODMAN+=("--storage-driver=$driver" "--root=$INFRA_DIR/podman-$driver")
  fi
}

# RUN_OPTS: options every container (and every build step) needs here. Podman raises the open
# file and process limits of a container above this machine's hard limits, which the runtime
# may not do (runc: "error setting rlimit"): then they are set to what this machine allows.
run_options() {
  RUN_OPTS=()
  "${PODMAN[@]}" run --rm --network=none --entrypoint=true "$1" >/dev/null 2>"$RUN/probe.log" && return 0
  if grep -q rlimit "$RUN/probe.log"; then
    local pid_max nproc
    pid_max="$(cat /proc/sys/kernel/pid_max)"
    nproc="$(ulimit -Hu)"
    [[ "$nproc" == unlimited || "$nproc" -gt "$pid_max" ]] && nproc="$pid_max"
    RUN_OPTS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc:$nproc")
    "${PODMAN[@]}" run --rm --network=none "${RUN_OPTS[@]}" --entrypoint=true "$1" >/dev/null 2>"$RUN/probe.log" &&
      return 0
  fi
  log "a container does not start here:"
  cat "$RUN/probe.log" >&2
  exit 1
}

recipe_hash() { sha256sum "$ROOT/dev/image_base.sh" | cut -c1-12; }
base_ref() { echo "$BASE_REPO:bookworm-python3.11-$(recipe_hash)"; }

base() {
  local ref
  ref="$(base_ref)"
  if "${PODMAN[@]}" image exists "$ref"; then return 0; fi
  log "making the base image $ref: debootstrap of bookworm with Debian's Python 3.11 (a few minutes)"
  mkdir -p "$INFRA_DIR"
  local work
  work="$(mktemp -d "$INFRA_DIR/image-base.XXXXXX")"
  # (set -e does not act inside a subshell followed by ||: every step says `|| exit 1`.)
  (
    # A clean environment: the chroot's maintainer scripts must not see this project's
    # settings (PYTHON, say, which Debian's Python packages would take for their interpreter).
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin ${DEBIAN_MIRROR:+DEBIAN_MIRROR="$DEBIAN_MIRROR"} \
      bash "$ROOT/dev/image_base.sh" "$work/rootfs" >"$work/debootstrap.log" 2>&1 ||
      { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" . || exit 1
    "${PODMAN[@]}" import --quiet --change 'CMD ["python3"]' --change "ENV=LANG=C.UTF-8" \
      --change "LABEL=$BASE_LABEL=$(recipe_hash)" --message "dev/image_base.sh" \
      "$work/rootfs.tar" "$ref" >/dev/null || exit 1
  ) || { rm -rf "$work"; log "making the base image failed"; exit 1; }
  rm -rf "$work"
}

image_ref() { echo "localhost/$("$PYTHON" "$ROOT/dev/image_containers.py" image)"; }

build() {
  install
  bash "$ROOT/dev/k8s-tools.sh" install
  podman_setup
  mkdir -p "$RUN"
  base
  local ref image started
  ref="$(base_ref)"
  image="$(image_ref)"
  run_options "$ref"
  # pip in the build trusts what pip on this machine trusts (a TLS-intercepting proxy's CA, say):
  # the bundle is a build secret, mounted for the pip steps only and kept out of every layer.
  local ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" secret=()
  [[ -s "$ca" ]] && secret=(--secret "id=pip_ca,src=$ca")
  log "building $image from the Dockerfile on $ref"
  started=$SECONDS
  "${PODMAN[@]}" build "${RUN_OPTS[@]}" "${secret[@]}" --pull=never --build-arg "PYTHON_IMAGE=$ref" \
    -t "$image" -f "$ROOT/Dockerfile" "$ROOT" >"$RUN/build.log" 2>&1 ||
    { tail -n 40 "$RUN/build.log" >&2; log "the build failed; the whole log: $RUN/build.log"; exit 1; }
  local bytes
  bytes="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$image")"
  log "built $image in $((SECONDS - started)) s: $((bytes / 1000000)) MB (budget $SIZE_BUDGET_MB MB)"
  # Bases of older recipes, unless an image still uses them.
  local old
  for old in $("${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$BASE_REPO"); do
    [[ "$old" == "$ref" ]] || "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true
  done
}

up() {
  podman_setup
  mkdir -p "$RUN"
  local image
  image="$(image_ref)"
  "${PODMAN[@]}" image exists "$image" || { log "no image $image: run 'make image' first"; exit 1; }
  if [[ -s "$RUN/containers" ]]; then
    log "containers of an earlier 'up' are listed in $RUN/containers; 'dev/image.sh down' first"
    exit 1
  fi
  run_options "$image"
  bash "$ROOT/dev/infra.sh" up
  export CONVERTER_HEALTH_PORT="${CONVERTER_HEALTH_PORT:-8081}"
  export NOTIFIER_HEALTH_PORT="${NOTIFIER_HEALTH_PORT:-8082}"
  export AUTH_HEALTH_PORT="${AUTH_HEALTH_PORT:-5010}" STORAGE_HEALTH_PORT="${STORAGE_HEALTH_PORT:-5011}"
  "$PYTHON" "$ROOT/dev/certs.py" "$GRPC_TLS_DIR" # as dev/up.sh: the local certificates, made once
  if [[ -z "${JWT_SECRET:-}" ]]; then # as dev/up.sh: made once, kept with the local state
    if [[ ! -s "$INFRA_DIR/jwt_secret" ]]; then
      (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))' >"$INFRA_DIR/jwt_secret")
    fi
    JWT_SECRET="$(cat "$INFRA_DIR/jwt_secret")"
    export JWT_SECRET
  fi
  "$PYTHON" "$ROOT/dev/image_containers.py" up --image "$image" --prefix "$PREFIX" --run-dir "$RUN" \
    -- "${PODMAN[@]}" run "${RUN_OPTS[@]}"
  if ! PYTHONPATH="$ROOT:$ROOT/gen" "$PYTHON" "$ROOT/dev/wait_healthy.py" --timeout 120; then
    local name
    while read -r name; do
      log "$name: $("${PODMAN[@]}" inspect --format '{{.State.Status}} (exit {{.State.ExitCode}})' "$name" 2>&1)"
      "${PODMAN[@]}" logs --tail 15 "$name" 2>&1 | sed "s/^/  /" >&2 || true
    done <"$RUN/containers"
    exit 1
  fi
  log "up: $(tr '\n' ' ' <"$RUN/containers")(gateway: $PUBLIC_BASE_URL)"
}

down() {
  podman_setup
  [[ -s "$RUN/containers" ]] || return 0
  local names=() name
  mapfile -t names <"$RUN/containers"
  log "stopping ${names[*]}"
  # Each one gets the grace period of its Deployment (terminationGracePeriodSeconds).
  "${PODMAN[@]}" stop --ignore "${names[@]}" >/dev/null
  mkdir -p "$RUN/logs"
  for name in "${names[@]}"; do
    "${PODMAN[@]}" logs "$name" >"$RUN/logs/$name.log" 2>&1 || true
  done
  "${PODMAN[@]}" rm --ignore --force "${names[@]}" >/dev/null
  rm -f "$RUN/containers" "$RUN"/*.env
}

test_() {
  build
  local image
  image="$(image_ref)"
  VIDEO2MP3_IMAGE="$image" IMAGE_RUN_OPTIONS="${RUN_OPTS[*]}" IMAGE_PODMAN="${PODMAN[*]}" \
    IMAGE_SIZE_BUDGET_MB="$SIZE_BUDGET_MB" PYTHONPATH="$ROOT:$ROOT/gen" \
    "$PYTHON" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_image_system.py"
}

clean() {
  podman_setup
  local ids
  ids="$("${PODMAN[@]}" images --all --quiet --filter "label=$BASE_LABEL" | sort -u)"
  if [[ -n "$ids" ]]; then
    log "removing the image, its base and their build cache"
    # shellcheck disable=SC2086
    "${PODMAN[@]}" rmi --force $ids >/dev/null
  fi
}

status() {
  podman_setup
  "${PODMAN[@]}" images --filter "label=$BASE_LABEL" --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -v '^<none>' || true
  if [[ -s "$RUN/containers" ]]; then
    local name
    while read -r name; do
      echo "$name $("${PODMAN[@]}" inspect --format '{{.State.Status}}' "$name" 2>&1)"
    done <"$RUN/containers"
  fi
}

case "${1:-}" in
  install) install ;;
  base) install && podman_setup && base ;;
  build) build ;;
  up) up ;;
  down) down ;;
  test) test_ ;;
  clean) clean ;;
  status) status ;;
  *) usage ;;
esac
