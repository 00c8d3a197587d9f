#!/usr/bin/env bash
# Set up the machine (idempotent), install the extension and run every check:
# the container files, formatting, clippy, unit tests and the end-to-end tests
# against private PostgreSQL clusters. Fails when any of them fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/install-extension.sh
echo "[test] container files (hadolint, COPY sources, compose)" >&2
./scripts/check-docker.sh
echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] cargo test" >&2
cargo test --workspace
