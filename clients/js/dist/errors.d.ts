/** Close codes the proxy uses (docs/proxy.md, "Errors and close codes"). */
export declare const CloseCode: {
    readonly Normal: 1000;
    readonly GoingAway: 1001;
    readonly Abnormal: 1006;
    readonly Policy: 1008;
    readonly ServerError: 1011;
    readonly TryAgainLater: 1013;
};
/** Every error of this client. `code` is the proxy's code when it sent one. */
export declare class WalcastError extends Error {
    readonly code: string | undefined;
    constructor(message: string, code?: string);
}
/** The proxy no longer holds the changes after the requested position. */
export declare class PositionGoneError extends WalcastError {
    /** The oldest position the proxy holds, or null when it started after the position. */
    readonly oldest: string | null;
    constructor(message: string, oldest: string | null);
}
/** The subscription was refused: a bad query, a table that does not exist or is not allowed, a filter that cannot start, a missing or invalid token. */
export declare class RefusedError extends WalcastError {
    /** The HTTP status when the refusal came as one. */
    readonly status: number | undefined;
    /** The byte offset of a query error. */
    readonly position: number | undefined;
    constructor(message: string, code?: string, status?: number, position?: number);
}
/** The proxy closed the socket for a reason retrying cannot fix. */
export declare class ClosedError extends WalcastError {
    readonly closeCode: number;
    readonly reason: string;
    constructor(closeCode: number, reason: string);
}
/** A constructor with the standard WebSocket interface. */
export type WebSocketConstructor = new (url: string) => WebSocket;
/** A token, or a function that returns a fresh one (called at every connect and refresh). */
export type TokenSource = string | (() => string | Promise<string>);
/** The wait before reconnect number `attempt` (from 0): doubling from the
 * first wait (100 ms) to the longest (10 s), each drawn between half and all
 * of it. */
export declare function backoffMs(attempt: number, backoff?: {
    initialMs?: number;
    maxMs?: number;
}): number;
/** Stops listening to a socket and closes it. */
export declare function detachSocket(s: WebSocket | undefined): void;
