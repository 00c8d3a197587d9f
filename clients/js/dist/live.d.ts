/**
 * What a change is: insert, update, delete, truncate, message, DDL, read
 * event, or `L`: a row the subscription held left its filtered query (an
 * update moved it out; `identity` holds its key). Apply `L` like `D`.
 */
export type Action = "I" | "U" | "D" | "T" | "M" | "DDL" | "R" | "L";
/** A column value as the stream writes it (see docs/format.md). */
export type Value = null | boolean | number | string | Value[] | {
    [key: string]: Value;
};
/** One change, as the walcast plugin writes it (docs/format.md). */
export interface Change {
    action: Action;
    schema?: string;
    table?: string;
    /** The row after an insert or update, or a read event's row. */
    columns?: Record<string, Value>;
    /** The key (or the whole old row) of an update or delete. */
    identity?: Record<string, Value>;
    lsn?: string;
    xid?: number;
    ts?: string;
    /** The position: commit LSN and index in the transaction. Absent on read events. */
    pos?: string;
    [key: string]: unknown;
}
/** A progress frame of a `snapshot: true` subscription. */
export interface SnapshotProgress {
    type: "snapshot";
    state: "running" | "done";
    table: string;
    chunk: number;
    chunks_estimated: number;
    rows: number;
    next: Value[] | null;
}
/** The client's WASM filter failed on one change (the change is not delivered). */
export interface FilterErrorFrame {
    type: "filter_error";
    code: string;
    message: string;
    lsn?: string;
    pos?: string | null;
}
/** Everything a subscription yields. A WASM filter may replace changes by its own objects. */
export type Frame = Change | SnapshotProgress | FilterErrorFrame;
/** Whether a frame is a change (or a read event), not a progress or error frame. */
export declare function isChange(frame: Frame): frame is Change;
import { Connection, type Backoff } from "./connection.js";
import { WalcastError, type TokenSource, type WebSocketConstructor } from "./errors.js";
export interface SubscribeOptions {
    /** Resume after this position (a `pos` the application processed, saved across reloads). */
    after?: string;
    /** The rows the query matches now as read events (`R`) first, then the changes. */
    snapshot?: boolean;
    /**
     * After an interruption, subscribe again with a snapshot instead of
     * resuming after the last position: a live view's rows are read again, so
     * rows that left it while the socket was down are noticed (`LiveView` uses
     * it; docs/proxy.md#live-views).
     */
    resync?: boolean;
    /** Sent as `access_token` when connecting. */
    token?: TokenSource;
    /** With a token function: send a fresh token on the open socket this often (ms). */
    refreshTokenEveryMs?: number;
    /** First and longest wait between reconnects (ms); each wait is drawn between half and all of it. */
    backoff?: Backoff;
    /** Frames waiting for the iterator before the socket is closed, to be resumed once they are read (default 10,000). */
    maxBuffered?: number;
    /** The WebSocket implementation (default: the global one). */
    WebSocket?: WebSocketConstructor;
}
/** What a subscription asks for: a query, or a WASM filter (with an optional query before it). */
export type Selection = string | {
    query?: string;
    filter: {
        id: string;
        config?: unknown;
    };
};
interface Events {
    /** Each frame (change, progress, filter error), in order. */
    frame: Frame;
    /** Each change or read event. */
    change: Change;
    snapshot: SnapshotProgress;
    filter_error: FilterErrorFrame;
    /** The proxy took a refreshed token: its new expiry (unix seconds). */
    token: {
        expires_at: number | null;
    };
    /** A socket opened and the subscription was sent (`resync`: with a snapshot, after an interruption). */
    open: {
        after: string | undefined;
        resync: boolean;
    };
    /** A socket closed and the subscription will reconnect in `inMs`. */
    reconnect: {
        closeCode: number;
        reason: string;
        inMs: number;
    };
    /** The subscription ended: with an error, or null when closed by the application. */
    end: WalcastError | null;
}
/** Opens a live subscription; it connects at once and until `close()`. */
export declare function subscribe(url: string, selection: Selection, options?: SubscribeOptions): Subscription;
/** A live subscription: an async iterator of frames and an event emitter. */
export declare class Subscription extends Connection<Frame> implements AsyncIterable<Frame> {
    private readonly selection;
    private readonly options;
    /** The `pos` of the last change handed to the application (save it to resume). */
    position: string | undefined;
    /** The `pos` of the last change received: where a reconnect resumes. */
    private received;
    private snapshotPending;
    private openedBefore;
    private readonly wsUrl;
    private readonly httpUrl;
    private paused;
    private refresher;
    private iterating;
    private readonly listeners;
    constructor(url: string, selection: Selection, options: SubscribeOptions);
    /** Adds a listener; returns a function that removes it. */
    on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void;
    /** Ends the subscription. */
    close(): void;
    /** Drops the current socket and reconnects from the last position received (after a network change, say). */
    reconnect(): void;
    [Symbol.asyncIterator](): AsyncIterator<Frame>;
    protected handed(frame: Frame): void;
    private emit;
    private token;
    private subscribeFrame;
    protected connect(): Promise<void>;
    protected opens(socket: WebSocket): void;
    private startRefresh;
    private stopRefresh;
    protected receives(text: string): void;
    private refusal;
    private deliver;
    private maybeResume;
    protected drop(): void;
    protected closes(code: number, reason: string, opened: boolean): Promise<void>;
    private diagnose;
    private retry;
    protected ends(error: WalcastError | null): void;
}
export {};
