#!/usr/bin/env bash
# Runs inside `walcast-cluster run`: PG* variables and DATABASE_URL point at
# the private cluster. Starts walcast-proxy and a small workload.
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN="${WALCAST_LISTEN:-127.0.0.1:8080}"
./target/release/walcast-proxy --database-url "$DATABASE_URL" --listen "$LISTEN" --slot demo &
proxy=$!
echo "walcast demo: PostgreSQL at 127.0.0.1:${PGPORT} (psql -h 127.0.0.1 -p ${PGPORT} -U postgres)"
echo "walcast demo: open http://${LISTEN}/ and subscribe, e.g. '*:users' or 'insert,update:users:age.gt.40'"
echo "walcast demo: websocket streams at ws://${LISTEN}/ws?query=..., health at http://${LISTEN}/healthz"
# The same workload as the compose demo: creates the users table and changes
# a row every second (until DEMO_SECONDS pass, when set).
DEMO_SQL=scripts/demo.sql ./docker/demo/workload.sh &
workload=$!
cleanup() {
  kill "$proxy" "$workload" 2>/dev/null || true
  wait "$proxy" "$workload" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM
wait -n "$proxy" "$workload"
if ! kill -0 "$proxy" 2>/dev/null; then
  echo "walcast demo: walcast-proxy exited" >&2
  exit 1
fi
