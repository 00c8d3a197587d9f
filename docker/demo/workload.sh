#!/usr/bin/env bash
# The demo workload of scripts/demo-stream.sh for docker-compose.yml: creates
# the users table (scripts/demo.sql) and inserts, updates and deletes a row
# every second. PG* variables name the database; DEMO_SECONDS=N stops after N
# seconds.
set -euo pipefail
until pg_isready -q; do sleep 1; done
psql -XqAt -v ON_ERROR_STOP=1 -f "${DEMO_SQL:-/walcast/demo.sql}"
echo "walcast demo: writing to table users every second; subscribe with e.g. '*:users'"
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
