// A live view (docs/proxy.md#live-views): the rows a filtered query selects,
// by key, kept current by applying every frame of a `snapshot: true`
// subscription, with an event per change.
//
//   const view = liveView("wss://rt.example.com", "*:orders:status.eq.open", { key: ["id"] });
//   view.on("change", (c) => c.kind === "put" ? render(c.key, c.row) : unrender(c.key));
//   view.on("ready", () => hideSpinner());       // the current rows are in
//
// `R`, `I` and `U` put a row, `D` and `L` (a held row left the query)
// remove one, `T` empties the view. After an interruption the subscription
// reads the rows again (`resync`); rows from before that it did not put
// again by its `done` frame are removed.

import { subscribe, type Change, type Frame, type SubscribeOptions, type Subscription, type Value } from "./live.js";
import type { WalcastError } from "./errors.js";

export interface ViewOptions extends Omit<SubscribeOptions, "snapshot" | "resync" | "after"> {
  /** The table's key columns (its primary key, or replica identity index): default `["id"]`. */
  key?: string[];
}

/** One change of the view. */
export type ViewChange =
  | { kind: "put"; key: string; row: Record<string, Value>; frame: Change }
  | { kind: "remove"; key: string; row: Record<string, Value>; reason: "delete" | "leave" | "truncate" | "resync"; frame?: Change };

type Events = {
  change: ViewChange;
  /** The current rows are in (the snapshot's `done`), after each resync too. */
  ready: void;
  end: WalcastError | null;
};

/** Opens a live view of `query`. */
export function liveView(url: string, query: string, options: ViewOptions = {}): LiveView {
  return new LiveView(url, query, options);
}

/** The rows of a filtered query, kept current. */
export class LiveView {
  /** The rows, by the JSON array of their key values. */
  readonly rows = new Map<string, Record<string, Value>>();
  /** Whether the current rows are in (the last snapshot is done). */
  ready = false;
  readonly subscription: Subscription;
  private readonly key: string[];
  /** During a resync: the keys from before not put again yet. */
  private stale: Set<string> | undefined;
  private readonly listeners = new Map<keyof Events, Set<(v: any) => void>>();

  constructor(url: string, query: string, options: ViewOptions = {}) {
    this.key = options.key ?? ["id"];
    this.subscription = subscribe(url, query, { ...options, snapshot: true, resync: true });
    this.subscription.on("open", ({ resync }) => {
      if (resync) {
        this.ready = false;
        this.stale = new Set(this.rows.keys());
      }
    });
    this.subscription.on("frame", (f) => this.apply(f));
    this.subscription.on("end", (e) => this.emit("end", e));
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: (v: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Ends the view's subscription. */
  close(): void {
    this.subscription.close();
  }

  /** The key of a row (or of an `identity`): the JSON array of its key values. */
  keyOf(row: Record<string, Value>): string | undefined {
    const values = this.key.map((k) => row[k]);
    return values.some((v) => v === undefined) ? undefined : JSON.stringify(values);
  }

  private emit<K extends keyof Events>(event: K, v: Events[K]): void {
    for (const fn of this.listeners.get(event) ?? []) fn(v);
  }

  private put(row: Record<string, Value>, frame: Change): void {
    const key = this.keyOf(row);
    if (key === undefined) return;
    this.stale?.delete(key);
    this.rows.set(key, row);
    this.emit("change", { kind: "put", key, row, frame });
  }

  private remove(key: string | undefined, reason: "delete" | "leave" | "truncate" | "resync", frame?: Change): void {
    if (key === undefined) return;
    const row = this.rows.get(key);
    if (row === undefined) return;
    this.rows.delete(key);
    this.stale?.delete(key);
    this.emit("change", { kind: "remove", key, row, reason, frame });
  }

  private apply(f: Frame): void {
    if ("type" in f) {
      if (f.type === "snapshot" && f.state === "done") {
        for (const key of this.stale ?? []) this.remove(key, "resync");
        this.stale = undefined;
        this.ready = true;
        this.emit("ready", undefined);
      }
      return;
    }
    const c = f as Change;
    switch (c.action) {
      case "R":
      case "I":
        if (c.columns) this.put(c.columns, c);
        break;
      case "U": {
        if (!c.columns) break;
        const old = c.identity ? this.keyOf(c.identity) : undefined;
        const key = this.keyOf(c.columns);
        // Unchanged TOASTed columns are left out of an update: keep them.
        const before = this.rows.get(old ?? key ?? "");
        if (old !== undefined && old !== key) this.remove(old, "leave", c);
        const row = before && Array.isArray(c.unchanged_toast) ? { ...pick(before, c.unchanged_toast as string[]), ...c.columns } : c.columns;
        this.put(row, c);
        break;
      }
      case "D":
        if (c.identity) this.remove(this.keyOf(c.identity), "delete", c);
        break;
      case "L":
        if (c.identity) this.remove(this.keyOf(c.identity), "leave", c);
        break;
      case "T":
        for (const key of [...this.rows.keys()]) this.remove(key, "truncate", c);
        break;
    }
  }
}

function pick(row: Record<string, Value>, columns: string[]): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const c of columns) if (c in row) out[c] = row[c];
  return out;
}
