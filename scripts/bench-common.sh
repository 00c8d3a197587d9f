# Shared by the bench-*.sh scripts (sourced, not run).
#
# bench_prepare: outside a cluster, sets the machine up, installs the
#   extension and builds the release binaries the benchmarks run.
# bench_in_cluster SCRIPT ARGS...: outside a cluster, re-runs SCRIPT inside a
#   private one (on tmpfs when /dev/shm is writable) and does not return.
# bench_proxy PORT ARGS...: starts the release walcast-proxy (or the binary
#   named by WALCAST_PROXY_BIN, to compare builds) on PORT with ARGS, waits
#   until it streams, and sets PROXY_PID and P (the walcast-bench arguments
#   naming it); the proxy is stopped on exit.
# scenario ARGS...: runs walcast-bench with P and ARGS; a failure is reported
#   and counted, and the other scenarios still run.
# scenarios_done: exits with status 1 when a scenario failed.
# ticks PID: the CPU time (user + system) the process used, in clock ticks
#   (HZ per second).

HZ="$(getconf CLK_TCK)"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

bench_prepare() {
  [ -n "${WALCAST_BENCH_INSIDE:-}" ] && return 0
  ./scripts/setup.sh
  ./scripts/install-extension.sh
  cargo build --release -q -p walcast-cluster -p walcast-proxy -p walcast-bench --bins
}

bench_in_cluster() {
  [ -n "${WALCAST_BENCH_INSIDE:-}" ] && return 0
  export WALCAST_BENCH_INSIDE=1
  local dir_args=()
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then dir_args=(--dir "/dev/shm/walcast-bench-$$"); fi
  exec ./target/release/walcast-cluster run "${dir_args[@]}" -- "$@"
}

bench_proxy() {
  local port="$1"; shift
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  psql -XqAt -c "CREATE TABLE IF NOT EXISTS bench_events (id bigserial PRIMARY KEY, k int, payload text, sent_us bigint NOT NULL)"
  "${WALCAST_PROXY_BIN:-./target/release/walcast-proxy}" --database-url "$DATABASE_URL" --listen "127.0.0.1:${port}" --slot bench \
    --max-clients 20000 "$@" >/dev/null 2>"/tmp/walcast-bench-proxy-${port}.log" &
  PROXY_PID=$!
  trap 'kill $PROXY_PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    if psql -XqAt -c "SELECT 1 FROM pg_stat_replication WHERE application_name = 'walcast-proxy'" | grep -q 1; then break; fi
    sleep 0.1
  done
  P=(--proxy "ws://127.0.0.1:${port}" --proxy-pid "$PROXY_PID")
}

BENCH_FAILED=0
scenario() {
  ./target/release/walcast-bench "${P[@]}" "$@" || { echo "(scenario failed)"; BENCH_FAILED=$((BENCH_FAILED + 1)); }
}

scenarios_done() {
  if ((BENCH_FAILED)); then
    echo "[bench] ${BENCH_FAILED} scenario(s) failed" >&2
    exit 1
  fi
}
