#!/usr/bin/env bash
# Fuzz walcast's parsers and the WASM filter host with cargo-fuzz (libFuzzer,
# AddressSanitizer, the nightly toolchain; ./scripts/setup.sh installs them).
#
#   ./scripts/fuzz.sh TARGET SECONDS   one target (query, change, options,
#                                      json, frames, filter)
#   ./scripts/fuzz.sh all SECONDS      every target, one after the other
#
# Each run starts from the committed seeds (fuzz/corpus/TARGET) plus what
# earlier runs on this machine found (target/fuzz/corpus/TARGET); new inputs
# go to the latter, never into the repository. A crash, a hang (10 s) or
# memory past 2 GB fails the run; the input is saved under
# target/fuzz/artifacts/TARGET and printed, to become a unit test.
# Prints executions and coverage per target (docs/testing.md has long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(query change options json frames filter)

usage() {
  echo "usage: $0 TARGET|all SECONDS  (targets: ${TARGETS[*]})" >&2
  exit 2
}
[ $# -eq 2 ] || usage
which="$1"
seconds="$2"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
if [ "$which" = all ]; then
  targets=("${TARGETS[@]}")
else
  found=0
  for t in "${TARGETS[@]}"; do [ "$t" = "$which" ] && found=1; done
  [ "$found" = 1 ] || usage
  targets=("$which")
fi

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
echo "[fuzz] building the targets (nightly, AddressSanitizer)" >&2
(cd fuzz && cargo +nightly fuzz build "${flags[@]}")

summary=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/logs"
  log="$work/logs/$t.log"
  echo "[fuzz] $t for ${seconds} s" >&2
  status=0
  (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$t" "$work/corpus/$t" "corpus/$t" -- \
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
