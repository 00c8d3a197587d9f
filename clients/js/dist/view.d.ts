import { type Change, type SubscribeOptions, type Subscription, type Value } from "./live.js";
import type { WalcastError } from "./errors.js";
export interface ViewOptions extends Omit<SubscribeOptions, "snapshot" | "resync" | "after"> {
    /** The table's key columns (its primary key, or replica identity index): default `["id"]`. */
    key?: string[];
}
/** One change of the view. */
export type ViewChange = {
    kind: "put";
    key: string;
    row: Record<string, Value>;
    frame: Change;
} | {
    kind: "remove";
    key: string;
    row: Record<string, Value>;
    reason: "delete" | "leave" | "truncate" | "resync";
    frame?: Change;
};
type Events = {
    change: ViewChange;
    /** The current rows are in (the snapshot's `done`), after each resync too. */
    ready: void;
    end: WalcastError | null;
};
/** Opens a live view of `query`. */
export declare function liveView(url: string, query: string, options?: ViewOptions): LiveView;
/** The rows of a filtered query, kept current. */
export declare class LiveView {
    /** The rows, by the JSON array of their key values. */
    readonly rows: Map<string, Record<string, Value>>;
    /** Whether the current rows are in (the last snapshot is done). */
    ready: boolean;
    readonly subscription: Subscription;
    private readonly key;
    /** During a resync: the keys from before not put again yet. */
    private stale;
    private readonly listeners;
    constructor(url: string, query: string, options?: ViewOptions);
    /** Adds a listener; returns a function that removes it. */
    on<K extends keyof Events>(event: K, fn: (v: Events[K]) => void): () => void;
    /** Ends the view's subscription. */
    close(): void;
    /** The key of a row (or of an `identity`): the JSON array of its key values. */
    keyOf(row: Record<string, Value>): string | undefined;
    private emit;
    private put;
    private remove;
    private apply;
}
export {};
