#!/usr/bin/env bash
# Set up the machine (idempotent), install walcast and run the live demo: a
# private PostgreSQL cluster with the extension, a small workload, and the
# walcast change stream printed as it happens. Stop with Ctrl-C.
# DEMO_SECONDS=N stops after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/install-extension.sh
cargo build --release -p walcast-cluster
exec ./target/release/walcast-cluster run -- ./scripts/demo-stream.sh
