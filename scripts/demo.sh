#!/usr/bin/env bash
# Set up the machine (idempotent), install walcast and run the live demo: a
# private PostgreSQL cluster with the extension, walcast-proxy serving the
# demo page and websocket streams, and a small workload. Stop with Ctrl-C.
# WALCAST_LISTEN (default 127.0.0.1:8080) sets the address; DEMO_SECONDS=N
# stops after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/install-extension.sh
cargo build --release -p walcast-cluster -p walcast-proxy
exec ./target/release/walcast-cluster run -- ./scripts/demo-stream.sh
