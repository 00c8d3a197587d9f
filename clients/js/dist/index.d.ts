export { isChange, subscribe, Subscription, type Action, type Change, type FilterErrorFrame, type Frame, type Selection, type SnapshotProgress, type SubscribeOptions, type Value, } from "./live.js";
export { CloseCode, ClosedError, PositionGoneError, RefusedError, WalcastError, type TokenSource, type WebSocketConstructor, } from "./errors.js";
export { Durable, DurableStream, compareLsn, type Created, type DurableFrame, type DurableOptions, type StreamOptions } from "./durable.js";
export { liveView, LiveView, type ViewChange, type ViewOptions } from "./view.js";
