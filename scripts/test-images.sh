#!/usr/bin/env bash
# Builds the project's images with podman and runs them as docker-compose.yml
# does, then checks them end to end from the host (scripts/test-images.py):
# no Docker engine needed. Run by scripts/test.sh; docs/docker.md says what
# it checks.
#
#   ./scripts/test-images.sh             # PostgreSQL 15 (Debian's packages)
#
# 1. podman, buildah and their settings (scripts/podman-env.sh);
# 2. the base images, made locally when the machine reaches no container
#    registry (scripts/base-images.sh; skipped when made from the same recipe);
# 3. walcast-postgres:15 (Dockerfile.postgres) and walcast-proxy
#    (Dockerfile.proxy), with the layer and cargo caches of earlier builds;
# 4. the compose services postgres and proxy, checked from the host.
# Prints how long each step took and the images' sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJOR="${PG_MAJOR:-15}"
export PG_MAJOR
log() { printf '[images] %s\n' "$*" >&2; }
# shellcheck source=scripts/podman-env.sh
source scripts/podman-env.sh

step_started=$SECONDS
timings=()
took() { timings+=("$(printf '%5d s  %s' $((SECONDS - step_started)) "$1")"); step_started=$SECONDS; }

podman_setup
took "podman and its settings"
./scripts/base-images.sh
took "base images"

build=(podman build --pull=never --format docker)
# HTTPS from inside a build (crates.io) trusts the host's CA bundle, given as
# a build secret: mounted only into the RUN steps that fetch crates, never
# stored in a layer.
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  build+=(--secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt)
fi
log "building walcast-postgres:${PG_MAJOR} (Dockerfile.postgres)"
"${build[@]}" --build-arg "PG_MAJOR=${PG_MAJOR}" -f Dockerfile.postgres \
  -t "walcast-postgres:${PG_MAJOR}" . >&2
took "Dockerfile.postgres"
log "building walcast-proxy (Dockerfile.proxy)"
"${build[@]}" -f Dockerfile.proxy -t walcast-proxy . >&2
took "Dockerfile.proxy"

VENV="$(./scripts/tools-venv.sh "PyYAML==6.0.3" "websockets==15.0.1")"
"$VENV/bin/python" scripts/test-images.py --pg-major "$PG_MAJOR"
took "the compose services, end to end"

for image in "walcast-postgres:${PG_MAJOR}" walcast-proxy \
             "postgres:${PG_MAJOR}-bookworm" debian:bookworm-slim; do
  log "$(podman image inspect --format "{{.Size}}" "$image" \
    | awk -v i="$image" '{printf "size of %s: %.0f MB", i, $1 / 1e6}')"
done
log "durations:"
printf '[images] %s\n' "${timings[@]}" >&2
