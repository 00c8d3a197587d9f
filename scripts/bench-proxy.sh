#!/usr/bin/env bash
# Proxy benchmark: a private cluster, walcast-proxy (release) and
# walcast-bench in the scenarios of docs/benchmarks.md.
#
#   ./scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${WALCAST_BENCH_INSIDE:-}" ]; then
  ./scripts/setup.sh
  ./scripts/install-extension.sh
  cargo build --release -q -p walcast-cluster -p walcast-proxy -p walcast-bench
  export WALCAST_BENCH_INSIDE=1
  dir_args=()
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then dir_args=(--dir "/dev/shm/walcast-proxy-bench-$$"); fi
  exec ./target/release/walcast-cluster run "${dir_args[@]}" -- "$0" "$@"
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
BENCH=./target/release/walcast-bench
psql -XqAt -c "CREATE TABLE IF NOT EXISTS bench_events (id bigserial PRIMARY KEY, k int, payload text, sent_us bigint NOT NULL)"
./target/release/walcast-proxy --database-url "$DATABASE_URL" --listen 127.0.0.1:18181 --slot bench \
  --max-clients 20000 >/dev/null 2>/tmp/walcast-bench-proxy.log &
proxy=$!
trap 'kill $proxy 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if psql -XqAt -c "SELECT 1 FROM pg_stat_replication WHERE application_name = 'walcast-proxy'" | grep -q 1; then break; fi
  sleep 0.1
done
P=(--proxy ws://127.0.0.1:18181 --proxy-pid "$proxy")

echo "== K=1, N=100000, unpaced"
"$BENCH" "${P[@]}" -k 1 -n 100000 || echo "(scenario failed)"
echo "== K=1, N=100000, paced at 10000 rows/s"
"$BENCH" "${P[@]}" -k 1 -n 100000 --rate 10000 || echo "(scenario failed)"
echo "== K=100, N=200000, unfiltered, paced at 20000 rows/s (2M events/s offered)"
"$BENCH" "${P[@]}" -k 100 -n 200000 --rate 20000 --sample 100 || echo "(scenario failed)"
echo "== K=1000, N=100000, each client filtered to 1% (k.eq.{i mod 100}), paced at 10000 rows/s"
"$BENCH" "${P[@]}" -k 1000 -n 100000 --rate 10000 --query 'insert:bench_events:k.eq.{m}' --expect-per-client 1000 --sample 10 || echo "(scenario failed)"
echo "== K=1000 idle clients"
"$BENCH" "${P[@]}" -k 1000 -n 0
