#!/usr/bin/env bash
# Scale-out benchmark: the single-process proxy against one relay + two
# edges + a private nats-server, same cluster, same load, runs interleaved.
# For each run: delivered events/s, commit-to-client p50/p99 (live
# scenarios), and CPU per delivered event of every process (proxy; relay,
# edges, nats-server; the slot's walsender; "pg": every PostgreSQL process,
# walsenders that came and went included).
#
#   ./scripts/bench-scaleout.sh
#
# Scenarios: k100 (100 live clients, unpaced), k1000 (1000 live clients,
# each filtered to 1%, paced at 10000 rows/s), durable20 (20 durable
# streams, each read and ACKed by a consumer: 20 slots against 20 JetStream
# consumers), relay (the relay alone catching up on 100,000 rows written
# while it was stopped, against walcast-jetstream publishing and reading as
# many messages of the same size: JetStream's own rate on this machine).
# RUNS (default 3) repeats each in each mode; SCENARIOS picks them (default
# "k100 k1000 durable20 relay").
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/bench-common.sh
bench_prepare
bench_in_cluster "$0" "$@"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
psql -XqAt -c "CREATE TABLE IF NOT EXISTS bench_events (id bigserial PRIMARY KEY, k int, payload text, sent_us bigint NOT NULL)"
BIN="${WALCAST_PROXY_BIN:-./target/release/walcast-proxy}"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "${NATS_DIR:-/nonexistent}"; }
trap cleanup EXIT

# A private nats-server with JetStream (as the tests start it), with a
# fresh store for every scaled run.
NATS_DIR="$(mktemp -d /tmp/walcast-bench-nats.XXXXXX)"
NATS_PORT=14222
nats_up() {
  rm -rf "$NATS_DIR/store"
  printf 'listen: 127.0.0.1:%s\njetstream {\n  store_dir: "%s/store"\n  max_file_store: 64GB\n}\n' "$NATS_PORT" "$NATS_DIR" >"$NATS_DIR/nats.conf"
  nats-server -c "$NATS_DIR/nats.conf" >>"$NATS_DIR/server.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/${NATS_PORT}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "[bench] nats-server did not start: $NATS_DIR/server.log" >&2
  return 1
}
# Each run starts from a new slot, so no process decodes what an earlier
# run left behind.
drop_slot() {
  for _ in $(seq 1 100); do
    psql -XqAt -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$1' AND NOT active" >/dev/null 2>&1 || true
    if [ -z "$(psql -XqAt -c "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$1'")" ]; then
      # Its record too: a slot recorded in walcast.streams and missing is a lost one.
      psql -XqAt -c "DELETE FROM walcast.streams WHERE slot_name = '$1'" >/dev/null 2>&1 || true
      return 0
    fi
    sleep 0.1
  done
}

wait_healthy() {
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "[bench] nothing healthy on port $1" >&2
  return 1
}
walsender() { psql -XqAt -c "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$1'"; }
# Every PostgreSQL process: the postmaster with its reaped children, and its live children.
PG_POSTMASTER="$(head -n 1 "$(psql -XqAt -c 'SHOW data_directory')/postmaster.pid")"
pg_ticks() {
  local t c
  t="$(awk '{print $14 + $15 + $16 + $17}' "/proc/${PG_POSTMASTER}/stat")"
  for c in $(ps -o pid= --ppid "$PG_POSTMASTER"); do t=$((t + $(ticks "$c"))); done
  echo "$t"
}
ticks_of() { if [ "$1" = "pg=" ]; then pg_ticks; else ticks "${1#*=}"; fi; }

scenario_args() {
  case "$1" in
    k100) echo "-k 100 -n 100000 --sample 100" ;;
    k1000) echo "-k 1000 -n 100000 --rate 10000 --query insert:bench_events:k.eq.{m} --expect-per-client 1000 --sample 10" ;;
    durable20) echo "--streams 20 -n 50000" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}

# run LABEL SCENARIO PROXY_URLS NAME=PID...: one walcast-bench run with
# the CPU each named process used during it.
run() {
  local label="$1" name="$2" urls="$3"; shift 3
  local -A before=()
  local np tool=./target/release/walcast-bench
  if [ "$name" = durable20 ]; then tool=./target/release/walcast-durable; urls="${urls//ws:/http:}"; fi
  for np in "$@"; do before[$np]="$(ticks_of "$np")"; done
  local out
  # shellcheck disable=SC2046
  if ! out="$("$tool" --proxy "$urls" $(scenario_args "$name") 2>&1)"; then
    echo "$out"; echo "(scenario failed)"; BENCH_FAILED=$((BENCH_FAILED + 1)); return 0
  fi
  echo "$out" | grep -E "delivered/s|events delivered|from COMMIT"
  local events
  events="$(echo "$out" | awk '/^events delivered/ {print $3}')"
  local line="cpu per delivered event (us):"
  for np in "$@"; do
    local used=$(( $(ticks_of "$np") - ${before[$np]} ))
    line+=" ${np%%=*} $(awk -v t="$used" -v hz="$HZ" -v e="$events" 'BEGIN { printf "%.3f", t * 1e6 / hz / (e > 0 ? e : 1) }')"
  done
  echo "$line"
  echo "[$label/$name]"
}

single_up() {
  "$BIN" --database-url "$DATABASE_URL" --listen 127.0.0.1:18181 --slot bench_single --max-clients 20000 \
    >/dev/null 2>/tmp/walcast-bench-single.log &
  SINGLE=$!; PIDS+=("$SINGLE")
  wait_healthy 18181
}
single_down() { kill "$SINGLE"; wait "$SINGLE" 2>/dev/null || true; drop_slot bench_single; }

# The relay on 18184 (slot bench_relay), its pid in RELAY.
relay_start() {
  "$BIN" relay --database-url "$DATABASE_URL" --listen 127.0.0.1:18184 --slot bench_relay \
    --nats-url "nats://127.0.0.1:${NATS_PORT}" >/dev/null 2>>/tmp/walcast-bench-relay.log &
  RELAY=$!; PIDS+=("$RELAY")
}

scaled_up() {
  nats_up
  relay_start
  wait_healthy 18184
  for port in 18182 18183; do
    "$BIN" --database-url "$DATABASE_URL" --listen "127.0.0.1:${port}" --nats-url "nats://127.0.0.1:${NATS_PORT}" \
      --max-clients 20000 >/dev/null 2>"/tmp/walcast-bench-edge-${port}.log" &
    PIDS+=("$!")
    eval "EDGE_${port}=$!"
    wait_healthy "$port"
  done
}
scaled_down() {
  kill "$RELAY" "$EDGE_18182" "$EDGE_18183" "$NATS_PID"
  wait "$RELAY" "$EDGE_18182" "$EDGE_18183" "$NATS_PID" 2>/dev/null || true
  drop_slot bench_relay
}

metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

# The relay alone: how fast it publishes a backlog of 101 transactions of
# 1000 rows written while it was stopped; then JetStream's own rate for as
# many messages of about the same size (walcast-jetstream).
relay_rate() {
  nats_up
  relay_start
  wait_healthy 18184
  kill "$RELAY"; wait "$RELAY" 2>/dev/null || true
  for _ in $(seq 1 101); do
    echo "INSERT INTO bench_events (k, payload, sent_us) SELECT g % 100, 't1:' || g, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint FROM generate_series(1, 1000) g;"
  done | psql -Xq >/dev/null
  local want=$((101 * 1002)) nats_before t0 t1
  nats_before="$(ticks "$NATS_PID")"
  t0="$(date +%s.%N)"
  relay_start
  until [ "$(metric 18184 walcast_nats_published_total 2>/dev/null || echo 0)" -ge "$want" ] 2>/dev/null; do sleep 0.02; done
  t1="$(date +%s.%N)"
  local relay_used nats_used
  relay_used="$(ticks "$RELAY")"
  nats_used=$(( $(ticks "$NATS_PID") - nats_before ))
  awk -v n="$want" -v a="$t0" -v b="$t1" -v r="$relay_used" -v s="$nats_used" -v hz="$HZ" 'BEGIN {
    printf "relay published/s       %.0f (%d messages: 101 transactions of 1000 rows, with B and C; from its start)\n", n / (b - a), n
    printf "cpu per message (us):   relay %.3f nats %.3f\n", r * 1e6 / hz / n, s * 1e6 / hz / n }'
  kill "$RELAY" "$NATS_PID"; wait "$RELAY" "$NATS_PID" 2>/dev/null || true
  drop_slot bench_relay
  nats_up
  ./target/release/walcast-jetstream --nats-url "nats://127.0.0.1:${NATS_PORT}" -n "$want" --size 220 \
    || BENCH_FAILED=$((BENCH_FAILED + 1))
  kill "$NATS_PID"; wait "$NATS_PID" 2>/dev/null || true
}

for run_no in $(seq 1 "${RUNS:-3}"); do
  for name in ${SCENARIOS:-k100 k1000 durable20 relay}; do
    if [ "$name" = relay ]; then
      echo "== relay catching up, and JetStream alone (run $run_no)"
      relay_rate
      continue
    fi
    echo "== $name, single process (run $run_no)"
    single_up
    run single "$name" ws://127.0.0.1:18181 proxy="$SINGLE" walsender="$(walsender bench_single)" pg=
    single_down
    echo "== $name, relay + 2 edges + nats-server (run $run_no)"
    scaled_up
    run scaled "$name" ws://127.0.0.1:18182,ws://127.0.0.1:18183 \
      relay="$RELAY" edge1="$EDGE_18182" edge2="$EDGE_18183" nats="$NATS_PID" walsender="$(walsender bench_relay)" pg=
    scaled_down
  done
done
scenarios_done
