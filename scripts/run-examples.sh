#!/usr/bin/env bash
# Runs the examples in examples/ against a running walcast-proxy and checks
# their results. Needs:
#   WALCAST_URL   the proxy's base URL, e.g. http://127.0.0.1:18080
#   DATABASE_URL  the proxy's database (psql connects with it)
#   WALCAST_TOKEN optional bearer token
#
# 1. the curl one-liners of examples/README.md that change nothing for good
#    (health, metrics, create a stream, snapshot pages, list, delete);
# 2. examples/python/durable_stream.py: it copies example_items through a
#    durable stream while a writer changes the table, drops its connection
#    once and resumes; its final copy must equal the table.
# The Python example runs in the tools virtualenv (scripts/tools-venv.sh).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${WALCAST_URL:?set WALCAST_URL to the proxy base URL, e.g. http://127.0.0.1:8080}"
: "${DATABASE_URL:?set DATABASE_URL to the proxy database}"
URL="${WALCAST_URL%/}"
STEPS=40          # writer transactions; each adds exactly one row
SEED_ROWS=100
export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}" NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
log() { printf '[run-examples] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
AUTH=()
[ -n "${WALCAST_TOKEN:-}" ] && AUTH=(-H "Authorization: Bearer $WALCAST_TOKEN")
curl_() { curl -fsS --max-time 30 "${AUTH[@]}" "$@"; }
psql_() { psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

work="$(mktemp -d)"
pids=(); slots=()
cleanup() {
  local p s
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for s in "${slots[@]}"; do curl -sS -o /dev/null --max-time 10 "${AUTH[@]}" -X DELETE "$URL/v1/streams/$s" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the virtualenv ------------------------------------------------------
VENV="$(./scripts/tools-venv.sh -r examples/python/requirements.txt)"

# --- the demo table --------------------------------------------------------
psql_ <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS example_items;
CREATE TABLE example_items (id int PRIMARY KEY, name text, qty int);
INSERT INTO example_items SELECT g, 'item ' || g, g FROM generate_series(1, $SEED_ROWS) g;
-- A value stored out of line (TOAST): updates that leave it alone do not
-- carry it (unchanged_toast), and the client must keep the old value.
UPDATE example_items SET name = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g) WHERE id = 50;
SQL

# --- curl one-liners (examples/README.md) ------------------------------------
for _ in $(seq 60); do curl -fsS -o /dev/null --max-time 5 "$URL/healthz" 2>/dev/null && break; sleep 0.5; done
health="$(curl_ "$URL/healthz")" || fail "$URL/healthz does not answer 200: is walcast-proxy running and streaming?"
[ "$(json 'd["status"]' <<<"$health")" = ok ] || fail "/healthz answered $health"
metrics="$(curl_ "$URL/metrics")"
grep -q "^walcast_changes_in_total " <<<"$metrics" || fail "/metrics has no walcast_changes_in_total"
created="$(curl_ -X POST "$URL/v1/streams" -H 'content-type: application/json' \
  -d '{"name":"curl_demo","tables":["public.example_items"]}')"
slot="$(json 'd["slotName"]' <<<"$created")"; slots+=("$slot")
[[ "$slot" == walcast_curl_demo* ]] || fail "POST /v1/streams answered $created"
page() {  # page '<extra JSON fields>': body to $work/page, headers to $work/headers
  curl_ -D "$work/headers" -o "$work/page" "$URL/v1/snapshot/data" -H 'content-type: application/json' \
    -d "{\"slotName\":\"$slot\",\"table\":\"public.example_items\",\"limit\":10$1}"
}
page ''
[ "$(json 'len(d)' <"$work/page")" = 10 ] || fail "the first snapshot page does not have 10 rows"
after="$(tr -d '\r' <"$work/headers" | sed -n 's/^x-walcast-after: //Ip')"
[ "$after" = "[10]" ] || fail "x-walcast-after is '$after', expected [10]"
page ",\"after\":$after"
[ "$(json 'd[0]["id"]' <"$work/page")" = 11 ] || fail "the second snapshot page does not start at id 11"
page ",\"after\":[$SEED_ROWS]"
[ "$(cat "$work/page")" = "[]" ] || fail "the page after the last row is not empty"
curl_ "$URL/v1/streams" | json "[s['slotName'] for s in d['streams']]" | grep -q "'$slot'" \
  || fail "GET /v1/streams does not list $slot"
curl_ -X DELETE "$URL/v1/streams/$slot" | json 'd["dropped"]' | grep -qx "$slot" || fail "DELETE did not drop $slot"
slots=()
curl_ "$URL/v1/streams" | json "[s['slotName'] for s in d['streams']]" | grep -q "'$slot'" \
  && fail "$slot is still listed after DELETE"
log "curl one-liners: ok"

# --- the Python durable stream example ---------------------------------------
"$VENV/bin/python" examples/python/durable_stream.py --url "$URL" --table public.example_items \
  --name example --quiet --print-state --page-size 25 --ack-every 3 --drop-connection-after 7 \
  --expect-rows $((SEED_ROWS + STEPS)) --exit-after-seconds 90 >"$work/out" 2>"$work/err" &
example=$!; pids+=("$example")
# Start writing once the stream exists, so every write reaches the stream
# (some while the snapshot is still being read).
for _ in $(seq 300); do
  grep -q 'created stream' "$work/err" && break
  kill -0 "$example" 2>/dev/null || break
  sleep 0.1
done
grep -q 'created stream' "$work/err" || { cat "$work/err" >&2; fail "the example did not create its stream"; }
slots+=("$(sed -n 's/.*created stream \([a-z0-9_]*\) .*/\1/p' "$work/err")")

# Each step is one transaction that adds exactly one row (so the example
# reaches --expect-rows with the last one), with inserts, updates (one that
# changes a key, one that leaves the TOASTed value alone), deletes, a
# multi-row update every 10th step and a rolled-back transaction every 5th.
for k in $(seq "$STEPS"); do
  echo "BEGIN;"
  echo "INSERT INTO example_items VALUES ($((1000 + k)), 'new $k', $k);"
  echo "UPDATE example_items SET qty = qty + 1, name = name || '+' WHERE id = $((k + 1));"
  echo "UPDATE example_items SET qty = qty + 1 WHERE id = 50;"
  echo "DELETE FROM example_items WHERE id = $k;"
  echo "INSERT INTO example_items VALUES ($((2000 + k)), 'extra $k', 0);"
  [ "$k" -gt 1 ] && echo "UPDATE example_items SET id = id + 10000 WHERE id = $((2000 + k - 1));"
  [ $((k % 10)) -eq 0 ] && echo "UPDATE example_items SET qty = qty * 2 WHERE id % 10 = 0;"
  echo "COMMIT;"
  [ $((k % 5)) -eq 0 ] && echo "BEGIN; INSERT INTO example_items VALUES (5000, 'rolled back', 0); ROLLBACK;"
  echo "SELECT pg_sleep(0.1);"
done >"$work/writer.sql"
psql_ -o /dev/null -f "$work/writer.sql" &
writer=$!; pids+=("$writer")
wait "$writer" || fail "the writer failed"
status=0; wait "$example" || status=$?
pids=()
if [ "$status" -ne 0 ]; then
  cat "$work/err" >&2; tail -n 2 "$work/out" >&2
  fail "durable_stream.py exited with $status"
fi
result="$(sed -n 's/^RESULT //p' "$work/out")"
[ -n "$result" ] || fail "durable_stream.py printed no RESULT line"
sed -n 's/^STATE //p' "$work/out" >"$work/state.json"
psql_ -At -c "SELECT json_agg(row_to_json(t) ORDER BY id) FROM example_items t" >"$work/table.json"
python3 - "$work/state.json" "$work/table.json" "$result" "$STEPS" <<'PY' || { log "durable_stream.py's log:"; cat "$work/err" >&2; fail "its results are wrong (FAIL lines above)"; }
import json, sys
state = json.load(open(sys.argv[1]))
table = json.loads(open(sys.argv[2]).read().strip() or "[]")
result, steps = json.loads(sys.argv[3]), int(sys.argv[4])
problems = []
if state != table:
    have = {r["id"]: r for r in state}
    want = {r["id"]: r for r in table}
    diff = sorted(i for i in have.keys() | want.keys() if have.get(i) != want.get(i))
    problems.append(f"the example's copy differs from the table for ids {diff[:10]}"
                    f" (copy {len(state)} rows, table {len(table)} rows)")
if result["rows"] != len(table):
    problems.append(f"RESULT rows {result['rows']} != {len(table)}")
if result["transactions"] < steps:
    problems.append(f"RESULT transactions {result['transactions']} < {steps}")
if result["resumes"] < 1:
    problems.append("the example never resumed after dropping its connection")
if not result["last_ack"]:
    problems.append("no ACK was confirmed")
for p in problems:
    print(f"[run-examples] FAIL: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
curl_ -X DELETE "$URL/v1/streams/${slots[0]}" >/dev/null || fail "could not delete ${slots[0]}"
slots=()
log "durable_stream.py: ok $result"
