#!/usr/bin/env bash
# Hostile-client benchmark (docs/benchmarks.md, "Hostile clients"): 100
# ordinary clients (walcast-bench) with and without 10 hostile ones
# (walcast-hostile: costly like patterns on 1 MB text values, WASM filters
# that burn their fuel on every change, clients that never read, clients
# that connect and disconnect in a loop), runs interleaved.
#
#   ./scripts/bench-hostile.sh
#
# RUNS (default 3) pairs of runs per scenario; WALCAST_PROXY_BIN runs
# another walcast-proxy binary (to compare builds).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
if [ -z "${WALCAST_BENCH_INSIDE:-}" ]; then
  ./scripts/setup.sh
  ./scripts/install-extension.sh
  cargo build --release -q -p walcast-cluster -p walcast-proxy -p walcast-bench --bins
fi
bench_in_cluster "$0" "$@"

bench_proxy 18183
psql -XqAt -c "CREATE TABLE IF NOT EXISTS hostile_docs (id bigserial PRIMARY KEY, body text)"

HOSTILE_PID=""
hostile_start() {
  ./target/release/walcast-hostile --proxy ws://127.0.0.1:18183 \
    --like 4 --fuel 2 --idle 2 --churn 2 &
  HOSTILE_PID=$!
  # Let the large values and the hostile subscriptions get going.
  sleep 5
}
hostile_stop() {
  kill -TERM "$HOSTILE_PID" 2>/dev/null || true
  wait "$HOSTILE_PID" 2>/dev/null || true
}
trap 'hostile_stop; kill $PROXY_PID 2>/dev/null || true' EXIT

for run in $(seq 1 "${RUNS:-3}"); do
  echo "== run $run: K=100, N=100000, paced at 10000 rows/s, alone"
  scenario -k 100 -n 100000 --rate 10000 --sample 10
  echo "== run $run: K=100, N=100000, paced at 10000 rows/s, with 10 hostile clients"
  hostile_start
  scenario -k 100 -n 100000 --rate 10000 --sample 10
  hostile_stop
  echo "== run $run: K=100, N=100000, unpaced, alone"
  scenario -k 100 -n 100000 --sample 100
  echo "== run $run: K=100, N=100000, unpaced, with 10 hostile clients"
  hostile_start
  scenario -k 100 -n 100000 --sample 100
  hostile_stop
done
echo "== the proxy's matching counters"
curl -fsS http://127.0.0.1:18183/metrics | grep -E '^walcast_(match_deferred_total|match_throttled_total|filter_errors_total|filters_detached_total|clients_closed_total)' || true
scenarios_done
