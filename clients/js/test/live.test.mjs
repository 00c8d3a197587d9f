// The client against a real walcast-proxy and PostgreSQL cluster, started by
// proxy/tests/e2e/js_client.rs, which passes:
//   WALCAST_URL        the proxy's base URL (ws://127.0.0.1:port)
//   WALCAST_PSQL       psql, and WALCAST_CONNINFO for the database
//   WALCAST_JWT_SECRET the proxy's --jwt-secret
//   WALCAST_FILTER_WASM the threshold example filter (scripts/build-filters.sh)
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { subscribe, isChange, PositionGoneError, RefusedError } from "../dist/index.js";

const URL = need("WALCAST_URL");
const PSQL = need("WALCAST_PSQL");
const CONNINFO = need("WALCAST_CONNINFO");
const SECRET = need("WALCAST_JWT_SECRET");
const FILTER_WASM = need("WALCAST_FILTER_WASM");

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through cargo test -p walcast-proxy --test e2e js_client::`);
  return v;
}

function sql(text) {
  return execFileSync(PSQL, ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", CONNINFO, "-c", text], {
    encoding: "utf8",
  }).trim();
}

/** Runs SQL in the background (a burst of writes while the test reads). */
function sqlInBackground(text) {
  const child = spawn(PSQL, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", CONNINFO, "-c", text], { stdio: "inherit" });
  return new Promise((resolve, reject) =>
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`psql exited ${code}`)))),
  );
}

function b64url(v) {
  return Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
}

/** An HS256 JWT for the proxy's secret, valid `seconds` from now. */
function jwt(seconds, claim = {}) {
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url({ sub: "tester", exp: Math.floor(Date.now() / 1000) + seconds, walcast: claim });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Reads `n` changes from a subscription (failing after `ms`). */
async function take(sub, n, ms = 20_000) {
  const out = [];
  const timer = setTimeout(() => sub.close(), ms);
  for await (const frame of sub) {
    if (isChange(frame)) out.push(frame);
    if (out.length >= n) break;
  }
  clearTimeout(timer);
  assert.equal(out.length, n, `got ${out.length} of ${n} changes within ${ms} ms`);
  return out;
}

/** Waits until the subscription's socket is open and subscribed. */
function opened(sub) {
  return new Promise((resolve) => {
    const off = sub.on("open", () => {
      off();
      // The subscription frame is answered before the next write commits.
      setTimeout(resolve, 300);
    });
  });
}

const token = () => jwt(300);

test("a query selects its changes, typed, in commit order", async () => {
  sql("CREATE TABLE q_items (id int PRIMARY KEY, kind text, payload text)");
  const sub = subscribe(URL, "insert,update:q_items:kind.eq.keep", { token });
  await opened(sub);
  sql(`INSERT INTO q_items SELECT g, CASE WHEN g % 2 = 0 THEN 'keep' ELSE 'drop' END, 'p' FROM generate_series(1, 20) g`);
  sql("UPDATE q_items SET payload = 'q' WHERE id = 2");
  sql("DELETE FROM q_items WHERE id = 4");
  const got = await take(sub, 11);
  sub.close();
  assert.deepEqual(
    got.map((c) => [c.action, c.columns.id]),
    [...[2, 4, 6, 8, 10, 12, 14, 16, 18, 20].map((id) => ["I", id]), ["U", 2]],
  );
  for (const c of got) {
    assert.equal(c.table, "q_items");
    assert.match(c.pos, /^[0-9A-F]{16}:[0-9A-F]{8}$/);
  }
  const positions = got.map((c) => c.pos);
  assert.deepEqual([...positions].sort(), positions, "positions grow");
  assert.equal(sub.position, positions.at(-1), "position is the last change handed over");
});

test("a WASM filter after a query keeps what its config says", async () => {
  sql("CREATE TABLE f_orders (id int PRIMARY KEY, total int)");
  const upload = await fetch(URL.replace(/^ws/, "http") + "/v1/filters", {
    method: "POST",
    headers: { authorization: `Bearer ${jwt(300, { filters: true })}`, "content-type": "application/wasm" },
    body: readFileSync(FILTER_WASM),
  });
  assert.equal(upload.status, 200, await upload.clone().text());
  const { id } = await upload.json();
  const sub = subscribe(
    URL,
    { query: "insert:f_orders", filter: { id, config: { table: "f_orders", column: "total", min: 100 } } },
    { token },
  );
  await opened(sub);
  sql("INSERT INTO f_orders VALUES (1, 50), (2, 150), (3, 99), (4, 300)");
  sql("UPDATE f_orders SET total = 500 WHERE id = 1");
  sql("INSERT INTO f_orders VALUES (5, 100)");
  const got = await take(sub, 3);
  sub.close();
  assert.deepEqual(
    got.map((c) => [c.action, c.columns.id]),
    [["I", 2], ["I", 4], ["I", 5]],
    "the inserts at or over 100; the update is not in the query",
  );
});

test("a socket dropped in the middle of a burst resumes with every change once", async () => {
  sql("CREATE TABLE burst (id int PRIMARY KEY, payload text)");
  const sub = subscribe(URL, "insert:burst", { token });
  await opened(sub);
  let reconnects = 0;
  sub.on("open", () => (reconnects += 1));
  const writer = sqlInBackground(
    "DO $$ BEGIN FOR i IN 1..40 LOOP INSERT INTO burst SELECT g, repeat('x', 200) FROM generate_series(i * 100 - 99, i * 100) g; COMMIT; END LOOP; END $$",
  );
  const ids = [];
  const timer = setTimeout(() => sub.close(), 30_000);
  for await (const frame of sub) {
    if (!isChange(frame)) continue;
    ids.push(frame.columns.id);
    // Twice during the burst, as a lost network would.
    if (ids.length === 700 || ids.length === 2300) sub.reconnect();
    if (ids.length >= 4000) break;
  }
  clearTimeout(timer);
  await writer;
  assert.ok(reconnects >= 2, `the socket was reopened (${reconnects})`);
  assert.equal(ids.length, 4000);
  assert.deepEqual(ids, Array.from({ length: 4000 }, (_, i) => i + 1), "every insert once, in order");
});

test("a saved position resumes where the application stopped", async () => {
  sql("CREATE TABLE saved (id int PRIMARY KEY)");
  const first = subscribe(URL, "insert:saved", { token });
  await opened(first);
  sql("INSERT INTO saved SELECT generate_series(1, 10)");
  const before = await take(first, 5);
  first.close();
  const saved = first.position;
  assert.equal(saved, before[4].pos);
  sql("INSERT INTO saved SELECT generate_series(11, 15)");
  const again = subscribe(URL, "insert:saved", { token, after: saved });
  const rest = await take(again, 10);
  again.close();
  assert.deepEqual(
    rest.map((c) => c.columns.id),
    [6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  );
});

test("a position the proxy no longer holds ends with PositionGoneError and the oldest held", async () => {
  sql("CREATE TABLE gone (id int PRIMARY KEY)");
  sql("INSERT INTO gone VALUES (1)");
  const sub = subscribe(URL, "insert:gone", { token, after: "0000000000000001:00000000" });
  await assert.rejects(
    (async () => {
      for await (const _ of sub) {
        // Nothing arrives.
      }
    })(),
    (e) => {
      assert.ok(e instanceof PositionGoneError, String(e));
      assert.equal(e.code, "POSITION_GONE");
      assert.ok(e.oldest === null || /^[0-9A-F]{16}:[0-9A-F]{8}$/.test(e.oldest), String(e.oldest));
      return true;
    },
  );
});

test("snapshot: the current rows as read events, a done frame, then changes", async () => {
  sql("CREATE TABLE snap (id int PRIMARY KEY, kind text)");
  sql("INSERT INTO snap SELECT g, CASE WHEN g <= 30 THEN 'a' ELSE 'b' END FROM generate_series(1, 50) g");
  const sub = subscribe(URL, "*:snap:kind.eq.a", { token, snapshot: true });
  const reads = [];
  let done = false;
  const changes = [];
  const timer = setTimeout(() => sub.close(), 20_000);
  for await (const frame of sub) {
    if (frame.type === "snapshot" && frame.state === "done") {
      done = true;
      sql("INSERT INTO snap VALUES (100, 'a'), (101, 'b')");
      continue;
    }
    if (!isChange(frame)) continue;
    if (frame.action === "R") reads.push(frame.columns.id);
    else changes.push([frame.action, frame.columns.id]);
    if (changes.length === 1) break;
  }
  clearTimeout(timer);
  assert.ok(done, "a done frame");
  assert.deepEqual(
    reads.sort((a, b) => a - b),
    Array.from({ length: 30 }, (_, i) => i + 1),
  );
  assert.deepEqual(changes, [["I", 100]]);
});

test("query errors and refused tokens are typed refusals, not retried", async () => {
  const bad = subscribe(URL, "insert:nosuch_table_here", { token });
  await assert.rejects(take(bad, 1), (e) => e instanceof RefusedError && e.code === "UNKNOWN_TABLE");
  const malformed = subscribe(URL, "insert:users:age.zz.3", { token });
  await assert.rejects(
    take(malformed, 1),
    (e) => e instanceof RefusedError && typeof e.position === "number" && e.position > 0,
  );
  const wrong = subscribe(URL, "insert:burst", { token: "not-a-jwt" });
  await assert.rejects(take(wrong, 1), (e) => e instanceof RefusedError && e.status === 401);
  const forbidden = subscribe(URL, "insert:burst", { token: () => jwt(300, { tables: "public.saved" }) });
  await assert.rejects(take(forbidden, 1), (e) => e instanceof RefusedError && e.code === "FORBIDDEN");
});

test("a token function keeps the socket open past the first token's expiry", async () => {
  sql("CREATE TABLE refresh (id int PRIMARY KEY)");
  // The proxy's leeway is 0 in this test run: a 3 s token expires at 3 s.
  const sub = subscribe(URL, "insert:refresh", { token: () => jwt(3), refreshTokenEveryMs: 1000 });
  const tokens = [];
  sub.on("token", (t) => tokens.push(t.expires_at));
  let reconnects = 0;
  sub.on("reconnect", () => (reconnects += 1));
  await opened(sub);
  await new Promise((r) => setTimeout(r, 5000));
  sql("INSERT INTO refresh VALUES (1)");
  const got = await take(sub, 1);
  sub.close();
  assert.equal(got[0].columns.id, 1);
  assert.ok(tokens.length >= 3, `refreshed tokens: ${tokens.length}`);
  assert.equal(reconnects, 0, "the socket lived on");
});
