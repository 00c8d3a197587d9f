#!/usr/bin/env bash
# Runs inside `walcast-cluster run`: PG* variables and DATABASE_URL point at
# the private cluster. Starts walcast-proxy and a small workload.
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN="${WALCAST_LISTEN:-127.0.0.1:8080}"
psql -XqAt -v ON_ERROR_STOP=1 -f scripts/demo.sql
./target/release/walcast-proxy --database-url "$DATABASE_URL" --listen "$LISTEN" --slot demo &
proxy=$!
trap 'kill $proxy 2>/dev/null; wait $proxy 2>/dev/null; exit 0' INT TERM EXIT
echo "walcast demo: PostgreSQL at 127.0.0.1:${PGPORT} (psql -h 127.0.0.1 -p ${PGPORT} -U postgres)"
echo "walcast demo: open http://${LISTEN}/ and subscribe, e.g. '*:users' or 'insert,update:users:age.gt.40'"
echo "walcast demo: websocket streams at ws://${LISTEN}/ws?query=..., health at http://${LISTEN}/healthz"
names=(ann bob cid dee eve fay gus hal)
end=$(( $(date +%s) + ${DEMO_SECONDS:-1000000000} ))
i=0
while [ "$(date +%s)" -lt "$end" ]; do
  kill -0 "$proxy" 2>/dev/null || { echo "walcast demo: walcast-proxy exited" >&2; exit 1; }
  n=${names[$((i % ${#names[@]}))]}
  psql -XqAt -c "INSERT INTO users (name, age) VALUES ('$n', $((20 + i % 50)))" \
             -c "UPDATE users SET age = age + 1, updated_at = now() WHERE id = (SELECT max(id) FROM users)" >/dev/null
  if [ $((i % 3)) -eq 2 ]; then
    psql -XqAt -c "DELETE FROM users WHERE id = (SELECT min(id) FROM users)" >/dev/null
  fi
  i=$((i + 1))
  sleep 1
done
