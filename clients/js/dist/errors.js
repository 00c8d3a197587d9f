// The errors of the walcast client, and what the live and durable halves share.
/** Close codes the proxy uses (docs/proxy.md, "Errors and close codes"). */
export const CloseCode = {
    Normal: 1000,
    GoingAway: 1001,
    Abnormal: 1006,
    Policy: 1008,
    ServerError: 1011,
    TryAgainLater: 1013,
};
/** Every error of this client. `code` is the proxy's code when it sent one. */
export class WalcastError extends Error {
    code;
    constructor(message, code) {
        super(message);
        this.name = "WalcastError";
        this.code = code;
    }
}
/** The proxy no longer holds the changes after the requested position. */
export class PositionGoneError extends WalcastError {
    /** The oldest position the proxy holds, or null when it started after the position. */
    oldest;
    constructor(message, oldest) {
        super(message, "POSITION_GONE");
        this.name = "PositionGoneError";
        this.oldest = oldest;
    }
}
/** The subscription was refused: a bad query, a table that does not exist or is not allowed, a filter that cannot start, a missing or invalid token. */
export class RefusedError extends WalcastError {
    /** The HTTP status when the refusal came as one. */
    status;
    /** The byte offset of a query error. */
    position;
    constructor(message, code, status, position) {
        super(message, code);
        this.name = "RefusedError";
        this.status = status;
        this.position = position;
    }
}
/** The proxy closed the socket for a reason retrying cannot fix. */
export class ClosedError extends WalcastError {
    closeCode;
    reason;
    constructor(closeCode, reason) {
        super(`closed by the proxy (${closeCode}): ${reason}`);
        this.name = "ClosedError";
        this.closeCode = closeCode;
        this.reason = reason;
    }
}
/** The wait before reconnect number `attempt` (from 0): doubling from the
 * first wait (100 ms) to the longest (10 s), each drawn between half and all
 * of it. */
export function backoffMs(attempt, backoff) {
    const initial = backoff?.initialMs ?? 100;
    const max = backoff?.maxMs ?? 10_000;
    const full = Math.min(max, initial * 2 ** Math.min(attempt, 20));
    return Math.round(full * (0.5 + Math.random() / 2));
}
/** Stops listening to a socket and closes it. */
export function detachSocket(s) {
    if (!s)
        return;
    s.onopen = s.onmessage = s.onclose = s.onerror = null;
    try {
        s.close(CloseCode.Normal, "client reconnects");
    }
    catch {
        // Already closing.
    }
}
