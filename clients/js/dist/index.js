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
export { isChange, subscribe, Subscription, } from "./live.js";
export { CloseCode, ClosedError, PositionGoneError, RefusedError, WalcastError, } from "./errors.js";
export { Durable, DurableStream, compareLsn } from "./durable.js";
export { liveView, LiveView } from "./view.js";
