// What a live subscription (live.ts) and a durable stream (durable.ts) share:
// one websocket at a time to the proxy, opened again after an interruption
// with jittered backoff, and the frames it receives handed to an async
// iterator. Each says what its socket's frames and closes mean.
import { backoffMs, CloseCode, detachSocket, WalcastError } from "./errors.js";
export class Connection {
    backoff;
    /** The current socket; events of any other are ignored. */
    socket;
    /** Whether the current socket opened: a close before that is a refused or failed upgrade. */
    opened = false;
    ended = false;
    /** Why the connection ended, or the refusal the proxy sent before closing. */
    failure;
    /** Reconnects since the last success; each waits longer. */
    attempt = 0;
    /** Frames received and not yet taken by the iterator. */
    queue = [];
    Ws;
    timer;
    waiter;
    waiterFail;
    constructor(Ws, backoff, noWebSocket) {
        this.backoff = backoff;
        const W = Ws ?? globalThis.WebSocket;
        if (!W)
            throw new WalcastError(noWebSocket);
        this.Ws = W;
    }
    /** A frame reaches the application (from the queue, or straight to a waiting `next()`). */
    handed(_frame) { }
    /** The connection ended, with its error or null. */
    ends(_error) { }
    /** Opens `url` as the current socket. */
    open(url) {
        const socket = new this.Ws(url);
        this.socket = socket;
        this.opened = false;
        const closed = (code, reason) => {
            if (this.socket !== socket)
                return;
            this.socket = undefined;
            void this.closes(code, reason, this.opened);
        };
        socket.onopen = () => {
            if (this.socket !== socket)
                return;
            this.opened = true;
            this.opens(socket);
        };
        socket.onmessage = (ev) => {
            if (this.socket !== socket)
                return;
            this.receives(typeof ev.data === "string" ? ev.data : String(ev.data));
        };
        socket.onclose = (ev) => closed(ev.code, ev.reason);
        socket.onerror = () => {
            // An open socket's close event follows with the code. A refused
            // upgrade may get no close event at all (Node.js 20).
            if (!this.opened)
                closed(CloseCode.Abnormal, "the websocket upgrade failed");
        };
    }
    /** Closes the current socket without hearing from it again. */
    drop() {
        const s = this.socket;
        this.socket = undefined;
        detachSocket(s);
    }
    /** The wait before the next reconnect: each one in a row waits longer. */
    nextWait() {
        const ms = backoffMs(this.attempt, this.backoff);
        this.attempt += 1;
        return ms;
    }
    /** Connects again in `ms` (replacing a reconnect already scheduled). */
    schedule(ms) {
        if (this.timer !== undefined)
            clearTimeout(this.timer);
        this.timer = setTimeout(() => {
            this.timer = undefined;
            void this.connect();
        }, ms);
    }
    /** Gives a frame to a waiting `next()`, or queues it. */
    push(frame) {
        if (this.waiter) {
            const w = this.waiter;
            this.waiter = this.waiterFail = undefined;
            this.handed(frame);
            w({ value: frame, done: false });
            return;
        }
        this.queue.push(frame);
    }
    /** The iterator's `next`: a queued frame, the end (or its error), or a wait for the next frame. */
    take() {
        const frame = this.queue.shift();
        if (frame !== undefined) {
            this.handed(frame);
            return Promise.resolve({ value: frame, done: false });
        }
        if (this.ended) {
            return this.failure ? Promise.reject(this.failure) : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
            this.waiter = resolve;
            this.waiterFail = reject;
        });
    }
    /** Ends: no socket, no reconnect; a waiting `next()` gets the end, or `error`. */
    finish(error) {
        if (this.ended)
            return;
        this.ended = true;
        this.failure = error ?? undefined;
        if (this.timer !== undefined)
            clearTimeout(this.timer);
        this.drop();
        this.ends(error);
        if (this.waiter) {
            const [ok, fail] = [this.waiter, this.waiterFail];
            this.waiter = this.waiterFail = undefined;
            if (error && fail)
                fail(error);
            else
                ok({ value: undefined, done: true });
        }
    }
}
