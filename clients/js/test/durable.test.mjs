// Durable streams through the client: create, snapshot pages, stream with
// ACKs through dropped sockets while transactions run; the model the client
// builds from the snapshot and the stream ends equal to the table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { compareLsn, Durable, RefusedError } from "../dist/index.js";

const URL = process.env.WALCAST_URL;
const PSQL = process.env.WALCAST_PSQL;
const CONNINFO = process.env.WALCAST_CONNINFO;
const SECRET = process.env.WALCAST_JWT_SECRET;
if (!URL || !PSQL || !CONNINFO || !SECRET) {
  throw new Error("run these tests through cargo test -p walcast-proxy --test e2e js_client::");
}

function sql(text) {
  return execFileSync(PSQL, ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", CONNINFO, "-c", text], {
    encoding: "utf8",
  }).trim();
}

function token() {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: "durable", exp: Math.floor(Date.now() / 1000) + 300, walcast: {} });
  return `${head}.${body}.${createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url")}`;
}

test("snapshot pages then the stream, ACKed through dropped sockets, end equal to the table", async () => {
  sql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)");
  sql("INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 250) g");
  const api = new Durable(URL, { token });
  const created = await api.create({ name: "jsmodel", tables: ["public.accounts"] });
  assert.match(created.slotName, /^walcast_jsmodel\d+$/);
  assert.ok(created.snapshot, "an exported snapshot");

  // Writes that run while the snapshot is read and the stream follows.
  const writer = new Promise((resolve, reject) => {
    const child = spawn(
      PSQL,
      [
        "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", CONNINFO, "-c",
        `DO $$ BEGIN
           FOR i IN 1..60 LOOP
             INSERT INTO accounts VALUES (1000 + i, i);
             UPDATE accounts SET balance = balance + 1 WHERE id % 7 = i % 7;
             DELETE FROM accounts WHERE id = i * 3;
             UPDATE accounts SET id = 5000 + i WHERE id = 1000 + i - 1;
             COMMIT;
           END LOOP;
         END $$`,
      ],
      { stdio: "inherit" },
    );
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`writer exited ${code}`))));
  });

  const model = new Map();
  let pages = 0;
  for await (const rows of api.snapshotPages(created.slotName, "public.accounts", 40)) {
    pages += 1;
    for (const r of rows) model.set(r.id, r.balance);
  }
  assert.equal(model.size, 250, "the snapshot is the table at the slot's start");
  assert.ok(pages >= 7, `keyset pages: ${pages}`);

  await writer;
  sql("INSERT INTO accounts VALUES (-1, 0)"); // the end marker
  const stream = api.stream(created.slotName);
  let commits = 0;
  let pending = [];
  const timer = setTimeout(() => stream.close(), 60_000);
  let done = false;
  for await (const f of stream) {
    if (f.action === "B") pending = [];
    else if (["I", "U", "D"].includes(f.action)) pending.push(f);
    else if (f.action === "C") {
      // Applied as a whole at its commit, then ACKed.
      for (const c of pending) {
        const key = (c.identity ?? c.columns).id;
        if (c.action === "D") model.delete(key);
        else {
          if (c.action === "U") model.delete(key);
          model.set(c.columns.id, c.columns.balance);
        }
      }
      done = pending.some((c) => c.action === "I" && c.columns.id === -1);
      pending = [];
      stream.ack(f);
      commits += 1;
      if (commits === 15 || commits === 40) stream.reconnect();
      if (done) break;
    }
  }
  clearTimeout(timer);
  assert.ok(done, `the end marker arrived (${commits} commits)`);
  assert.ok(commits > 40, `both reconnects happened (${commits} commits)`);
  model.delete(-1);
  const table = new Map(
    JSON.parse(sql("SELECT coalesce(json_agg(json_build_array(id, balance)), '[]') FROM accounts WHERE id <> -1")),
  );
  assert.deepEqual(
    [...model.entries()].sort((a, b) => a[0] - b[0]),
    [...table.entries()].sort((a, b) => a[0] - b[0]),
  );

  const listed = await api.list();
  assert.ok(listed.some((s) => s.slotName === created.slotName), JSON.stringify(listed));
  await api.drop(created.slotName);
  await assert.rejects(
    api.snapshotPages(created.slotName, "public.accounts").next(),
    (e) => e instanceof RefusedError && e.status === 404,
  );
});

// A small seeded generator (mulberry32), so a failing seed can be replayed.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("reconnect() at random points with ACKs in flight: each transaction applied once, the slot at the last ACK after close()", async () => {
  sql("CREATE TABLE ledger (txn int, n int, PRIMARY KEY (txn, n))");
  const api = new Durable(URL, { token, backoff: { initialMs: 10, maxMs: 50 } });
  // Seeds 1-8; WALCAST_SEEDS=... replays others (one per letter: at most ten).
  const seeds = (process.env.WALCAST_SEEDS ?? "1,2,3,4,5,6,7,8").split(",").map(Number);
  for (const seed of seeds) {
    const random = rng(seed);
    const { slotName } = await api.create({ name: `reconnects_${"abcdefghij"[seed % 10]}`, tables: ["public.ledger"], exportSnapshot: false });
    const txns = 30;
    const sizes = [];
    let script = "";
    for (let t = 1; t <= txns; t++) {
      const n = 1 + Math.floor(random() * 6);
      sizes.push(n);
      script += `BEGIN; INSERT INTO ledger SELECT ${seed * 1000 + t}, g FROM generate_series(1, ${n}) g; COMMIT;\n`;
    }
    sql(script); // one psql call, a transaction per BEGIN ... COMMIT
    const stream = api.stream(slotName);
    const applied = new Map(); // txn -> times applied
    let appliedUpTo; // the end_lsn of the last transaction applied
    let txn = null;
    let deferred; // an ACK given later, maybe while reconnecting
    let reconnects = 0;
    const timer = setTimeout(() => stream.close(), 60_000);
    for await (const f of stream) {
      if (deferred !== undefined && random() < 0.5) {
        stream.ack(deferred);
        deferred = undefined;
      }
      if (f.action === "B") txn = [];
      else if (f.action === "I") txn?.push(f.columns.txn);
      else if (f.action === "C") {
        assert.ok(txn !== null, `seed ${seed}: a C without its B`);
        // B and C come for every transaction; other tables' are empty here.
        if (txn.length > 0 && (appliedUpTo === undefined || compareLsn(f.end_lsn, appliedUpTo) > 0)) {
          const id = txn[0];
          assert.ok(txn.every((x) => x === id), `seed ${seed}: one transaction's rows`);
          assert.equal(txn.length, sizes[id - seed * 1000 - 1], `seed ${seed}: transaction ${id} whole`);
          applied.set(id, (applied.get(id) ?? 0) + 1);
          appliedUpTo = f.end_lsn;
        }
        txn = null;
        if (random() < 0.3) {
          if (deferred !== undefined) stream.ack(deferred);
          deferred = f.end_lsn;
        } else stream.ack(f);
        if (applied.size === txns) {
          if (deferred !== undefined) stream.ack(deferred);
          deferred = undefined;
          break; // the iterator's return() closes the stream
        }
      }
      if (random() < 0.12) {
        reconnects += 1;
        stream.reconnect();
      }
    }
    clearTimeout(timer);
    await stream.close();
    assert.equal(applied.size, txns, `seed ${seed}: every transaction applied`);
    for (const [id, times] of applied) assert.equal(times, 1, `seed ${seed}: transaction ${id} applied ${times} times`);
    assert.ok(reconnects > 0, `seed ${seed}: reconnected`);
    // At the last ACK, or past it over WAL with nothing for this stream (an
    // idle stream's slot advances, docs/streams.md) ...
    const confirmed = sql(`SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '${slotName}'`);
    assert.ok(compareLsn(confirmed, stream.acked) >= 0, `seed ${seed}: the slot (${confirmed}) is behind the last ACK (${stream.acked}) after close()`);
    // ... so the next connection starts after every applied transaction.
    const marker = seed * 1000 + 999;
    sql(`INSERT INTO ledger VALUES (${marker}, 1)`);
    const again = api.stream(slotName);
    for await (const f of again) {
      if (f.action === "I") {
        assert.equal(f.columns.txn, marker, `seed ${seed}: an applied transaction came again`);
        break;
      }
    }
    // The consumer just closed may still hold the slot for a moment (409).
    for (let tries = 0; ; tries++) {
      try {
        await api.drop(slotName);
        break;
      } catch (e) {
        if (!(e instanceof RefusedError && e.status === 409) || tries >= 100) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
});
