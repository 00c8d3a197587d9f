#!/usr/bin/env bash
# Initial rows of a 1,000,000-row table while 1,000 single-row updates per
# second run: snapshot=1 (chunks between watermarks, nothing held) against
# an exported snapshot read with /v1/snapshot/data pages by key, runs
# interleaved. For each run: seconds to the last row, rows/s, and the
# oldest backend_xmin any session held (its age in transactions and how
# long one was held): what each way costs vacuum.
#
#   ./scripts/bench-backfill.sh
#
# RUNS (default 3) repeats each mode; ROWS (default 1000000), CHUNK (rows
# per chunk and per page, default 1000) and WRITES (updates/s, default 1000)
# change the load.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
bench_prepare
bench_in_cluster "$0" "$@"

RUNS="${RUNS:-3}"
ROWS="${ROWS:-1000000}"
CHUNK="${CHUNK:-1000}"
WRITES="${WRITES:-1000}"
bench_proxy 18090 --snapshot-chunk-rows "$CHUNK"
for run in $(seq 1 "$RUNS"); do
  for mode in stream pages; do
    echo "[bench] run $run, $mode"
    ./target/release/walcast-backfill --proxy http://127.0.0.1:18090 --mode "$mode" \
      --rows "$ROWS" --page-rows "$CHUNK" --writes-per-second "$WRITES" \
      || { echo "(run failed)"; BENCH_FAILED=$((BENCH_FAILED + 1)); }
  done
done
scenarios_done
