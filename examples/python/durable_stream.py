#!/usr/bin/env python3
"""Keep an in-memory copy of one table with a walcast durable stream.

1. Create a durable stream (POST /v1/streams), or reuse one with --slot.
2. Read the table as of the stream's snapshot, page by page (keyset paging).
3. Stream the changes after the snapshot from /v1/lr/stream, apply each
   transaction (B ... C) to a dict keyed by primary key, and ACK the C's
   end_lsn. After a disconnect, reconnect with backoff: the proxy resumes
   after the last ACK, and transactions already applied are skipped.

Delivery is at least once, so the copy stays exact only because every
transaction is applied whole and at most once (the end_lsn check). A real
application keeps its state and the last applied end_lsn in the same durable
store, written together, and ACKs only what that store holds.

Output: progress on stderr; applied changes on stdout (unless --quiet); on
exit a last line `RESULT {...}` (JSON) and, with --print-state, `STATE [...]`
(the rows sorted by key) just before it. Exit status 0 on success.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

MAX_FRAME = 64 * 1024 * 1024  # a frame is one row change; rows may be large


class Fatal(Exception):
    """An error that retrying cannot fix: print it and exit non-zero."""


def log(msg):
    print(f"[durable_stream] {msg}", file=sys.stderr, flush=True)


def lsn_value(lsn):
    """'X/Y' -> int, so that positions compare correctly ('0/A' > '0/9')."""
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


# --- HTTP (urllib, stdlib) ------------------------------------------------

def error_text(body):
    """The proxy answers errors with {"error": "..."}; fall back to the text."""
    text = body.decode(errors="replace")
    try:
        return json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return text


def http(args, method, path, body=None):
    """One request; returns (headers, parsed JSON). Errors raise Fatal with
    the proxy's {"error": ...} message; connection errors are retried."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    req = urllib.request.Request(args.url + path, data=data, method=method, headers=headers)
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.headers, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            text = error_text(e.read())
            if e.code == 503 and attempt < 4:  # PostgreSQL briefly unreachable
                time.sleep(2 ** attempt)
                continue
            raise Fatal(f"{method} {path}: HTTP {e.code}: {text}") from None
        except (urllib.error.URLError, OSError) as e:
            if attempt == 4:
                raise Fatal(f"{method} {path}: {e}") from None
            log(f"{method} {path}: {e}; retrying")
            time.sleep(2 ** attempt)


# --- the table copy ---------------------------------------------------------

class Copy:
    """The in-memory table plus the bookkeeping needed to resume exactly."""

    def __init__(self, args):
        self.args = args
        self.key_cols = args.key.split(",")
        schema, _, name = args.table.rpartition(".")
        self.schema, self.name = schema or None, name
        self.rows = {}            # key tuple -> row dict
        self.last_applied = None  # end_lsn of the last applied transaction
        self.last_ack = None      # last ACK the proxy confirmed ({"ack": ...})
        self.transactions = 0     # transactions applied
        self.skipped = 0          # transactions skipped as already applied
        self.resumes = 0          # successful reconnects
        self.dropped = False      # --drop-connection-after already done
        self.stop = False         # set by SIGINT/SIGTERM

    def key(self, row):
        return tuple(row[c] for c in self.key_cols)

    def ours(self, change):
        return change.get("table") == self.name and self.schema in (None, change.get("schema"))

    def on_change(self, kind, key, row):
        """Called for every applied change: replace with your own logic."""
        if not self.args.quiet:
            print(kind, json.dumps(list(key)), json.dumps(row), flush=True)

    def apply(self, change):
        """Applies one row change (I, U, D, T) of our table."""
        action = change["action"]
        if action == "T":
            # "tables" holds schema.table, quoted where needed; compare unquoted.
            for t in change["tables"]:
                schema, _, name = t.replace('"', "").rpartition(".")
                if name == self.name and self.schema in (None, schema):
                    break
            else:
                return
            self.rows.clear()
            self.on_change("truncate", (), None)
            return
        if not self.ours(change):
            return
        if action == "I":
            row = change["columns"]
            self.rows[self.key(row)] = row
            self.on_change("insert", self.key(row), row)
        elif action == "U":
            # identity holds the old key (it differs when the key changed).
            old_key = self.key(change["identity"] or change["columns"])
            old = self.rows.pop(old_key, {})
            # Unchanged TOASTed columns are left out of "columns": keep them.
            row = {**old, **change["columns"]}
            self.rows[self.key(row)] = row
            self.on_change("update", self.key(row), row)
        elif action == "D":
            key = self.key(change["identity"])
            self.rows.pop(key, None)
            self.on_change("delete", key, None)


def read_snapshot(args, copy, slot):
    """Reads the table as of the stream's snapshot, with keyset paging."""
    after, pages = None, 0
    while True:
        body = {"slotName": slot, "table": args.table, "limit": args.page_size}
        if after is not None:
            body["after"] = after
        headers, rows = http(args, "POST", "/v1/snapshot/data", body)
        if not rows:  # an empty page is the end
            break
        for row in rows:
            copy.rows[copy.key(row)] = row
        pages += 1
        if headers.get("x-walcast-after") is None:
            raise Fatal(f"{args.table} has no primary key: keyset paging needs one")
        after = json.loads(headers["x-walcast-after"])
    log(f"snapshot: {len(copy.rows)} rows in {pages} pages")


# --- streaming ----------------------------------------------------------------

async def send_ack(ws, lsn):
    await ws.send(json.dumps({"lsn": lsn, "reply": True}))


async def consume(ws, args, copy, deadline):
    """Applies transactions until the deadline, --expect-rows or a stop
    signal (returns True), or until the connection ends (raises)."""
    txn = None      # changes of the open transaction, applied at its C
    unacked = 0     # applied transactions not yet ACKed
    while True:
        done = copy.stop or (deadline and time.monotonic() >= deadline) or (
            args.expect_rows is not None and len(copy.rows) == args.expect_rows)
        if done:
            # ACK everything applied, wait for the proxy to confirm it.
            if copy.last_applied and copy.last_applied != copy.last_ack:
                await send_ack(ws, copy.last_applied)
                end = time.monotonic() + 5
                while copy.last_ack != copy.last_applied and time.monotonic() < end:
                    try:
                        msg = json.loads(await asyncio.wait_for(ws.recv(), end - time.monotonic()))
                    except asyncio.TimeoutError:
                        break
                    copy.last_ack = msg.get("ack", copy.last_ack)
            await ws.close()
            return True
        try:  # wake up every second to check the deadline and signals
            raw = await asyncio.wait_for(ws.recv(), timeout=1.0)
        except asyncio.TimeoutError:
            continue
        msg = json.loads(raw)
        if "action" not in msg:  # a reply to an ACK
            if "ack" in msg:
                copy.last_ack = msg["ack"]
            else:
                log(f"proxy says: {msg}")
            continue
        action = msg["action"]
        if action == "B":
            txn = []
        elif action == "C":
            end_lsn = msg["end_lsn"]
            if copy.last_applied and lsn_value(end_lsn) <= lsn_value(copy.last_applied):
                copy.skipped += 1  # seen before the reconnect: already applied
            else:
                for change in txn or []:
                    copy.apply(change)
                copy.last_applied = end_lsn
                copy.transactions += 1
            txn = None
            unacked += 1
            if unacked >= args.ack_every:
                await send_ack(ws, end_lsn)
                unacked = 0
            if args.drop_connection_after and not copy.dropped \
                    and copy.transactions >= args.drop_connection_after:
                copy.dropped = True
                log(f"dropping the connection after {copy.transactions} transactions (test)")
                ws.transport.abort()  # no close handshake: the proxy sees 1006
        elif txn is not None and action in ("I", "U", "D", "T"):
            txn.append(msg)
        # M (logical messages) and DDL are not needed for a table copy.


async def stream(args, copy, slot, deadline):
    """Connects, consumes, and reconnects with backoff until done."""
    params = {"slotName": slot}
    ws_url = args.url.replace("http", "ws", 1) + "/v1/lr/stream?" + urllib.parse.urlencode(params)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    backoff, busy, connections = 0.5, 0, 0
    while True:
        try:
            async with connect(ws_url, additional_headers=headers, max_size=MAX_FRAME,
                               open_timeout=15) as ws:
                if connections:
                    copy.resumes += 1
                    log(f"resumed (after ACK {copy.last_ack}, applied up to {copy.last_applied})")
                else:
                    log(f"streaming {slot}")
                connections += 1
                backoff, busy = 0.5, 0
                if await consume(ws, args, copy, deadline):
                    return
        except InvalidStatus as e:
            status = e.response.status_code
            reason = error_text(e.response.body or b"")
            if status == 409:  # busy: our previous connection may still hold the slot
                busy += 1
                if busy > args.busy_retries:
                    raise Fatal(f"the stream stays busy (is another consumer connected?): {reason}")
                log(f"stream busy (409, retry {busy}/{args.busy_retries}): {reason}")
            elif status in (502, 503, 504):  # proxy or PostgreSQL briefly unavailable
                log(f"cannot open the stream: HTTP {status}: {reason}; retrying")
            else:  # 401, 404 (no such stream), 400: retrying will not help
                raise Fatal(f"cannot open the stream: HTTP {status}: {reason}") from None
        except ConnectionClosed as e:
            code, reason = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (1006, "connection lost")
            if code == 1000:  # the stream was deleted: nothing to resume
                raise Fatal(f"stream closed: {reason}") from None
            log(f"disconnected ({code} {reason}); reconnecting")
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as e:
            log(f"cannot connect: {e!r}; retrying")
        if copy.stop or (deadline and time.monotonic() >= deadline):
            log("stopping while disconnected")
            return
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # jitter
        backoff = min(backoff * 2, 10)


async def run(args, copy, slot, deadline):
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop cleanly: ACK, then exit
        loop.add_signal_handler(sig, lambda: setattr(copy, "stop", True))
    await stream(args, copy, slot, deadline)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="proxy base URL")
    p.add_argument("--table", required=True, help="table to copy: name or schema.name")
    p.add_argument("--key", default="id", help="primary key column(s), comma separated")
    p.add_argument("--name", help="name of a new stream (slot walcast_<name><n>)")
    p.add_argument("--slot", help="reuse this existing stream instead of creating one")
    p.add_argument("--token", default=os.environ.get("WALCAST_TOKEN"),
                   help="bearer token (default: $WALCAST_TOKEN)")
    p.add_argument("--page-size", type=int, default=1000, help="rows per snapshot page")
    p.add_argument("--ack-every", type=int, default=1, help="ACK every N transactions")
    p.add_argument("--busy-retries", type=int, default=5, help="retries when the stream is busy (409)")
    p.add_argument("--exit-after-seconds", type=float, help="stop after N seconds")
    p.add_argument("--expect-rows", type=int,
                   help="stop once the copy holds N rows; fail if not reached in time")
    p.add_argument("--drop-connection-after", type=int,
                   help="drop the websocket abruptly once, after N transactions (resume demo)")
    p.add_argument("--print-state", action="store_true", help="print STATE [rows] on exit")
    p.add_argument("--quiet", action="store_true", help="do not print each applied change")
    args = p.parse_args()
    args.url = args.url.rstrip("/")
    deadline = time.monotonic() + args.exit_after_seconds if args.exit_after_seconds else None

    copy, slot, status = Copy(args), args.slot, 0
    try:
        if slot is None:
            # The stream's table allow-list: schema.table patterns.
            body = {"tables": [args.table if "." in args.table else "*." + args.table]}
            if args.name:
                body["name"] = args.name
            _, created = http(args, "POST", "/v1/streams", body)
            slot = created["slotName"]
            log(f"created stream {slot} at {created['lsn']}")
        try:
            read_snapshot(args, copy, slot)
        except Fatal as e:
            if args.slot is None or "HTTP 410" not in str(e):
                raise
            # A reused stream was opened before: its snapshot is gone. A real
            # client would load its saved state here; this one starts empty.
            log(f"snapshot not readable ({e}); starting from the stream only")
        asyncio.run(run(args, copy, slot, deadline))
        if args.expect_rows is not None and len(copy.rows) != args.expect_rows:
            raise Fatal(f"expected {args.expect_rows} rows, have {len(copy.rows)} "
                        f"after {args.exit_after_seconds} s")
    except Fatal as e:
        log(f"error: {e}")
        status = 1
    except KeyboardInterrupt:
        status = 130
    if args.print_state:
        rows = [row for _, row in sorted(copy.rows.items())]
        print("STATE " + json.dumps(rows), flush=True)
    print("RESULT " + json.dumps({
        "rows": len(copy.rows), "transactions": copy.transactions, "last_ack": copy.last_ack,
        "resumes": copy.resumes, "skipped": copy.skipped, "slot": slot}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
