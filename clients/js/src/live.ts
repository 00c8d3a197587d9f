// Live change streams: subscribe() and the Subscription it returns, and the
// frames a subscription hands out (the package's entry point is index.ts).
//
// A subscription reconnects by itself with jittered backoff and resumes from
// the position of the last frame it received (`after`), so the application
// sees every change once, in order, across dropped sockets and proxy
// restarts of the websocket. When the proxy no longer holds that position it
// ends with a PositionGoneError naming the oldest position held.

/**
 * What a change is: insert, update, delete, truncate, message, DDL, read
 * event, or `L`: a row the subscription held left its filtered query (an
 * update moved it out; `identity` holds its key). Apply `L` like `D`.
 */
export type Action = "I" | "U" | "D" | "T" | "M" | "DDL" | "R" | "L";

/** A column value as the stream writes it (see docs/format.md). */
export type Value = null | boolean | number | string | Value[] | { [key: string]: Value };

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
export function isChange(frame: Frame): frame is Change {
  return typeof (frame as Change).action === "string" && !("type" in frame);
}

import { Connection, type Backoff } from "./connection.js";
import {
  CloseCode,
  ClosedError,
  PositionGoneError,
  RefusedError,
  WalcastError,
  type TokenSource,
  type WebSocketConstructor,
} from "./errors.js";

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
export type Selection = string | { query?: string; filter: { id: string; config?: unknown } };

type Listener = (value: any) => void;

interface Events {
  /** Each frame (change, progress, filter error), in order. */
  frame: Frame;
  /** Each change or read event. */
  change: Change;
  snapshot: SnapshotProgress;
  filter_error: FilterErrorFrame;
  /** The proxy took a refreshed token: its new expiry (unix seconds). */
  token: { expires_at: number | null };
  /** A socket opened and the subscription was sent (`resync`: with a snapshot, after an interruption). */
  open: { after: string | undefined; resync: boolean };
  /** A socket closed and the subscription will reconnect in `inMs`. */
  reconnect: { closeCode: number; reason: string; inMs: number };
  /** The subscription ended: with an error, or null when closed by the application. */
  end: WalcastError | null;
}

const POSITION = /^[0-9A-F]{16}:[0-9A-F]{8}$/;

/** Opens a live subscription; it connects at once and until `close()`. */
export function subscribe(url: string, selection: Selection, options: SubscribeOptions = {}): Subscription {
  return new Subscription(url, selection, options);
}

/** A live subscription: an async iterator of frames and an event emitter. */
export class Subscription extends Connection<Frame> implements AsyncIterable<Frame> {
  /** The `pos` of the last change handed to the application (save it to resume). */
  position: string | undefined;
  /** The `pos` of the last change received: where a reconnect resumes. */
  private received: string | undefined;
  private snapshotPending: boolean;
  private openedBefore = false;
  private readonly wsUrl: string;
  private readonly httpUrl: string;
  private paused = false;
  private refresher: ReturnType<typeof setInterval> | undefined;
  private iterating = false;
  private readonly listeners = new Map<keyof Events, Set<Listener>>();

  constructor(url: string, private readonly selection: Selection, private readonly options: SubscribeOptions) {
    super(
      options.WebSocket,
      options.backoff,
      "no WebSocket in this runtime: use Node.js 22+ (or 20 with --experimental-websocket), or pass options.WebSocket",
    );
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
  on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Ends the subscription. */
  close(): void {
    this.finish(null);
  }

  /** Drops the current socket and reconnects from the last position received (after a network change, say). */
  reconnect(): void {
    if (this.ended) return;
    this.drop();
    this.schedule(0);
  }

  [Symbol.asyncIterator](): AsyncIterator<Frame> {
    this.iterating = true;
    return {
      next: () => this.take(),
      return: async () => {
        this.close();
        return { value: undefined, done: true };
      },
    };
  }

  protected override handed(frame: Frame): void {
    const pos = (frame as Change).pos;
    if (typeof pos === "string") this.position = pos;
    this.maybeResume();
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const l of this.listeners.get(event) ?? []) {
      try {
        l(value);
      } catch (e) {
        // A listener's error is the application's; it does not stop the stream.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  private async token(): Promise<string | undefined> {
    const t = this.options.token;
    return typeof t === "function" ? await t() : t;
  }

  private subscribeFrame(): string {
    const sub: Record<string, unknown> = {};
    if (typeof this.selection === "string") {
      sub.query = this.selection;
    } else {
      if (this.selection.query !== undefined) sub.query = this.selection.query;
      sub.filter = { id: this.selection.filter.id, config: this.selection.filter.config ?? null };
    }
    if (this.received !== undefined) sub.after = this.received;
    if (this.snapshotPending) sub.snapshot = true;
    return JSON.stringify({ subscribe: sub });
  }

  protected async connect(): Promise<void> {
    if (this.ended) return;
    let token: string | undefined;
    try {
      token = await this.token();
    } catch (e) {
      this.finish(new WalcastError(`the token function failed: ${String(e)}`));
      return;
    }
    if (this.ended) return;
    const url = token === undefined ? this.wsUrl : `${this.wsUrl}?access_token=${encodeURIComponent(token)}`;
    try {
      this.open(url);
    } catch (e) {
      this.finish(new WalcastError(`cannot open ${this.wsUrl}: ${String(e)}`));
    }
  }

  protected opens(socket: WebSocket): void {
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

  private startRefresh(socket: WebSocket): void {
    const every = this.options.refreshTokenEveryMs;
    if (typeof this.options.token !== "function" || !every) return;
    this.stopRefresh();
    this.refresher = setInterval(async () => {
      try {
        const t = await this.token();
        if (this.socket === socket && t !== undefined) socket.send(JSON.stringify({ access_token: t }));
      } catch {
        // The next refresh, or the reconnect after the token expires, tries again.
      }
    }, every);
  }

  private stopRefresh(): void {
    if (this.refresher !== undefined) clearInterval(this.refresher);
    this.refresher = undefined;
  }

  protected receives(text: string): void {
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(text);
    } catch {
      this.finish(new WalcastError(`the proxy sent a frame that is not JSON: ${text.slice(0, 200)}`));
      return;
    }
    if (typeof v !== "object" || v === null) return;
    if (typeof v.error === "string" && v.action === undefined && v.type === undefined) {
      this.failure = this.refusal(v);
      return; // The proxy closes the socket next.
    }
    if (v.type === "token") {
      this.emit("token", { expires_at: (v.expires_at as number | null) ?? null });
      return;
    }
    const frame = v as unknown as Frame;
    const pos = (frame as Change).pos;
    if (typeof pos === "string") {
      // Positions compare as strings; a frame at or before the last one
      // received was delivered already (a resume never repeats one, this
      // is a guard).
      if (this.received !== undefined && pos <= this.received) return;
      this.received = pos;
    }
    if (v.type === "snapshot" && v.state === "done") this.snapshotPending = false;
    this.attempt = 0;
    this.deliver(frame);
  }

  private refusal(v: Record<string, unknown>): WalcastError {
    const message = v.error as string;
    const code = typeof v.code === "string" ? v.code : undefined;
    if (code === "POSITION_GONE") return new PositionGoneError(message, (v.oldest as string | null) ?? null);
    if (code === "NOT_READY") return new WalcastError(message, code);
    const position = typeof v.position === "number" ? v.position : undefined;
    return new RefusedError(message, code ?? (position !== undefined ? "INVALID_QUERY" : undefined), undefined, position);
  }

  private deliver(frame: Frame): void {
    this.emit("frame", frame);
    if (isChange(frame)) this.emit("change", frame);
    else if (frame.type === "snapshot") this.emit("snapshot", frame);
    else if (frame.type === "filter_error") this.emit("filter_error", frame);
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

  private maybeResume(): void {
    const max = this.options.maxBuffered ?? 10_000;
    if (this.paused && this.queue.length <= max / 2 && !this.ended) {
      this.paused = false;
      this.schedule(0);
    }
  }

  protected override drop(): void {
    this.stopRefresh();
    super.drop();
  }

  protected async closes(code: number, reason: string, opened: boolean): Promise<void> {
    this.stopRefresh();
    if (this.ended) return;
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

  private async diagnose(): Promise<WalcastError | undefined> {
    if (typeof fetch !== "function") return undefined;
    const params = new URLSearchParams();
    if (typeof this.selection === "string") params.set("query", this.selection);
    else {
      if (this.selection.query !== undefined) params.set("query", this.selection.query);
      params.set("filter", this.selection.filter.id);
    }
    let token: string | undefined;
    try {
      token = await this.token();
    } catch {
      return undefined;
    }
    if (token !== undefined) params.set("access_token", token);
    let res: Response;
    try {
      res = await fetch(`${this.httpUrl}?${params}`);
    } catch {
      return undefined; // Out of reach: retry.
    }
    if (res.status === 429 || res.status >= 500) return undefined;
    let body: Record<string, unknown> = {};
    try {
      body = await res.json();
    } catch {
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

  private retry(closeCode: number, reason: string): void {
    const inMs = this.nextWait();
    this.emit("reconnect", { closeCode, reason, inMs });
    this.schedule(inMs);
  }

  protected override ends(error: WalcastError | null): void {
    this.emit("end", error);
  }
}
