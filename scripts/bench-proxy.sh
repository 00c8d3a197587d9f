#!/usr/bin/env bash
# Proxy benchmark: a private cluster, walcast-proxy (release) and
# walcast-bench in the scenarios of docs/benchmarks.md.
#
#   ./scripts/bench-proxy.sh
#
# K1_RUNS (default 10) and K100_RUNS (default 3) repeat the unpaced K=1 and
# K=100 scenarios; WALCAST_PROXY_BIN runs another walcast-proxy binary.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
bench_prepare
bench_in_cluster "$0" "$@"

bench_proxy 18181

# A failed scenario is reported and the others still run; the script then
# exits with status 1 (scenario, scenarios_done: bench-common.sh).

for run in $(seq 1 "${K1_RUNS:-10}"); do
  echo "== K=1, N=100000, unpaced (run $run)"
  scenario -k 1 -n 100000
done
echo "== K=1, N=100000, paced at 10000 rows/s"
scenario -k 1 -n 100000 --rate 10000
for run in $(seq 1 "${K100_RUNS:-3}"); do
  echo "== K=100, N=100000, unfiltered, unpaced (run $run)"
  scenario -k 100 -n 100000 --sample 100
done
echo "== K=100, N=200000, unfiltered, paced at 20000 rows/s (2M events/s offered)"
scenario -k 100 -n 200000 --rate 20000 --sample 100
echo "== K=1000, N=100000, each client filtered to 1% (k.eq.{i mod 100}), paced at 10000 rows/s"
scenario -k 1000 -n 100000 --rate 10000 --query 'insert:bench_events:k.eq.{m}' --expect-per-client 1000 --sample 10
echo "== K=1000 idle clients"
scenario -k 1000 -n 0
scenarios_done
