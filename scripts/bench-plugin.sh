#!/usr/bin/env bash
# Decoding benchmark: the same WAL decoded by walcast, wal2json (formats 1 and
# 2), test_decoding and pgoutput, each through pg_recvlogical to /dev/null
# (over the cluster's Unix socket).
#
#   ./scripts/bench-plugin.sh [MAJOR]    # sets up, installs walcast, starts a private cluster
#
# MAJOR: the PostgreSQL major (15, the default, 16, 17 or 18). wal2json is
# measured on 15 (Debian's postgresql-15-wal2json; missing, the script fails).
#
# Environment: BENCH_INSERTS (1000000), BENCH_UPDATES (200000), BENCH_DELETES
# (200000), BENCH_TXN_ROWS (1000 rows per transaction), BENCH_REPEAT (3; the
# median is reported).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${WALCAST_BENCH_INSIDE:-}" ]; then
  ./scripts/setup.sh
  PG_CONFIG="$(./scripts/install-extension.sh "${1:-${PG_MAJOR:-15}}" | tail -n 1)"
  export PG_CONFIG
  cargo build --release -q -p walcast-cluster
  export WALCAST_BENCH_INSIDE=1
  # WAL on tmpfs when there is one, so the numbers measure decoding, not the disk.
  dir_args=()
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then dir_args=(--dir "/dev/shm/walcast-bench-$$"); fi
  exec ./target/release/walcast-cluster run "${dir_args[@]}" -- "$0" "$@"
fi

INSERTS="${BENCH_INSERTS:-1000000}"
UPDATES="${BENCH_UPDATES:-200000}"
DELETES="${BENCH_DELETES:-200000}"
TXN="${BENCH_TXN_ROWS:-1000}"
REPEAT="${BENCH_REPEAT:-3}"
RECV="${PG_BINDIR}/pg_recvlogical"
q() { psql -XqAt -v ON_ERROR_STOP=1 "$@"; }
TCK=$(getconf CLK_TCK)
# CPU seconds used so far by the server: the postmaster, its children, and
# the children it has reaped (finished walsenders). Steadier than wall time
# on a shared machine.
server_cpu() {
  local pm
  pm=$(head -1 "$PGDATA/postmaster.pid")
  for p in $pm $(ps --ppid "$pm" -o pid=); do
    awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat" 2>/dev/null || true
  done | awk -v t="$TCK" '{ s += $1 } END { printf "%.2f", s / t }'
}

declare -A OPTS=(
  [walcast]=""
  [wal2json_v1]="-o format-version=1 -o include-xids=1 -o include-timestamp=1 -o include-lsn=1"
  [wal2json_v2]="-o format-version=2 -o include-xids=1 -o include-timestamp=1 -o include-lsn=1"
  [test_decoding]="-o include-xids=1 -o include-timestamp=1"
  [pgoutput]="-o proto_version=1 -o publication_names=bench_pub"
)
declare -A PLUGIN=([walcast]=walcast [wal2json_v1]=wal2json [wal2json_v2]=wal2json [test_decoding]=test_decoding [pgoutput]=pgoutput)
ORDER=(walcast wal2json_v1 wal2json_v2 test_decoding pgoutput)
# wal2json: on 15, setup.sh installs postgresql-15-wal2json and its absence is
# an error; there is no wal2json build for the 16-18 binaries.
major="$("${PG_CONFIG:-pg_config}" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
if [ "$major" != 15 ]; then
  echo "[bench] PostgreSQL ${major}: no wal2json build for it, measured without wal2json" >&2
  ORDER=(walcast test_decoding pgoutput)
elif [ ! -f "$("${PG_CONFIG:-pg_config}" --pkglibdir)/wal2json.so" ]; then
  echo "[bench] wal2json is missing for PostgreSQL 15: run ./scripts/setup.sh" >&2
  exit 1
fi
echo "[bench] $(q -c "SELECT version()")" >&2

q <<'SQL'
CREATE TABLE bench (
  id bigint PRIMARY KEY, name text, email varchar(80), age int, score double precision,
  balance numeric(12,2), active boolean, created_at timestamptz, tags text[], payload jsonb
) WITH (autovacuum_enabled = false);
CREATE PUBLICATION bench_pub FOR TABLE bench;
SQL
for r in $(seq 1 "$REPEAT"); do
  for k in "${ORDER[@]}"; do
    q -c "SELECT 1 FROM pg_create_logical_replication_slot('b_${k}_${r}', '${PLUGIN[$k]}')" >/dev/null
  done
done

echo "[bench] generating WAL: ${INSERTS} inserts, ${UPDATES} updates, ${DELETES} deletes in ${TXN}-row transactions" >&2
q <<SQL
CREATE PROCEDURE load(n bigint, step bigint) LANGUAGE plpgsql AS \$\$
BEGIN
  FOR lo IN 1..n BY step LOOP
    INSERT INTO bench
    SELECT g, 'user ' || g, 'user' || g || '@example.com', (g % 90)::int, g / 3.0, (g % 100000) / 100.0,
           g % 2 = 0, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 second',
           ARRAY['a' || (g % 10), 'b'], jsonb_build_object('k', g, 's', 'v' || g)
      FROM generate_series(lo, least(lo + step - 1, n)) AS g;
    COMMIT;
  END LOOP;
END \$\$;
CREATE PROCEDURE touch(n bigint, step bigint) LANGUAGE plpgsql AS \$\$
BEGIN
  FOR lo IN 1..n BY step LOOP
    UPDATE bench SET age = age + 1, score = score * 2, active = NOT active WHERE id BETWEEN lo AND least(lo + step - 1, n);
    COMMIT;
  END LOOP;
END \$\$;
CREATE PROCEDURE remove(n bigint, step bigint) LANGUAGE plpgsql AS \$\$
BEGIN
  FOR lo IN 1..n BY step LOOP
    DELETE FROM bench WHERE id BETWEEN lo AND least(lo + step - 1, n);
    COMMIT;
  END LOOP;
END \$\$;
CALL load(${INSERTS}, ${TXN});
CALL touch(${UPDATES}, ${TXN});
CALL remove(${DELETES}, ${TXN});
SQL
END_LSN="$(q -c "SELECT pg_current_wal_lsn()")"
q -c "CHECKPOINT"
ROWS=$((INSERTS + UPDATES + DELETES))
echo "[bench] WAL end ${END_LSN}; decoding ${ROWS} row changes per plugin, ${REPEAT} run(s) each" >&2

declare -A TIMES CPUS
# Rounds in rotating order, so no plugin always runs first or last.
for r in $(seq 1 "$REPEAT"); do
  n=${#ORDER[@]}
  for i in $(seq 0 $((n - 1))); do
    k=${ORDER[$(((i + r - 1) % n))]}
    cpu0=$(server_cpu)
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$RECV" -h "$WALCAST_PG_SOCKET_DIR" -d "$PGDATABASE" -S "b_${k}_${r}" --start --no-loop -f /dev/null -F 0 --endpos="$END_LSN" ${OPTS[$k]}
    end=$(date +%s.%N)
    sleep 0.2 # let the postmaster reap the walsender
    cpu1=$(server_cpu)
    TIMES[$k]="${TIMES[$k]:-} $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')"
    CPUS[$k]="${CPUS[$k]:-} $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')"
  done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A MEDIAN CPU
for k in "${ORDER[@]}"; do
  # shellcheck disable=SC2086
  MEDIAN[$k]=$(median ${TIMES[$k]})
  # shellcheck disable=SC2086
  CPU[$k]=$(median ${CPUS[$k]})
  echo "[bench] ${k}: wall${TIMES[$k]} s; server CPU${CPUS[$k]} s" >&2
done

echo
echo "| plugin | options | wall time (s, median of ${REPEAT}) | row changes/s | vs wal2json v2 | vs pgoutput | server CPU (s, median) | CPU vs pgoutput |"
echo "|---|---|---|---|---|---|---|---|"
for k in "${ORDER[@]}"; do
  t=${MEDIAN[$k]}
  awk -v k="$k" -v o="${OPTS[$k]:-(defaults: lsn, xid, ts)}" -v t="$t" -v rows="$ROWS" \
      -v w="${MEDIAN[wal2json_v2]:-0}" -v p="${MEDIAN[pgoutput]}" -v c="${CPU[$k]}" -v pc="${CPU[pgoutput]}" \
      'BEGIN { gsub(/-o /, "", o); vs = (w > 0) ? sprintf("%.2fx faster", w / t) : "-"; printf "| %s | %s | %.2f | %.0f | %s | %.2fx the time | %.2f | %.2fx |\n", k, o, t, rows / t, vs, t / p, c, c / pc }'
done
