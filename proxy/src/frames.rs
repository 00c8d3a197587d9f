//! Every frame the proxy writes itself, in one type: errors, warnings, ACK
//! replies, snapshot progress, a filter's error, the answer to a token
//! refresh. The plugin's changes go out as the plugin wrote them and are not
//! here.
//! Keys come out in the order written below (docs/proxy.md and
//! docs/streams.md show them so).

use serde::Serialize;
use walcast_format::Position;

/// A frame of the proxy's own.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Frame<'a> {
    /// `{"type": ...}` frames.
    Typed(Typed<'a>),
    /// `{"error", "code"?, "position"?, "oldest"?}`: why something was
    /// refused or failed (also the body of an HTTP error).
    Error(Error<'a>),
    /// `{"warning"}`: taken, but probably not what the client meant.
    Warning { warning: &'a str },
    /// `{"ack"}`: the position a durable stream's ACK confirmed.
    Ack { ack: String },
}

/// The frames with a `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Typed<'a> {
    /// A snapshot's progress, its end (`done`) or its failure.
    Snapshot(Snapshot<'a>),
    /// The client's WASM filter failed on one change (which is not sent).
    FilterError {
        code: &'a str,
        message: &'a str,
        lsn: String,
        pos: Option<String>,
    },
    /// A token refresh was taken: when the new grant expires (seconds since
    /// the epoch; `null`: never).
    Token { expires_at: Option<u64> },
}

/// `{"type":"snapshot", "state", "table", ...}`.
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    /// `running`, `done` or `failed`.
    pub state: &'a str,
    /// `schema.table`.
    pub table: &'a str,
    #[serde(flatten)]
    pub progress: Option<Progress>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// Where a snapshot is: the chunk sent, how many are expected, the rows so
/// far and the key the next chunk starts after (null after the last).
#[derive(Debug, Serialize)]
pub struct Progress {
    pub chunk: u32,
    pub chunks_estimated: u64,
    pub rows: u64,
    pub next: Option<serde_json::Value>,
}

/// `{"error", "code"?, "position"?, "oldest"?}`.
#[derive(Debug, Serialize)]
pub struct Error<'a> {
    pub error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    /// The byte offset of a query's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// With `POSITION_GONE`: the oldest position held (null: none before
    /// this proxy started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<Option<String>>,
}

impl<'a> Error<'a> {
    /// An error with its message only.
    pub fn new(error: &'a str) -> Error<'a> {
        Error {
            error,
            code: None,
            position: None,
            oldest: None,
        }
    }
}

impl Frame<'_> {
    /// The frame as websocket text.
    pub fn text(&self) -> String {
        // A frame of strings, numbers and options always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The frame as a JSON value (an HTTP body).
    pub fn value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// The frame of a snapshot that failed.
pub fn snapshot_failed(table: &str, error: &str) -> String {
    Frame::Typed(Typed::Snapshot(Snapshot {
        state: "failed",
        table,
        progress: None,
        error: Some(error),
    }))
    .text()
}

/// `{"error","code":"POSITION_GONE","oldest"}`: a resume position is no
/// longer held (the body of HTTP 410, or a first frame's error frame);
/// `lost`: why, when the stream lost the changes for good.
pub fn position_gone(oldest: Option<Position>, lost: Option<&str>) -> String {
    let message = match (lost, oldest) {
        (Some(why), _) => format!("changes after this position will not come ({why}): re-sync, then subscribe without \"after\""),
        (None, Some(o)) => format!("changes after this position are no longer held (the oldest held is {o}): re-sync, then subscribe without \"after\""),
        (None, None) => "changes after this position are no longer held (this proxy started after it): re-sync, then subscribe without \"after\"".to_owned(),
    };
    Frame::Error(Error {
        code: Some("POSITION_GONE"),
        oldest: Some(oldest.map(|p| p.to_string())),
        ..Error::new(&message)
    })
    .text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_keys_in_the_documented_order() {
        let running = Frame::Typed(Typed::Snapshot(Snapshot {
            state: "running",
            table: "public.orders",
            progress: Some(Progress {
                chunk: 1,
                chunks_estimated: 40,
                rows: 1000,
                next: Some(serde_json::json!([42250])),
            }),
            error: None,
        }));
        assert_eq!(
            running.text(),
            r#"{"type":"snapshot","state":"running","table":"public.orders","chunk":1,"chunks_estimated":40,"rows":1000,"next":[42250]}"#
        );
        assert_eq!(
            snapshot_failed("public.t", "no"),
            r#"{"type":"snapshot","state":"failed","table":"public.t","error":"no"}"#
        );
        assert_eq!(
            position_gone(None, None),
            r#"{"error":"changes after this position are no longer held (this proxy started after it): re-sync, then subscribe without \"after\"","code":"POSITION_GONE","oldest":null}"#
        );
        let e = Frame::Error(Error {
            position: Some(3),
            ..Error::new("bad")
        });
        assert_eq!(e.text(), r#"{"error":"bad","position":3}"#);
        assert_eq!(
            Frame::Ack { ack: "0/10".into() }.text(),
            r#"{"ack":"0/10"}"#
        );
    }
}
