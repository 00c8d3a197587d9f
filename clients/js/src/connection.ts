// What a live subscription (live.ts) and a durable stream (durable.ts) share:
// one websocket at a time to the proxy, opened again after an interruption
// with jittered backoff, and the frames it receives handed to an async
// iterator. Each says what its socket's frames and closes mean.

import { backoffMs, CloseCode, detachSocket, WalcastError, type WebSocketConstructor } from "./errors.js";

/** First and longest wait between reconnects (ms); each wait is drawn between half and all of it. */
export interface Backoff {
  initialMs?: number;
  maxMs?: number;
}

export abstract class Connection<F> {
  /** The current socket; events of any other are ignored. */
  protected socket: WebSocket | undefined;
  /** Whether the current socket opened: a close before that is a refused or failed upgrade. */
  protected opened = false;
  protected ended = false;
  /** Why the connection ended, or the refusal the proxy sent before closing. */
  protected failure: WalcastError | undefined;
  /** Reconnects since the last success; each waits longer. */
  protected attempt = 0;
  /** Frames received and not yet taken by the iterator. */
  protected readonly queue: F[] = [];
  private readonly Ws: WebSocketConstructor;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private waiter: ((r: IteratorResult<F>) => void) | undefined;
  private waiterFail: ((e: unknown) => void) | undefined;

  constructor(Ws: WebSocketConstructor | undefined, private readonly backoff: Backoff | undefined, noWebSocket: string) {
    const W = Ws ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!W) throw new WalcastError(noWebSocket);
    this.Ws = W;
  }

  /** Opens the next socket (`open` with its URL) or ends. */
  protected abstract connect(): Promise<void>;
  /** The current socket opened. */
  protected abstract opens(socket: WebSocket): void;
  /** A text frame of the current socket. */
  protected abstract receives(text: string): void;
  /** The current socket closed: reconnect (`retry`) or end (`finish`). */
  protected abstract closes(code: number, reason: string, opened: boolean): Promise<void>;
  /** A frame reaches the application (from the queue, or straight to a waiting `next()`). */
  protected handed(_frame: F): void {}
  /** The connection ended, with its error or null. */
  protected ends(_error: WalcastError | null): void {}

  /** Opens `url` as the current socket. */
  protected open(url: string): void {
    const socket = new this.Ws(url);
    this.socket = socket;
    this.opened = false;
    const closed = (code: number, reason: string) => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      void this.closes(code, reason, this.opened);
    };
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.opened = true;
      this.opens(socket);
    };
    socket.onmessage = (ev: MessageEvent) => {
      if (this.socket !== socket) return;
      this.receives(typeof ev.data === "string" ? ev.data : String(ev.data));
    };
    socket.onclose = (ev: CloseEvent) => closed(ev.code, ev.reason);
    socket.onerror = () => {
      // An open socket's close event follows with the code. A refused
      // upgrade may get no close event at all (Node.js 20).
      if (!this.opened) closed(CloseCode.Abnormal, "the websocket upgrade failed");
    };
  }

  /** Closes the current socket without hearing from it again. */
  protected drop(): void {
    const s = this.socket;
    this.socket = undefined;
    detachSocket(s);
  }

  /** The wait before the next reconnect: each one in a row waits longer. */
  protected nextWait(): number {
    const ms = backoffMs(this.attempt, this.backoff);
    this.attempt += 1;
    return ms;
  }

  /** Connects again in `ms` (replacing a reconnect already scheduled). */
  protected schedule(ms: number): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.connect();
    }, ms);
  }

  /** Gives a frame to a waiting `next()`, or queues it. */
  protected push(frame: F): void {
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
  protected take(): Promise<IteratorResult<F>> {
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
  protected finish(error: WalcastError | null): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = error ?? undefined;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.drop();
    this.ends(error);
    if (this.waiter) {
      const [ok, fail] = [this.waiter, this.waiterFail];
      this.waiter = this.waiterFail = undefined;
      if (error && fail) fail(error);
      else ok({ value: undefined, done: true });
    }
  }
}
