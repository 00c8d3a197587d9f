#!/usr/bin/env bash
# Set up the machine (idempotent), install the extension, build the example
# WASM filters and run every check: the container files, formatting, clippy,
# unit tests and the end-to-end tests against private PostgreSQL clusters
# (they include the example filters and the client examples), on PostgreSQL
# 15; then the plugin's end-to-end tests on 16, 17 and 18, and the proxy's on
# 18; then the parsers' fuzz targets for 30 s each (scripts/fuzz.sh); then
# the images, built with podman and run as docker-compose.yml runs them
# (scripts/test-images.sh). Fails
# when any of them fails. Prints how long each phase took, and the total,
# when it ends (docs/testing.md keeps a table of a fresh clone's run).
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from scratch: incremental caches would only take disk.
export CARGO_INCREMENTAL=0

started=$SECONDS
phase_name=""
phase_started=$SECONDS
durations=()
# Ends the phase under way (recording its duration) and starts the next.
phase() {
  if [ -n "$phase_name" ]; then
    durations+=("$(printf '%5d s  %s' $((SECONDS - phase_started)) "$phase_name")")
  fi
  phase_name="$1"
  phase_started=$SECONDS
  if [ -n "$phase_name" ]; then echo "[test] $phase_name" >&2; fi
}
report() {
  local status=$?
  local failed_in="$phase_name"
  phase ""
  echo "[test] durations:" >&2
  printf '[test] %s\n' "${durations[@]}" >&2
  printf '[test] %5d s  total' $((SECONDS - started)) >&2
  if [ "$status" -ne 0 ]; then printf ', FAILED in: %s' "$failed_in" >&2; fi
  echo >&2
}
trap report EXIT

phase "setup (scripts/setup.sh)"
./scripts/setup.sh
phase "the extension for PostgreSQL 15"
./scripts/install-extension.sh
phase "the example WASM filters"
./scripts/build-filters.sh
phase "container files (hadolint, COPY sources, compose)"
./scripts/check-docker.sh
phase "the proxy's layers: the domain never uses http, no import cycle"
python3 scripts/check-layers.py >/dev/null
phase "cargo fmt --check"
cargo fmt --all -- --check
(cd filters && cargo fmt --all -- --check)
(cd fuzz && cargo fmt --all -- --check)
# The filters workspace has its own settings (filters/.cargo/config.toml).
phase "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
(cd filters && cargo clippy --workspace --all-targets -- -D warnings)
(cd filters && cargo clippy --workspace --target wasm32-unknown-unknown -- -D warnings)
phase "the filters' tests"
(cd filters && cargo test --workspace)
# The end-to-end tests mostly wait on processes, sockets and clocks (two
# at a time kept half a core busy): four at a time.
e2e_threads=(-- --test-threads 4)
phase "cargo test --workspace (PostgreSQL 15)"
WALCAST_PG_MAJOR=15 cargo test --workspace "${e2e_threads[@]}"
# Every other supported major: the plugin's suite (golden, values, TOAST,
# streaming, errors, doctor, positions) against a cluster of that major, and
# the proxy's on the newest. `--workspace` with a test target keeps the
# features of the build above: nothing is compiled again.
for major in 16 17 18; do
  phase "PostgreSQL ${major}: clippy and install of the extension"
  cargo clippy -p walcast --no-default-features --features "pg${major}" -- -D warnings
  pg_config="$(./scripts/install-extension.sh "$major" | tail -n 1)"
  phase "PostgreSQL ${major}: the plugin's end-to-end tests"
  WALCAST_PG_MAJOR="$major" PG_CONFIG="$pg_config" cargo test --workspace --test plugin
  if [ "$major" = 18 ]; then
    phase "PostgreSQL ${major}: the proxy's end-to-end tests"
    WALCAST_PG_MAJOR="$major" PG_CONFIG="$pg_config" cargo test --workspace --test e2e "${e2e_threads[@]}"
  fi
done
phase "fuzzing: the parsers' targets for 30 s each"
./scripts/fuzz.sh parsers 30
phase "the images: Dockerfile.postgres, Dockerfile.proxy and compose, with podman"
./scripts/test-images.sh
phase ""
