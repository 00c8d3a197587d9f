#!/usr/bin/env bash
# Half-open connections against walcast-proxy under a low descriptor limit
# (docs/benchmarks.md, "Connection hardening"): twice as many connections
# as descriptors, each sending part of a request head and nothing more.
# Reports per run what walcast-flood measures: connections held and for how
# long, /healthz probes answered, the proxy's CPU and how much it logged.
#
# Scenarios, interleaved RUNS times (default 3):
#   capped    the default --max-connections (derived from the limit)
#   exhausted --max-connections 100000: descriptors run out, accepting pauses
#   baseline  WALCAST_BASELINE_BIN, another build (e.g. before this work), same flood
# NOFILE (256), CONNECTIONS (2 x NOFILE), FLOOD_SECONDS (15) change the load.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
if [ -z "${WALCAST_BENCH_INSIDE:-}" ]; then
  cargo build --release -q -p walcast-proxy -p walcast-bench -p walcast-cluster
fi
bench_in_cluster "$0" "$@"

NOFILE="${NOFILE:-256}"
CONNECTIONS="${CONNECTIONS:-$((2 * NOFILE))}"
SECONDS_EACH="${FLOOD_SECONDS:-15}"
RUNS="${RUNS:-3}"
PORT=18190
NEW_BIN="${WALCAST_PROXY_BIN:-./target/release/walcast-proxy}"
failed=0

# run NAME BINARY ARGS...: starts BINARY under the descriptor limit, floods it.
run() {
  local name="$1" bin="$2"; shift 2
  local log="/tmp/walcast-flood-${name}.log"
  (ulimit -n "$NOFILE"; exec "$bin" --database-url "$DATABASE_URL" --listen "127.0.0.1:${PORT}" \
     --slot flood "$@" >/dev/null 2>"$log") &
  local pid=$!
  local up=0
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:${PORT}/healthz" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  if [ "$up" = 1 ]; then
    printf '%-9s ' "$name"
    ./target/release/walcast-flood --addr "127.0.0.1:${PORT}" --connections "$CONNECTIONS" \
      --seconds "$SECONDS_EACH" --pid "$pid" --log "$log" || failed=1
  else
    echo "$name: the proxy did not become healthy:"; tail -5 "$log"; failed=1
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
  sleep 1
}

echo "descriptor limit ${NOFILE}, ${CONNECTIONS} half-open connections, ${SECONDS_EACH} s each"
for i in $(seq 1 "$RUNS"); do
  if [ -n "${WALCAST_BASELINE_BIN:-}" ]; then run baseline "$WALCAST_BASELINE_BIN"; fi
  run capped "$NEW_BIN"
  run exhausted "$NEW_BIN" --max-connections 100000
done
psql -XqAt -c "SELECT pg_drop_replication_slot('flood')" >/dev/null 2>&1 || true
exit "$failed"
