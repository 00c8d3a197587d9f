//! A durable stream's client in tests: create a stream, open its
//! websocket, read its frames and whole transactions.

use super::{json, Client, Got, Proxy};
use std::time::{Duration, Instant};

/// How long a frame may take.
const WAIT: Duration = Duration::from_secs(15);

/// `GET /v1/init?...`'s answer (fails unless 200).
pub fn init(proxy: &Proxy, path: &str) -> serde_json::Value {
    let (status, body) = proxy.get(path).expect("init");
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// The stream's websocket, `/v1/lr/stream?slotName=...`.
pub fn stream(proxy: &Proxy, slot: &str) -> Client {
    proxy
        .try_ws_url(&format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}",
            proxy.port
        ))
        .unwrap_or_else(|e| panic!("opening the stream {slot}: {e:?}"))
}

/// The first page (at most 1000 rows) of the stream `slot`'s snapshot of
/// `table` (fails unless 200).
pub fn page(proxy: &Proxy, slot: &str, table: &str) -> Vec<serde_json::Value> {
    let (status, body) = proxy
        .post(
            "/v1/snapshot/data",
            &format!(r#"{{"slotName":"{slot}","table":"{table}","limit":1000}}"#),
        )
        .expect("snapshot page");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a page of rows")
}

/// The next frame as JSON (panics on close or timeout).
pub fn frame(c: &mut Client) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        match c.next() {
            Some(Got::Text(t)) => return json(&t),
            Some(Got::Closed(code, reason)) => panic!("closed: {code} {reason}"),
            None => assert!(Instant::now() < deadline, "no frame within {WAIT:?}"),
        }
    }
}

/// The next frame that is not a transaction's `B` or `C`: an answer to
/// the client (ACK reply, warning, error) or a message, passing over the
/// server's own empty transactions.
pub fn reply(c: &mut Client) -> serde_json::Value {
    loop {
        let f = frame(c);
        if !matches!(f["action"].as_str(), Some("B" | "C")) {
            return f;
        }
    }
}

/// Reads the next transaction that has changes: (B, changes, C). Empty ones
/// are passed over: besides those the test makes, the server's own
/// transactions in the database (autovacuum's ANALYZE of a catalog) arrive
/// as a B and a C with nothing between.
pub fn transaction(
    c: &mut Client,
) -> (serde_json::Value, Vec<serde_json::Value>, serde_json::Value) {
    loop {
        let t = any_transaction(c);
        if !t.1.is_empty() {
            return t;
        }
    }
}

/// Reads one whole transaction, empty or not: (B, changes, C).
pub fn any_transaction(
    c: &mut Client,
) -> (serde_json::Value, Vec<serde_json::Value>, serde_json::Value) {
    let b = frame(c);
    assert_eq!(b["action"], "B", "a transaction starts with B: {b}");
    let mut changes = Vec::new();
    loop {
        let f = frame(c);
        if f["action"] == "C" {
            assert_eq!(f["xid"], b["xid"]);
            return (b, changes, f);
        }
        changes.push(f);
    }
}
