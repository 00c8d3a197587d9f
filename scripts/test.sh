#!/usr/bin/env bash
# Set up the machine (idempotent), install the extension, build the example
# WASM filters and run every check: the container files, formatting, clippy,
# unit tests and the end-to-end tests against private PostgreSQL clusters
# (they include the example filters and the client examples), on PostgreSQL
# 15; then the plugin's end-to-end tests on 16, 17 and 18, and the proxy's on
# 18; then every fuzz target for 30 s (scripts/fuzz.sh). Fails when any of
# them fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from scratch: incremental caches would only take disk.
export CARGO_INCREMENTAL=0
./scripts/setup.sh
./scripts/install-extension.sh
./scripts/build-filters.sh
echo "[test] container files (hadolint, COPY sources, compose)" >&2
./scripts/check-docker.sh
echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
(cd filters && cargo fmt --all -- --check)
(cd fuzz && cargo fmt --all -- --check)
# The filters workspace has its own settings (filters/.cargo/config.toml).
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
(cd filters && cargo clippy --workspace --all-targets -- -D warnings)
(cd filters && cargo clippy --workspace --target wasm32-unknown-unknown -- -D warnings)
echo "[test] cargo test" >&2
(cd filters && cargo test --workspace)
WALCAST_PG_MAJOR=15 cargo test --workspace
# Every other supported major: the plugin's suite (golden, values, TOAST,
# streaming, errors, doctor, positions) against a cluster of that major, and
# the proxy's on the newest.
for major in 16 17 18; do
  echo "[test] PostgreSQL ${major}: cargo clippy of the extension" >&2
  cargo clippy -p walcast --no-default-features --features "pg${major}" -- -D warnings
  pg_config="$(./scripts/install-extension.sh "$major" | tail -n 1)"
  echo "[test] PostgreSQL ${major}: the plugin's end-to-end tests" >&2
  WALCAST_PG_MAJOR="$major" PG_CONFIG="$pg_config" cargo test -p walcast-tests
  if [ "$major" = 18 ]; then
    echo "[test] PostgreSQL ${major}: the proxy's end-to-end tests" >&2
    WALCAST_PG_MAJOR="$major" PG_CONFIG="$pg_config" cargo test -p walcast-proxy
  fi
done
echo "[test] fuzzing: every target for 30 s" >&2
./scripts/fuzz.sh all 30
