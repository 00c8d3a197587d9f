#!/usr/bin/env bash
# Latency side by side with a peer (docs/benchmarks.md, "Latency beside
# Speculare PGCDC"): walcast-proxy and Speculare PGCDC (wal2json format 1 ->
# websocket) take turns on one private cluster, each measured by the same
# walcast-bench client (K=1, 100,000 rows in 1000-row transactions, unpaced
# and paced at 10,000 rows/s), with the CPU each proxy and its walsender used.
#
#   SPECULARE_BIN=/path/to/speculare-pgcdc ./scripts/bench-peer-latency.sh
#
# Speculare is not part of walcast: build it from its public source
# (github.com/speculare-cloud/speculare-pgcdc, `cargo build --release`) in a
# folder of its own and name the binary with SPECULARE_BIN. It decodes with
# wal2json, which setup.sh installs for PostgreSQL 15.
#
# ROUNDS (default 5) rounds, each: a fresh walcast slot and proxy, UNPACED
# (default 2) unpaced runs and one paced run, then the same for Speculare
# (a temporary slot of its own). Only one of the two decodes at a time.
# BUSY=N (default 0) keeps N busy loops running for the whole measurement:
# a machine whose cores are shared with other work, the same for both.
# WALCAST_PROXY_BIN runs another walcast-proxy binary.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${SPECULARE_BIN:?name a Speculare PGCDC build: SPECULARE_BIN=/path/to/speculare-pgcdc}"
[ -x "$SPECULARE_BIN" ] || { echo "SPECULARE_BIN=$SPECULARE_BIN is not an executable" >&2; exit 1; }

. scripts/bench-common.sh
bench_prepare
bench_in_cluster "$0" "$@"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
psql -XqAt -c "CREATE TABLE IF NOT EXISTS bench_events (id bigserial PRIMARY KEY, k int, payload text, sent_us bigint NOT NULL)"

# Speculare reads a TOML file; the cluster's URL is postgres://USER@HOST:PORT/DB.
config=$(mktemp /tmp/walcast-peer-XXXXXX.toml)
[[ "$DATABASE_URL" =~ ^postgres(ql)?://([^@:/]+)@([^:/]+):([0-9]+)/([^?]+) ]] ||
  { echo "cannot read $DATABASE_URL" >&2; exit 1; }
cat > "$config" <<CONFIG
database_host = "${BASH_REMATCH[3]} port=${BASH_REMATCH[4]}"
database_dbname = "${BASH_REMATCH[5]}"
database_user = "${BASH_REMATCH[2]}"
database_password = "unused"
binding = "127.0.0.1:18282"
CONFIG

PEER_PID=""
BUSY_PIDS=()
trap 'kill $PEER_PID "${BUSY_PIDS[@]}" 2>/dev/null || true; rm -f "$config"' EXIT
for _ in $(seq 1 "${BUSY:-0}"); do
  (while :; do :; done) &
  BUSY_PIDS+=($!)
done

wait_for_slot() { # SQL condition on pg_replication_slots
  for _ in $(seq 1 300); do
    psql -XqAt -c "SELECT 1 FROM pg_replication_slots WHERE $1 AND active" | grep -q 1 && { sleep 0.5; return 0; }
    sleep 0.1
  done
  echo "no active slot ($1) after 30 s" >&2
  return 1
}

# One walcast-bench run against the proxy on PORT: one summary line.
measure() {
  local name="$1" port="$2"; shift 2
  local walsender out w0 w1
  walsender=$(psql -XqAt -c "SELECT active_pid FROM pg_replication_slots WHERE active LIMIT 1")
  w0=$(ticks "$walsender")
  if ! out=$(./target/release/walcast-bench --proxy "ws://127.0.0.1:$port" --proxy-pid "$PEER_PID" -k 1 -n 100000 "$@" 2>&1); then
    echo "$name $* | failed: $(echo "$out" | grep -m1 -E 'Error|closed' || true)"
    BENCH_FAILED=$((BENCH_FAILED + 1))
    return 0
  fi
  w1=$(ticks "$walsender")
  # The proxy's CPU as walcast-bench measured it (--proxy-pid).
  printf '%-9s %-14s | inserts %s | from COMMIT p50 / p99 %s | CPU proxy %s ms, walsender %d ms\n' \
    "$name" "${*:-unpaced}" \
    "$(echo "$out" | sed -n 's/^rows inserted *100000 in //p')" \
    "$(echo "$out" | sed -n 's/^from COMMIT p50 \/ p99 *\([^(]*\).*/\1/p' | xargs)" \
    "$(echo "$out" | sed -n 's/^proxy CPU *\([0-9]*\) ms.*/\1/p')" \
    $(( (w1 - w0) * 1000 / HZ ))
}

for round in $(seq 1 "${ROUNDS:-5}"); do
  echo "== round $round"
  "${WALCAST_PROXY_BIN:-./target/release/walcast-proxy}" --database-url "$DATABASE_URL" --listen 127.0.0.1:18181 \
    --slot "peer_$round" >/dev/null 2>/tmp/walcast-peer-proxy.log &
  PEER_PID=$!
  wait_for_slot "slot_name = 'peer_$round'"
  for _ in $(seq 1 "${UNPACED:-2}"); do measure walcast 18181; done
  measure walcast 18181 --rate 10000
  kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
  psql -XqAt -c "SELECT pg_drop_replication_slot('peer_$round')" >/dev/null

  "$SPECULARE_BIN" -c "$config" -v >/tmp/walcast-peer-speculare.log 2>&1 &
  PEER_PID=$!
  wait_for_slot "plugin = 'wal2json'"
  for _ in $(seq 1 "${UNPACED:-2}"); do measure speculare 18282; done
  measure speculare 18282 --rate 10000
  kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
  sleep 0.5
done
scenarios_done
