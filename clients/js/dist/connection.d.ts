import { WalcastError, type WebSocketConstructor } from "./errors.js";
/** First and longest wait between reconnects (ms); each wait is drawn between half and all of it. */
export interface Backoff {
    initialMs?: number;
    maxMs?: number;
}
export declare abstract class Connection<F> {
    private readonly backoff;
    /** The current socket; events of any other are ignored. */
    protected socket: WebSocket | undefined;
    /** Whether the current socket opened: a close before that is a refused or failed upgrade. */
    protected opened: boolean;
    protected ended: boolean;
    /** Why the connection ended, or the refusal the proxy sent before closing. */
    protected failure: WalcastError | undefined;
    /** Reconnects since the last success; each waits longer. */
    protected attempt: number;
    /** Frames received and not yet taken by the iterator. */
    protected readonly queue: F[];
    private readonly Ws;
    private timer;
    private waiter;
    private waiterFail;
    constructor(Ws: WebSocketConstructor | undefined, backoff: Backoff | undefined, noWebSocket: string);
    /** Opens the next socket (`open` with its URL) or ends. */
    protected abstract connect(): Promise<void>;
    /** The current socket opened. */
    protected abstract opens(socket: WebSocket): void;
    /** A text frame of the current socket. */
    protected abstract receives(text: string): void;
    /** The current socket closed: reconnect (`retry`) or end (`finish`). */
    protected abstract closes(code: number, reason: string, opened: boolean): Promise<void>;
    /** A frame reaches the application (from the queue, or straight to a waiting `next()`). */
    protected handed(_frame: F): void;
    /** The connection ended, with its error or null. */
    protected ends(_error: WalcastError | null): void;
    /** Opens `url` as the current socket. */
    protected open(url: string): void;
    /** Closes the current socket without hearing from it again. */
    protected drop(): void;
    /** The wait before the next reconnect: each one in a row waits longer. */
    protected nextWait(): number;
    /** Connects again in `ms` (replacing a reconnect already scheduled). */
    protected schedule(ms: number): void;
    /** Gives a frame to a waiting `next()`, or queues it. */
    protected push(frame: F): void;
    /** The iterator's `next`: a queued frame, the end (or its error), or a wait for the next frame. */
    protected take(): Promise<IteratorResult<F>>;
    /** Ends: no socket, no reconnect; a waiting `next()` gets the end, or `error`. */
    protected finish(error: WalcastError | null): void;
}
