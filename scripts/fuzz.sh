#!/usr/bin/env bash
# Fuzz walcast's parsers, the hub and the WASM filter host with cargo-fuzz
# (libFuzzer, AddressSanitizer, the nightly toolchain; ./scripts/setup.sh
# installs them).
#
#   ./scripts/fuzz.sh TARGET SECONDS   one target (query, change, options,
#                                      json, frames; hub, filter)
#   ./scripts/fuzz.sh parsers SECONDS  the parsers' targets, one after the
#                                      other (what ./scripts/test.sh runs)
#   ./scripts/fuzz.sh all SECONDS      every target
#
# The parsers' targets build on walcast-core alone; `hub` and `filter` need
# the proxy (wasmtime, tokio: a build of about ten minutes with the
# sanitizer), so they are for long runs; the proxy's tests run their checks
# on seeded inputs (proxy/src/fuzzing.rs).
#
# Each run starts from the committed seeds (fuzz/corpus/TARGET; `hub` uses
# `query`'s) plus what earlier runs on this machine found
# (target/fuzz/corpus/TARGET); new inputs go to the latter, never into the
# repository. A crash, a hang (10 s) or memory past 2 GB fails the run; the
# input is saved under target/fuzz/artifacts/TARGET and printed, to become
# a unit test. Prints executions and coverage per target (docs/testing.md
# has long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PARSERS=(query change options json frames)
HOST=(hub filter)

usage() {
  echo "usage: $0 TARGET|parsers|all SECONDS  (targets: ${PARSERS[*]} ${HOST[*]})" >&2
  exit 2
}
[ $# -eq 2 ] || usage
which="$1"
seconds="$2"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
case "$which" in
  parsers) targets=("${PARSERS[@]}") ;;
  all) targets=("${PARSERS[@]}" "${HOST[@]}") ;;
  *)
    found=0
    for t in "${PARSERS[@]}" "${HOST[@]}"; do [ "$t" = "$which" ] && found=1; done
    [ "$found" = 1 ] || usage
    targets=("$which")
    ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "[fuzz] the nightly toolchain is missing: run ./scripts/setup.sh" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] cargo-fuzz is missing: run ./scripts/setup.sh" >&2
  exit 1
fi

work="$PWD/target/fuzz"
flags=(-O --debug-assertions)
for t in "${targets[@]}"; do
  for h in "${HOST[@]}"; do
    if [ "$t" = "$h" ]; then
      flags+=(--features host)
      break 2
    fi
  done
done
echo "[fuzz] building the targets (nightly, AddressSanitizer): ${flags[*]}" >&2
(cd fuzz && cargo +nightly fuzz build "${flags[@]}")

summary=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/logs"
  seeds="corpus/$t"
  if [ "$t" = hub ]; then seeds=corpus/query; fi
  log="$work/logs/$t.log"
  echo "[fuzz] $t for ${seconds} s" >&2
  status=0
  (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$t" "$work/corpus/$t" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t/") >"$log" 2>&1 || status=$?
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)"
  cov="$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1 || true)"
  corpus="$(find "$work/corpus/$t" -type f | wc -l)"
  line="$t: ${execs:-?} executions in ${seconds} s, ${cov:-cov: ?}, ${corpus} inputs in the corpus"
  if [ "$status" -ne 0 ]; then
    failed=1
    line="$line: FAILED (exit $status)"
    echo "[fuzz] $t failed; the end of its log ($log):" >&2
    tail -n 60 "$log" >&2
    for a in "$work/artifacts/$t"/*; do
      [ -f "$a" ] || continue
      echo "[fuzz] input $a (hex, first 512 bytes):" >&2
      head -c 512 "$a" | od -An -tx1 >&2
    done
  fi
  summary+=("$line")
done
printf '[fuzz] %s\n' "${summary[@]}" >&2
exit "$failed"
