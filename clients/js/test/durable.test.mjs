// Durable streams through the client: create, snapshot pages, stream with
// ACKs through dropped sockets while transactions run; the model the client
// builds from the snapshot and the stream ends equal to the table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { Durable, RefusedError } from "../dist/index.js";

const URL = process.env.WALCAST_URL;
const PSQL = process.env.WALCAST_PSQL;
const CONNINFO = process.env.WALCAST_CONNINFO;
const SECRET = process.env.WALCAST_JWT_SECRET;
if (!URL || !PSQL || !CONNINFO || !SECRET) {
  throw new Error("run these tests through cargo test -p walcast-proxy --test js_client");
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
