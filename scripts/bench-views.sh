#!/usr/bin/env bash
# What a live view costs (docs/proxy.md#live-views): the initial rows of a
# 1,000,000-row table (snapshot=1) read by one client, 1,000 single-row
# updates per second running, interleaved: unfiltered (`*:bench_backfill`,
# no view) and with a row filter every row passes
# (`*:bench_backfill:v.gte.0`: the client holds all 1,000,000 rows). For
# each run: seconds to the last row, rows/s, the rows the view holds
# (walcast_view_rows) and the proxy's resident memory before the run and
# while the client holds its rows.
#
#   ./scripts/bench-views.sh
#
# RUNS (default 3), ROWS (default 1000000), CHUNK (rows per chunk, default
# 1000) and WRITES (updates/s, default 1000) change the load.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
bench_prepare
bench_in_cluster "$0" "$@"

RUNS="${RUNS:-3}"
ROWS="${ROWS:-1000000}"
CHUNK="${CHUNK:-1000}"
WRITES="${WRITES:-1000}"
bench_proxy 18091 --snapshot-chunk-rows "$CHUNK"
for run in $(seq 1 "$RUNS"); do
  for query in '*:bench_backfill' '*:bench_backfill:v.gte.0'; do
    echo "[bench] run $run, $query"
    ./target/release/walcast-backfill --proxy http://127.0.0.1:18091 --mode stream \
      --query "$query" --proxy-pid "$PROXY_PID" \
      --rows "$ROWS" --page-rows "$CHUNK" --writes-per-second "$WRITES" \
      || { echo "(run failed)"; BENCH_FAILED=$((BENCH_FAILED + 1)); }
  done
done
scenarios_done
