#!/usr/bin/env bash
# WASM filter benchmark (docs/benchmarks.md):
#  1. ns per event per subscription of the example filters in the proxy's
#     runtime (proxy/examples/filter_bench.rs);
#  2. end to end, K=100 clients each with a WASM filter against the same run
#     with the equivalent query filter (a private cluster, walcast-proxy and
#     walcast-bench, release builds).
#
#   ./scripts/bench-filters.sh
#
# RUNS (default 1) pairs of end-to-end runs, interleaved; the proxy runs
# with its default filter budgets (walcast_filter_budget_waits_total, printed
# at the end, counts the pauses --filter-budget-ms imposed).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
bench_prepare
if [ -z "${WALCAST_BENCH_INSIDE:-}" ]; then
  ./scripts/build-filters.sh
  cargo build --release -q -p walcast-proxy --example filter_bench
  echo "== ns per event per subscription (filter_bench, 1M filter runs per case and schedule)"
  ./target/release/examples/filter_bench 1000000
fi
bench_in_cluster "$0" "$@"

bench_proxy 18182
id="$(curl -fsS --data-binary @filters/target/wasm32-unknown-unknown/release/walcast_filter_threshold.wasm \
        -H 'content-type: application/wasm' http://127.0.0.1:18182/v1/filters |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"

for run in $(seq 1 "${RUNS:-1}"); do
  echo "== run $run: K=100, N=100000, unpaced: query filter insert:bench_events:k.gte.0 (every row passes)"
  scenario -k 100 -n 100000 --query 'insert:bench_events:k.gte.0' --sample 100
  echo "== run $run: K=100, N=100000, unpaced: WASM filter (threshold example: table bench_events, k >= 0)"
  scenario -k 100 -n 100000 --query 'insert:bench_events' --filter "$id" \
    --filter-config '{"table":"bench_events","column":"k","min":0}' --sample 100
done
echo "== the proxy's filter counters"
curl -fsS http://127.0.0.1:18182/metrics | grep -E '^walcast_filter' || true
scenarios_done
