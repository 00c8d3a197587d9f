// Live change streams: subscribe() and the Subscription it returns, and the
// frames a subscription hands out (the package's entry point is index.ts).
//
// A subscription reconnects by itself with jittered backoff and resumes from
// the position of the last frame it received (`after`), so the application
// sees every change once, in order, across dropped sockets and proxy
// restarts of the websocket. When the proxy no longer holds that position it
// ends with a PositionGoneError naming the oldest position held.
/** Whether a frame is a change (or a read event), not a progress or error frame. */
export function isChange(frame) {
    return typeof frame.action === "string" && !("type" in frame);
}
import { Connection } from "./connection.js";
import { CloseCode, ClosedError, PositionGoneError, RefusedError, WalcastError, } from "./errors.js";
const POSITION = /^[0-9A-F]{16}:[0-9A-F]{8}$/;
/** Opens a live subscription; it connects at once and until `close()`. */
export function subscribe(url, selection, options = {}) {
    return new Subscription(url, selection, options);
}
/** A live subscription: an async iterator of frames and an event emitter. */
export class Subscription extends Connection {
    selection;
    options;
    /** The `pos` of the last change handed to the application (save it to resume). */
    position;
    /** The `pos` of the last change received: where a reconnect resumes. */
    received;
    snapshotPending;
    openedBefore = false;
    wsUrl;
    httpUrl;
    paused = false;
    refresher;
    iterating = false;
    listeners = new Map();
    constructor(url, selection, options) {
        super(options.WebSocket, options.backoff, "no WebSocket in this runtime: use Node.js 22+ (or 20 with --experimental-websocket), or pass options.WebSocket");
        this.selection = selection;
        this.options = options;
        if (options.after !== undefined && !POSITION.test(options.after)) {
            throw new WalcastError(`after: ${JSON.stringify(options.after)} is not a position like 0000000001A2B400:00000000`);
        }
        const base = url.replace(/\/+$/, "").replace(/\/ws$/, "");
        this.wsUrl = base.replace(/^http(s?):/, "ws$1:") + "/ws";
        this.httpUrl = base.replace(/^ws(s?):/, "http$1:") + "/ws";
        this.received = options.after;
        this.position = options.after;
        this.snapshotPending = options.snapshot === true;
        void this.connect();
    }
    /** Adds a listener; returns a function that removes it. */
    on(event, listener) {
        let set = this.listeners.get(event);
        if (!set) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(listener);
        return () => set.delete(listener);
    }
    /** Ends the subscription. */
    close() {
        this.finish(null);
    }
    /** Drops the current socket and reconnects from the last position received (after a network change, say). */
    reconnect() {
        if (this.ended)
            return;
        this.drop();
        this.schedule(0);
    }
    [Symbol.asyncIterator]() {
        this.iterating = true;
        return {
            next: () => this.take(),
            return: async () => {
                this.close();
                return { value: undefined, done: true };
            },
        };
    }
    handed(frame) {
        const pos = frame.pos;
        if (typeof pos === "string")
            this.position = pos;
        this.maybeResume();
    }
    emit(event, value) {
        for (const l of this.listeners.get(event) ?? []) {
            try {
                l(value);
            }
            catch (e) {
                // A listener's error is the application's; it does not stop the stream.
                setTimeout(() => {
                    throw e;
                });
            }
        }
    }
    async token() {
        const t = this.options.token;
        return typeof t === "function" ? await t() : t;
    }
    subscribeFrame() {
        const sub = {};
        if (typeof this.selection === "string") {
            sub.query = this.selection;
        }
        else {
            if (this.selection.query !== undefined)
                sub.query = this.selection.query;
            sub.filter = { id: this.selection.filter.id, config: this.selection.filter.config ?? null };
        }
        if (this.received !== undefined)
            sub.after = this.received;
        if (this.snapshotPending)
            sub.snapshot = true;
        return JSON.stringify({ subscribe: sub });
    }
    async connect() {
        if (this.ended)
            return;
        let token;
        try {
            token = await this.token();
        }
        catch (e) {
            this.finish(new WalcastError(`the token function failed: ${String(e)}`));
            return;
        }
        if (this.ended)
            return;
        const url = token === undefined ? this.wsUrl : `${this.wsUrl}?access_token=${encodeURIComponent(token)}`;
        try {
            this.open(url);
        }
        catch (e) {
            this.finish(new WalcastError(`cannot open ${this.wsUrl}: ${String(e)}`));
        }
    }
    opens(socket) {
        const resync = this.options.resync === true && this.openedBefore;
        if (resync) {
            // A view reads its rows again rather than resuming.
            this.snapshotPending = true;
            this.received = undefined;
        }
        this.openedBefore = true;
        socket.send(this.subscribeFrame());
        this.emit("open", { after: this.received, resync });
        this.startRefresh(socket);
    }
    startRefresh(socket) {
        const every = this.options.refreshTokenEveryMs;
        if (typeof this.options.token !== "function" || !every)
            return;
        this.stopRefresh();
        this.refresher = setInterval(async () => {
            try {
                const t = await this.token();
                if (this.socket === socket && t !== undefined)
                    socket.send(JSON.stringify({ access_token: t }));
            }
            catch {
                // The next refresh, or the reconnect after the token expires, tries again.
            }
        }, every);
    }
    stopRefresh() {
        if (this.refresher !== undefined)
            clearInterval(this.refresher);
        this.refresher = undefined;
    }
    receives(text) {
        let v;
        try {
            v = JSON.parse(text);
        }
        catch {
            this.finish(new WalcastError(`the proxy sent a frame that is not JSON: ${text.slice(0, 200)}`));
            return;
        }
        if (typeof v !== "object" || v === null)
            return;
        if (typeof v.error === "string" && v.action === undefined && v.type === undefined) {
            this.failure = this.refusal(v);
            return; // The proxy closes the socket next.
        }
        if (v.type === "token") {
            this.emit("token", { expires_at: v.expires_at ?? null });
            return;
        }
        const frame = v;
        const pos = frame.pos;
        if (typeof pos === "string") {
            // Positions compare as strings; a frame at or before the last one
            // received was delivered already (a resume never repeats one, this
            // is a guard).
            if (this.received !== undefined && pos <= this.received)
                return;
            this.received = pos;
        }
        if (v.type === "snapshot" && v.state === "done")
            this.snapshotPending = false;
        this.attempt = 0;
        this.deliver(frame);
    }
    refusal(v) {
        const message = v.error;
        const code = typeof v.code === "string" ? v.code : undefined;
        if (code === "POSITION_GONE")
            return new PositionGoneError(message, v.oldest ?? null);
        if (code === "NOT_READY")
            return new WalcastError(message, code);
        const position = typeof v.position === "number" ? v.position : undefined;
        return new RefusedError(message, code ?? (position !== undefined ? "INVALID_QUERY" : undefined), undefined, position);
    }
    deliver(frame) {
        this.emit("frame", frame);
        if (isChange(frame))
            this.emit("change", frame);
        else if (frame.type === "snapshot")
            this.emit("snapshot", frame);
        else if (frame.type === "filter_error")
            this.emit("filter_error", frame);
        if (!this.iterating) {
            this.handed(frame);
            return;
        }
        this.push(frame);
        const max = this.options.maxBuffered ?? 10_000;
        if (this.queue.length >= max && !this.paused && this.socket) {
            // Memory stays bounded: stop reading, resume from the last frame
            // received once the application has caught up.
            this.paused = true;
            this.drop();
        }
    }
    maybeResume() {
        const max = this.options.maxBuffered ?? 10_000;
        if (this.paused && this.queue.length <= max / 2 && !this.ended) {
            this.paused = false;
            this.schedule(0);
        }
    }
    drop() {
        this.stopRefresh();
        super.drop();
    }
    async closes(code, reason, opened) {
        this.stopRefresh();
        if (this.ended)
            return;
        const refused = this.failure;
        if (refused) {
            this.failure = undefined;
            if (refused.code === "NOT_READY") {
                this.retry(code, reason);
                return;
            }
            this.finish(refused);
            return;
        }
        if (!opened) {
            // The upgrade was refused or the proxy is out of reach; a browser
            // does not say which, so ask with a plain GET (which the proxy
            // answers after the same checks).
            const why = await this.diagnose();
            if (why) {
                this.finish(why);
                return;
            }
            this.retry(code, reason);
            return;
        }
        if (code === CloseCode.Policy) {
            if (/token expired/.test(reason) && typeof this.options.token === "function") {
                this.retry(code, reason);
                return;
            }
            this.finish(new ClosedError(code, reason));
            return;
        }
        this.retry(code, reason);
    }
    async diagnose() {
        if (typeof fetch !== "function")
            return undefined;
        const params = new URLSearchParams();
        if (typeof this.selection === "string")
            params.set("query", this.selection);
        else {
            if (this.selection.query !== undefined)
                params.set("query", this.selection.query);
            params.set("filter", this.selection.filter.id);
        }
        let token;
        try {
            token = await this.token();
        }
        catch {
            return undefined;
        }
        if (token !== undefined)
            params.set("access_token", token);
        let res;
        try {
            res = await fetch(`${this.httpUrl}?${params}`);
        }
        catch {
            return undefined; // Out of reach: retry.
        }
        if (res.status === 429 || res.status >= 500)
            return undefined;
        let body = {};
        try {
            body = await res.json();
        }
        catch {
            // Not JSON: described by the status alone.
        }
        if (res.status === 400 && typeof body.position !== "number") {
            // The proxy's "use a websocket" answer: the subscription would have
            // been accepted, so the failure was transient.
            return undefined;
        }
        const message = typeof body.error === "string" ? body.error : `HTTP ${res.status}`;
        const code = typeof body.code === "string" ? body.code : undefined;
        const position = typeof body.position === "number" ? body.position : undefined;
        return new RefusedError(message, code, res.status, position);
    }
    retry(closeCode, reason) {
        const inMs = this.nextWait();
        this.emit("reconnect", { closeCode, reason, inMs });
        this.schedule(inMs);
    }
    ends(error) {
        this.emit("end", error);
    }
}
