// Durable streams (docs/streams.md): a slot of their own, a snapshot
// consistent with it, a stream that resumes after the last ACK. Delivery is
// at least once: after a reconnect, the stream resumes after the last ACK
// given to `ack` (each connection carries it), and the transaction that was
// in progress comes again whole from its `B`. The application collects a
// transaction from its `B` (a `B` starts afresh), applies it at its `C`,
// then ACKs it; it skips a transaction whose end_lsn it applied already
// (only its own crash, an ACK it had not given yet, or an edge proxy sends
// one again).
//
//   const api = new Durable("http://localhost:8080", { token });
//   const { slotName } = await api.create({ name: "orders", tables: ["public.orders"] });
//   for await (const rows of api.snapshotPages(slotName, "public.orders")) load(rows);
//   const stream = api.stream(slotName);
//   let txn = [];
//   for await (const frame of stream) {
//     if (frame.action === "B") txn = [];
//     else if (frame.action === "C") { apply(txn, frame.end_lsn); stream.ack(frame); }
//     else txn.push(frame);
//   }
import { Connection } from "./connection.js";
import { ClosedError, CloseCode, RefusedError, WalcastError, } from "./errors.js";
/** Compares two LSNs (`X/Y`): negative, zero or positive. */
export function compareLsn(a, b) {
    const parse = (l) => {
        const [hi, lo] = l.split("/");
        return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
    };
    const [x, y] = [parse(a), parse(b)];
    return x < y ? -1 : x > y ? 1 : 0;
}
/** The durable stream endpoints of one proxy. */
export class Durable {
    options;
    http;
    ws;
    constructor(url, options = {}) {
        this.options = options;
        const base = url.replace(/\/+$/, "");
        this.http = base.replace(/^ws(s?):/, "http$1:");
        this.ws = base.replace(/^http(s?):/, "ws$1:");
    }
    async token() {
        const t = this.options.token;
        return typeof t === "function" ? await t() : t;
    }
    async request(method, path, body) {
        const headers = {};
        const token = await this.token();
        if (token !== undefined)
            headers.authorization = `Bearer ${token}`;
        if (body !== undefined)
            headers["content-type"] = "application/json";
        const res = await fetch(this.http + path, {
            method,
            headers,
            body: body === undefined ? undefined : JSON.stringify(body),
        });
        if (!res.ok) {
            let message = `HTTP ${res.status}`;
            let code;
            try {
                const e = await res.json();
                if (typeof e.error === "string")
                    message = e.error;
                if (typeof e.code === "string")
                    code = e.code;
            }
            catch {
                // Described by the status alone.
            }
            throw new RefusedError(message, code, res.status);
        }
        return res;
    }
    /** Creates a stream: a slot and (unless `exportSnapshot` is false) a snapshot consistent with it. */
    async create(opts = {}) {
        const body = {};
        if (opts.name !== undefined)
            body.name = opts.name;
        if (opts.tables !== undefined)
            body.tables = opts.tables;
        if (opts.exportSnapshot === false)
            body.export_snapshot = false;
        return (await this.request("POST", "/v1/streams", body)).json();
    }
    /** The streams of this proxy's database. */
    async list() {
        return (await (await this.request("GET", "/v1/streams")).json()).streams;
    }
    /** Drops a stream and its slot. */
    async drop(slotName) {
        await this.request("DELETE", `/v1/streams/${encodeURIComponent(slotName)}`);
    }
    /** A table's rows inside the stream's snapshot, page by page (keyset paging by primary key). */
    async *snapshotPages(slotName, table, limit = 1000) {
        let after;
        for (;;) {
            const body = { slotName, table, limit };
            if (after !== undefined)
                body.after = after;
            const res = await this.request("POST", "/v1/snapshot/data", body);
            const rows = await res.json();
            if (rows.length === 0)
                return;
            yield rows;
            const next = res.headers.get("x-walcast-after");
            if (next === null) {
                throw new WalcastError(`${table} has no primary key: page it with offset instead`);
            }
            after = JSON.parse(next);
        }
    }
    /** Asks for tables' current rows inside the open stream (read events), without a held snapshot. */
    async resnapshot(slotName, tables, after) {
        const body = { tables };
        if (after !== undefined)
            body.after = after;
        await this.request("POST", `/v1/streams/${encodeURIComponent(slotName)}/snapshot`, body);
    }
    /** Opens the stream; it reconnects after interruptions and resumes after the last ACK. */
    stream(slotName, opts = {}) {
        const params = new URLSearchParams({ slotName });
        if (opts.query !== undefined)
            params.set("query", opts.query);
        if (opts.filter !== undefined) {
            params.set("filter", opts.filter.id);
            if (opts.filter.config !== undefined)
                params.set("config", opts.filter.config);
        }
        if (opts.heartbeats)
            params.set("heartbeats", "true");
        return new DurableStream(`${this.ws}/v1/lr/stream`, `${this.http}/v1/lr/stream`, params, this.options, () => this.token());
    }
}
/** An open durable stream: an async iterator of frames, and `ack`. */
export class DurableStream extends Connection {
    wsUrl;
    httpUrl;
    params;
    token;
    /** The last position given to `ack`: every connection resumes after it. */
    acked;
    /** The last ACK the proxy has taken (on a socket that had sent it, or in a connection's URL). */
    delivered;
    /** The furthest end_lsn received on the open socket (or carried by its URL): what it may ACK. */
    reach;
    /** `close()` waits for a connection to carry the last ACK. */
    closing;
    closeTimer;
    /** The ACK the current socket's URL carries. */
    carried;
    reconnectListeners = new Set();
    constructor(wsUrl, httpUrl, params, options, token) {
        super(options.WebSocket, options.backoff, "no WebSocket in this runtime: pass options.WebSocket");
        this.wsUrl = wsUrl;
        this.httpUrl = httpUrl;
        this.params = params;
        this.token = token;
        void this.connect();
    }
    /** Called after each interruption, before the stream resumes after the last ACK. */
    onReconnect(fn) {
        this.reconnectListeners.add(fn);
        return () => this.reconnectListeners.delete(fn);
    }
    /**
     * Says that every transaction up to this one is processed: a `C` frame
     * (its `end_lsn`) or an LSN. Call it only once the application has
     * processed the transaction: what is not ACKed comes again after a
     * reconnect.
     */
    ack(commit) {
        const lsn = typeof commit === "string" ? commit : commit.end_lsn;
        if (typeof lsn !== "string")
            throw new WalcastError("ack a C frame (it has end_lsn) or an LSN");
        if (this.acked === undefined || compareLsn(lsn, this.acked) > 0)
            this.acked = lsn;
        this.sendAck(lsn);
    }
    /**
     * Sends an ACK on the open socket when that socket sent the transaction
     * (the proxy refuses an ACK beyond what its connection sent). Otherwise
     * it waits: the next connection carries `acked`, or the transaction
     * comes again on this one and is ACKed then.
     */
    sendAck(lsn) {
        if (!this.socket || !this.opened)
            return;
        if (this.reach === undefined || compareLsn(lsn, this.reach) > 0)
            return;
        this.socket.send(JSON.stringify({ lsn }));
        if (this.delivered === undefined || compareLsn(lsn, this.delivered) > 0)
            this.delivered = lsn;
    }
    /** Whether the last ACK has not reached the proxy yet. */
    undelivered() {
        return this.acked !== undefined && (this.delivered === undefined || compareLsn(this.acked, this.delivered) > 0);
    }
    /**
     * Drops the socket and resumes after the last ACK: frames of the old
     * socket not yet taken are dropped, and the transaction in progress
     * comes again whole from its `B`.
     */
    reconnect() {
        if (this.ended || this.closing)
            return;
        this.drop();
        this.interrupted(CloseCode.Normal, "reconnect()");
        this.schedule(0);
    }
    /**
     * Ends the stream (the slot stays; `Durable.drop` removes it). Resolves
     * once the proxy has the last ACK: when it has not reached the proxy yet
     * (given while reconnecting), one short connection carries it. Rejects
     * when that connection fails.
     */
    close(timeoutMs = 10_000) {
        if (this.ended)
            return Promise.resolve();
        if (!this.undelivered()) {
            this.finish(null);
            return Promise.resolve();
        }
        const wait = new Promise((resolve, reject) => (this.closing ??= []).push({ resolve, reject }));
        if (this.closing?.length === 1) {
            // Dropping the socket first: a new connection's URL carries the ACK.
            this.drop();
            this.schedule(0);
            this.closeTimer = setTimeout(() => {
                this.finish(new WalcastError(`the last ACK ${this.acked} did not reach the proxy within ${timeoutMs} ms`));
            }, timeoutMs);
        }
        return wait;
    }
    [Symbol.asyncIterator]() {
        return {
            next: () => this.take(),
            return: async () => {
                await this.close();
                return { value: undefined, done: true };
            },
        };
    }
    async connect() {
        if (this.ended)
            return;
        const params = new URLSearchParams(this.params);
        const token = await this.token().catch(() => undefined);
        if (token !== undefined)
            params.set("access_token", token);
        // The proxy resumes after the last ACK, even one that never reached it.
        const acked = this.acked;
        if (acked !== undefined)
            params.set("acked", acked);
        this.carried = acked;
        this.reach = acked;
        this.open(`${this.wsUrl}?${params}`);
    }
    opens() {
        this.attempt = 0;
        // The proxy confirmed the URL's ACK as it started.
        const acked = this.carried;
        if (acked !== undefined && (this.delivered === undefined || compareLsn(acked, this.delivered) > 0)) {
            this.delivered = acked;
        }
        if (this.closing && !this.undelivered())
            this.finish(null);
    }
    receives(text) {
        let v;
        try {
            v = JSON.parse(text);
        }
        catch {
            return;
        }
        // Answers to ACKs and token refreshes are not frames of the stream.
        if ("ack" in v || "warning" in v || "error" in v || v.type === "token")
            return;
        if (v.action === "C" && typeof v.end_lsn === "string") {
            if (this.reach === undefined || compareLsn(v.end_lsn, this.reach) > 0)
                this.reach = v.end_lsn;
            // A transaction the application ACKed already, sent again (an edge
            // resumes at its own position): ACKed again here.
            if (this.acked !== undefined && compareLsn(v.end_lsn, this.acked) <= 0)
                this.sendAck(v.end_lsn);
            // An ACK given before this connection sent its transaction.
            if (this.undelivered() && this.acked !== undefined)
                this.sendAck(this.acked);
        }
        this.push(v);
    }
    /** An interruption: frames of the old socket not yet taken are dropped; listeners hear of it. */
    interrupted(code, reason) {
        this.queue.length = 0;
        this.reach = undefined;
        for (const l of this.reconnectListeners)
            l({ closeCode: code, reason });
    }
    async closes(code, reason) {
        if (this.ended)
            return;
        if (code === CloseCode.Normal) {
            // The stream was deleted.
            this.finish(new ClosedError(code, reason));
            return;
        }
        if (code === CloseCode.Policy) {
            this.finish(new ClosedError(code, reason));
            return;
        }
        if (!this.opened) {
            // Refused before the upgrade: ask why with a plain GET. 409 (another
            // consumer, or the previous connection still leaving) and 503 are
            // worth waiting for; the rest is final.
            const params = new URLSearchParams(this.params);
            const token = await this.token().catch(() => undefined);
            if (token !== undefined)
                params.set("access_token", token);
            try {
                const res = await fetch(`${this.httpUrl}?${params}`);
                if (![400, 409, 429].includes(res.status) && res.status < 500) {
                    const e = await res.json().catch(() => ({}));
                    this.finish(new RefusedError(typeof e.error === "string" ? e.error : `HTTP ${res.status}`, e.code, res.status));
                    return;
                }
                if (res.status === 400) {
                    const e = await res.json().catch(() => ({}));
                    if (typeof e.error === "string" && !/websocket/i.test(e.error)) {
                        this.finish(new RefusedError(e.error, e.code, 400));
                        return;
                    }
                }
            }
            catch {
                // Out of reach: retry.
            }
        }
        const wait = this.nextWait();
        this.interrupted(code, reason);
        this.schedule(wait);
    }
    ends(error) {
        if (this.closeTimer !== undefined)
            clearTimeout(this.closeTimer);
        for (const c of this.closing ?? []) {
            if (error)
                c.reject(error);
            else
                c.resolve();
        }
        this.closing = undefined;
    }
}
