//! The live path: every change read once from the proxy's slot (or a
//! JetStream stream), stored once, read by many websocket clients.
//!
//! ```text
//! reader / nats edge -> hub.rs     each change into the log (crate::log: stream
//!                                  order, byte-bounded), its seq onto the match
//!                                  list of every query group it matches
//!                       group.rs   the clients of one query and their match list
//!                       cursor.rs  one client's place: next seq, its group
//!                       session.rs one websocket: bursts from the cursor through
//!                                  the delivery rules, pings, stalls, snapshot chunks
//!                       subscription.rs  a subscription (URL or first frame) admitted
//!                       view.rs    with row filters: the rows a client holds, so a
//!                                  held row that is deleted or moves out reaches it
//! ```

pub mod cursor;
pub mod group;
pub mod hub;
pub mod session;
pub mod subscription;
pub mod view;
