#!/usr/bin/env bash
# Runs inside `walcast-cluster run`: PG* variables point at the private cluster.
set -euo pipefail
psql -XqAt -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, name text NOT NULL, age int, updated_at timestamptz DEFAULT now());
SELECT 'slot ' || slot_name FROM pg_create_logical_replication_slot('demo', 'walcast');
SQL
echo "walcast demo: PostgreSQL at 127.0.0.1:${PGPORT} (psql -h 127.0.0.1 -p ${PGPORT} -U postgres)"
echo "walcast demo: streaming changes of slot 'demo' with pg_recvlogical -P walcast; Ctrl-C stops"
"${PG_BINDIR}/pg_recvlogical" -d "$PGDATABASE" -S demo --start -f - -F 1 &
recv=$!
trap 'kill $recv 2>/dev/null; wait $recv 2>/dev/null; exit 0' INT TERM EXIT
names=(ann bob cid dee eve fay gus hal)
end=$(( $(date +%s) + ${DEMO_SECONDS:-1000000000} ))
i=0
while [ "$(date +%s)" -lt "$end" ]; do
  n=${names[$((i % ${#names[@]}))]}
  psql -XqAt -c "INSERT INTO users (name, age) VALUES ('$n', $((20 + i % 50)))" \
             -c "UPDATE users SET age = age + 1, updated_at = now() WHERE id = (SELECT max(id) FROM users)" >/dev/null
  if [ $((i % 3)) -eq 2 ]; then
    psql -XqAt -c "DELETE FROM users WHERE id = (SELECT min(id) FROM users)" >/dev/null
  fi
  i=$((i + 1))
  sleep 1
done
