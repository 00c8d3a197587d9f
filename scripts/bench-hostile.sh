#!/usr/bin/env bash
# Hostile-client benchmark (docs/benchmarks.md, "Hostile clients"): 100
# ordinary clients (walcast-bench) with and without 10 hostile ones
# (walcast-hostile: costly like patterns on 1 MB text values, WASM filters
# that burn their fuel on every change, clients that never read, clients
# that connect and disconnect in a loop), runs interleaved.
#
#   ./scripts/bench-hostile.sh
#
# RUNS (default 3) pairs of runs per scenario (PACED_ONLY=1: only the
# paced one); HOSTILE (default "--like 4
# --fuel 2 --idle 2 --churn 2") the hostile clients (walcast-hostile --help);
# WALCAST_PROXY_BIN runs another walcast-proxy binary (to compare builds);
# PROXY_ARGS adds walcast-proxy flags (for example
# "--max-upgrades-per-address 100" with HOSTILE's "--churn-from 127.0.0.2",
# so that the connect loops are a client address of their own);
# WRITER_ALONE=1 runs the writer of 1 MB values in the runs without hostile
# clients too, so that the pair differs only by the hostile clients (the
# writer is database load, not a client).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
bench_prepare
bench_in_cluster "$0" "$@"

# shellcheck disable=SC2086
bench_proxy 18183 ${PROXY_ARGS:-}
psql -XqAt -c "CREATE TABLE IF NOT EXISTS hostile_docs (id bigserial PRIMARY KEY, body text)"

HOSTILE_PID=""
hostile_start() {
  # shellcheck disable=SC2086
  ./target/release/walcast-hostile --proxy ws://127.0.0.1:18183 "$@" &
  HOSTILE_PID=$!
  # Let the large values and the hostile subscriptions get going.
  sleep 5
}
hostile_stop() {
  kill -TERM "$HOSTILE_PID" 2>/dev/null || true
  wait "$HOSTILE_PID" 2>/dev/null || true
}
trap 'hostile_stop; kill $PROXY_PID 2>/dev/null || true' EXIT

# One scenario alone, then beside the hostile clients.
pair() {
  local name="$1"; shift
  if [ -n "${WRITER_ALONE:-}" ]; then
    echo "== run $run: K=100, N=100000, $name, alone (with the writer of 1 MB values)"
    hostile_start --like 0 --fuel 0 --idle 0 --churn 0
    scenario -k 100 -n 100000 "$@"
    hostile_stop
  else
    echo "== run $run: K=100, N=100000, $name, alone"
    scenario -k 100 -n 100000 "$@"
  fi
  echo "== run $run: K=100, N=100000, $name, with hostile clients (${HOSTILE:-default})"
  # shellcheck disable=SC2086
  hostile_start ${HOSTILE:---like 4 --fuel 2 --idle 2 --churn 2}
  scenario -k 100 -n 100000 "$@"
  hostile_stop
}

# PACED_ONLY=1 skips the unpaced scenario.
for run in $(seq 1 "${RUNS:-3}"); do
  pair "paced at 10000 rows/s" --rate 10000 --sample 10
  [ -n "${PACED_ONLY:-}" ] || pair "unpaced" --sample 100
done
echo "== the proxy's matching counters"
curl -fsS http://127.0.0.1:18183/metrics | grep -E '^walcast_(match_deferred_total|match_throttled_total|filter_errors_total|filters_detached_total|filter_budget_waits_total|clients_closed_total)' || true
scenarios_done
