#!/usr/bin/env bash
# Build the WASM filter SDK's examples for wasm32-unknown-unknown (release):
# filters/target/wasm32-unknown-unknown/release/walcast_filter_*.wasm.
# Adds the rustup target when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[filters] %s\n' "$*" >&2; }
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "adding the rustup target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi
log "building the example filters"
# From inside filters/ so that filters/.cargo/config.toml (SIMD) applies.
(cd filters && cargo build --target wasm32-unknown-unknown --release \
  -p walcast-filter-threshold -p walcast-filter-redact -p walcast-filter-sample)
for f in filters/target/wasm32-unknown-unknown/release/walcast_filter_*.wasm; do
  log "$(basename "$f"): $(wc -c <"$f") bytes"
done
