#!/usr/bin/env bash
# Proxy benchmark: a private cluster, walcast-proxy (release) and
# walcast-bench in the scenarios of docs/benchmarks.md.
#
#   ./scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
if [ -z "${WALCAST_BENCH_INSIDE:-}" ]; then
  ./scripts/setup.sh
  ./scripts/install-extension.sh
  cargo build --release -q -p walcast-cluster -p walcast-proxy -p walcast-bench
fi
bench_in_cluster "$0" "$@"

BENCH=./target/release/walcast-bench
bench_proxy 18181

echo "== K=1, N=100000, unpaced"
"$BENCH" "${P[@]}" -k 1 -n 100000 || echo "(scenario failed)"
echo "== K=1, N=100000, paced at 10000 rows/s"
"$BENCH" "${P[@]}" -k 1 -n 100000 --rate 10000 || echo "(scenario failed)"
echo "== K=100, N=200000, unfiltered, paced at 20000 rows/s (2M events/s offered)"
"$BENCH" "${P[@]}" -k 100 -n 200000 --rate 20000 --sample 100 || echo "(scenario failed)"
echo "== K=1000, N=100000, each client filtered to 1% (k.eq.{i mod 100}), paced at 10000 rows/s"
"$BENCH" "${P[@]}" -k 1000 -n 100000 --rate 10000 --query 'insert:bench_events:k.eq.{m}' --expect-per-client 1000 --sample 10 || echo "(scenario failed)"
echo "== K=1000 idle clients"
"$BENCH" "${P[@]}" -k 1000 -n 0
