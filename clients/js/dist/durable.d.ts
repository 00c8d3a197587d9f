import { Connection, type Backoff } from "./connection.js";
import { WalcastError, type TokenSource, type WebSocketConstructor } from "./errors.js";
import type { Value } from "./live.js";
/** A frame of a durable stream: transaction boundaries, changes, read events, progress. */
export interface DurableFrame {
    action?: "B" | "C" | "I" | "U" | "D" | "T" | "M" | "DDL" | "R";
    type?: string;
    lsn?: string;
    end_lsn?: string;
    xid?: number;
    schema?: string;
    table?: string;
    columns?: Record<string, Value>;
    identity?: Record<string, Value>;
    [key: string]: unknown;
}
/** The answer of `create`. */
export interface Created {
    slotName: string;
    /** The exported snapshot, or null with `exportSnapshot: false`. */
    snapshot: string | null;
    /** The slot's consistent point. */
    lsn: string;
    snapshotExpiresAt?: number;
}
export interface DurableOptions {
    token?: TokenSource;
    /** The WebSocket implementation (default: the global one). */
    WebSocket?: WebSocketConstructor;
    /** First and longest wait between reconnects (ms); each wait is drawn between half and all of it. */
    backoff?: Backoff;
}
export interface StreamOptions {
    /** Only the row changes this query selects (`B` and `C` always come). */
    query?: string;
    /** An uploaded WASM filter. */
    filter?: {
        id: string;
        config?: string;
    };
    /** Heartbeat messages while the stream is idle. */
    heartbeats?: boolean;
}
/** Compares two LSNs (`X/Y`): negative, zero or positive. */
export declare function compareLsn(a: string, b: string): number;
/** The durable stream endpoints of one proxy. */
export declare class Durable {
    private readonly options;
    private readonly http;
    private readonly ws;
    constructor(url: string, options?: DurableOptions);
    private token;
    private request;
    /** Creates a stream: a slot and (unless `exportSnapshot` is false) a snapshot consistent with it. */
    create(opts?: {
        name?: string;
        tables?: string[];
        exportSnapshot?: boolean;
    }): Promise<Created>;
    /** The streams of this proxy's database. */
    list(): Promise<unknown[]>;
    /** Drops a stream and its slot. */
    drop(slotName: string): Promise<void>;
    /** A table's rows inside the stream's snapshot, page by page (keyset paging by primary key). */
    snapshotPages(slotName: string, table: string, limit?: number): AsyncGenerator<Record<string, Value>[]>;
    /** Asks for tables' current rows inside the open stream (read events), without a held snapshot. */
    resnapshot(slotName: string, tables: string[], after?: Record<string, Value[]>): Promise<void>;
    /** Opens the stream; it reconnects after interruptions and resumes after the last ACK. */
    stream(slotName: string, opts?: StreamOptions): DurableStream;
}
/** An open durable stream: an async iterator of frames, and `ack`. */
export declare class DurableStream extends Connection<DurableFrame> implements AsyncIterable<DurableFrame> {
    private readonly wsUrl;
    private readonly httpUrl;
    private readonly params;
    private readonly token;
    /** The last position given to `ack`: every connection resumes after it. */
    acked: string | undefined;
    /** The last ACK the proxy has taken (on a socket that had sent it, or in a connection's URL). */
    private delivered;
    /** The furthest end_lsn received on the open socket (or carried by its URL): what it may ACK. */
    private reach;
    /** `close()` waits for a connection to carry the last ACK. */
    private closing;
    private closeTimer;
    /** The ACK the current socket's URL carries. */
    private carried;
    private readonly reconnectListeners;
    constructor(wsUrl: string, httpUrl: string, params: URLSearchParams, options: DurableOptions, token: () => Promise<string | undefined>);
    /** Called after each interruption, before the stream resumes after the last ACK. */
    onReconnect(fn: (r: {
        closeCode: number;
        reason: string;
    }) => void): () => void;
    /**
     * Says that every transaction up to this one is processed: a `C` frame
     * (its `end_lsn`) or an LSN. Call it only once the application has
     * processed the transaction: what is not ACKed comes again after a
     * reconnect.
     */
    ack(commit: DurableFrame | string): void;
    /**
     * Sends an ACK on the open socket when that socket sent the transaction
     * (the proxy refuses an ACK beyond what its connection sent). Otherwise
     * it waits: the next connection carries `acked`, or the transaction
     * comes again on this one and is ACKed then.
     */
    private sendAck;
    /** Whether the last ACK has not reached the proxy yet. */
    private undelivered;
    /**
     * Drops the socket and resumes after the last ACK: frames of the old
     * socket not yet taken are dropped, and the transaction in progress
     * comes again whole from its `B`.
     */
    reconnect(): void;
    /**
     * Ends the stream (the slot stays; `Durable.drop` removes it). Resolves
     * once the proxy has the last ACK: when it has not reached the proxy yet
     * (given while reconnecting), one short connection carries it. Rejects
     * when that connection fails.
     */
    close(timeoutMs?: number): Promise<void>;
    [Symbol.asyncIterator](): AsyncIterator<DurableFrame>;
    protected connect(): Promise<void>;
    protected opens(): void;
    protected receives(text: string): void;
    /** An interruption: frames of the old socket not yet taken are dropped; listeners hear of it. */
    private interrupted;
    protected closes(code: number, reason: string): Promise<void>;
    protected ends(error: WalcastError | null): void;
}
