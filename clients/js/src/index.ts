// walcast: a client for walcast-proxy's live change streams, for browsers
// and Node.js (any runtime with a global WebSocket, or one passed in).
//
//   const sub = subscribe("ws://localhost:8080", "insert,update:orders:status.eq.paid");
//   for await (const frame of sub) { if (isChange(frame)) apply(frame); }
//
// A subscription reconnects by itself with jittered backoff and resumes from
// the position of the last frame it received (`after`), so the application
// sees every change once, in order, across dropped sockets and proxy
// restarts of the websocket. When the proxy no longer holds that position it
// ends with a PositionGoneError naming the oldest position held.

export {
  isChange,
  subscribe,
  Subscription,
  type Action,
  type Change,
  type FilterErrorFrame,
  type Frame,
  type Selection,
  type SnapshotProgress,
  type SubscribeOptions,
  type Value,
} from "./live.js";
export {
  CloseCode,
  ClosedError,
  PositionGoneError,
  RefusedError,
  WalcastError,
  type TokenSource,
  type WebSocketConstructor,
} from "./errors.js";
export { Durable, DurableStream, compareLsn, type Created, type DurableFrame, type DurableOptions, type StreamOptions } from "./durable.js";
export { liveView, LiveView, type ViewChange, type ViewOptions } from "./view.js";
