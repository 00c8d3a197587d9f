#!/usr/bin/env bash
# Set up the machine (idempotent), install the extension, build the example
# WASM filters and run every check: the container files, formatting, clippy,
# unit tests and the end-to-end tests against private PostgreSQL clusters
# (they include the example filters and the client examples). Fails when any
# of them fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/install-extension.sh
./scripts/build-filters.sh
echo "[test] container files (hadolint, COPY sources, compose)" >&2
./scripts/check-docker.sh
echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
(cd filters && cargo fmt --all -- --check)
# The filters workspace has its own settings (filters/.cargo/config.toml).
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
(cd filters && cargo clippy --workspace --all-targets -- -D warnings)
(cd filters && cargo clippy --workspace --target wasm32-unknown-unknown -- -D warnings)
echo "[test] cargo test" >&2
(cd filters && cargo test --workspace)
cargo test --workspace
