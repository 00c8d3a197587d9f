//! What clients send, parsed and checked before anything acts on it: a
//! live websocket's first frame, a durable stream's ACK frames, and the
//! bodies of `POST /v1/init` and `POST /v1/snapshot/data`.

use crate::query::{self, Query};
use serde::Deserialize;
use serde_json::Value;
use walcast_format::{Lsn, Position};

/// A request the client must correct (HTTP 400): why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

/// What a first frame asks for.
#[derive(Debug)]
pub struct FirstFrame {
    pub query: Option<Query>,
    /// The filter's id and the bytes given to its `walcast_init`.
    pub filter: Option<(String, Vec<u8>)>,
    pub after: Option<Position>,
    /// The matching rows first (`"snapshot": true`).
    pub snapshot: bool,
}

/// Why a first frame was refused.
#[derive(Debug)]
pub enum FirstFrameError {
    /// The query does not parse: an error frame with its position, then a close.
    Query(query::QueryError),
    /// Anything else: the close reason.
    Invalid(String),
}

/// The bytes given to `walcast_init`: a JSON string's content, or the
/// compact JSON text of any other value.
pub fn config_bytes(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

/// Parses a first frame's text.
pub fn parse_first_frame(text: &str) -> Result<FirstFrame, FirstFrameError> {
    use FirstFrameError::Invalid;
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Invalid(format!("subscription frame is not JSON: {e}")))?;
    let sub = v.get("subscribe");
    let q = sub.and_then(|s| s.get("query")).and_then(|q| q.as_str());
    let filter = match sub.and_then(|s| s.get("filter")) {
        None => None,
        Some(f) => {
            let id = f.get("id").and_then(|i| i.as_str()).ok_or_else(|| {
                Invalid("the filter needs an \"id\" (from POST /v1/filters)".into())
            })?;
            let config = f.get("config").map(config_bytes).unwrap_or_default();
            Some((id.to_owned(), config))
        }
    };
    let after = match sub.and_then(|s| s.get("after")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(p)) => Some(
            p.parse::<Position>()
                .map_err(|e| Invalid(format!("\"after\": {e}")))?,
        ),
        Some(_) => {
            return Err(Invalid(
                "\"after\" must be a position string (the \"pos\" of a change)".into(),
            ))
        }
    };
    let snapshot = match sub.and_then(|s| s.get("snapshot")) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return Err(Invalid("\"snapshot\" must be true or false".into())),
    };
    if snapshot && q.is_none() {
        return Err(Invalid(
            "\"snapshot\": true needs a \"query\" naming the table to read".into(),
        ));
    }
    if q.is_none() && filter.is_none() {
        return Err(Invalid(
            "subscription frame needs {\"subscribe\":{\"query\":\"...\"}} and/or a \"filter\""
                .into(),
        ));
    }
    let query = match q.map(query::parse) {
        None => None,
        Some(Ok(q)) => Some(q),
        Some(Err(e)) => return Err(FirstFrameError::Query(e)),
    };
    Ok(FirstFrame {
        query,
        filter,
        after,
        snapshot,
    })
}

/// A client frame's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Accepted: confirm this position; reply when asked.
    Accepted { lsn: Lsn, reply: bool },
    /// Nothing to do (the same position again).
    Unchanged,
    /// Ignored with a warning frame.
    Warning(String),
    /// Ignored with an error frame.
    Error(String),
}

/// ACK bookkeeping of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Acks {
    /// The last accepted ACK (the slot's position at the start).
    pub last: Lsn,
    /// The highest position of any frame handled, sent or filtered out.
    pub sent: Lsn,
}

impl Acks {
    /// Judges a client frame `{"lsn":"X/Y"[,"reply":true]}`.
    pub fn judge(&self, text: &str) -> AckOutcome {
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return AckOutcome::Error(format!("not JSON ({e}); send {{\"lsn\":\"X/Y\"}}"))
            }
        };
        let Some(given) = v.get("lsn") else {
            return AckOutcome::Error("no \"lsn\": send {\"lsn\":\"X/Y\"} to ACK".into());
        };
        let Some(lsn) = given.as_str().and_then(|s| s.parse::<Lsn>().ok()) else {
            return AckOutcome::Error(format!("{given} is not an LSN (X/Y in hexadecimal)"));
        };
        let reply = v.get("reply").and_then(|r| r.as_bool()).unwrap_or(false);
        if lsn > self.sent {
            AckOutcome::Error(format!(
                "ACK {lsn} is ahead of what was sent (up to {}); ignored",
                self.sent
            ))
        } else if lsn < self.last {
            AckOutcome::Warning(format!(
                "ACK {lsn} is behind the last ACK {}; ignored",
                self.last
            ))
        } else if lsn == self.last {
            if reply {
                AckOutcome::Accepted { lsn, reply }
            } else {
                AckOutcome::Unchanged
            }
        } else {
            AckOutcome::Accepted { lsn, reply }
        }
    }
}

/// The request body (PGDeltaStream's, plus `after`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRequest {
    #[serde(rename = "slotName")]
    pub slot_name: String,
    pub table: String,
    #[serde(default)]
    pub offset: Option<i64>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub order_by: Option<OrderBy>,
    /// Primary key values of the last row of the previous page.
    #[serde(default)]
    pub after: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub column: String,
    #[serde(default)]
    pub order: Option<String>,
}

/// Rows per page when the request names no limit.
pub const DEFAULT_LIMIT: i64 = 1000;

/// Parses and checks the body; `cap` is the most rows a page may have.
pub fn parse_request(body: &[u8], cap: u64) -> Result<PageRequest, BadRequest> {
    let req: PageRequest = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("invalid request body: {e}")))?;
    if let Some(l) = req.limit {
        if l < 1 {
            return Err(BadRequest(format!("limit must be at least 1 (got {l})")));
        }
        if l as u64 > cap {
            return Err(BadRequest(format!(
                "limit {l} is over the page cap of {cap} rows"
            )));
        }
    }
    if let Some(o) = req.offset {
        if o < 0 {
            return Err(BadRequest(format!("offset must not be negative (got {o})")));
        }
    }
    if req.after.is_some() && (req.offset.is_some_and(|o| o > 0) || req.order_by.is_some()) {
        return Err(BadRequest(
            "after pages by the primary key: it cannot be combined with offset or order_by".into(),
        ));
    }
    Ok(req)
}

/// What creating a stream asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Create {
    pub name: Option<String>,
    pub tables: Option<String>,
    /// Export a snapshot for `/v1/snapshot/data` (default); without it the
    /// rows are read inside the stream.
    pub export_snapshot: bool,
}

/// `{"name":"orders","tables":"public.orders","export_snapshot":false}`, all
/// optional; an empty body is `{}`.
pub fn parse_create(b: &[u8]) -> Result<Create, BadRequest> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(Create {
            name: None,
            tables: None,
            export_snapshot: true,
        });
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        tables: Option<TablesField>,
        #[serde(default)]
        export_snapshot: Option<bool>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum TablesField {
        One(String),
        Many(Vec<String>),
    }
    let body: Body =
        serde_json::from_slice(b).map_err(|e| BadRequest(format!("invalid request body: {e}")))?;
    let tables = body.tables.map(|t| match t {
        TablesField::One(s) => s,
        TablesField::Many(v) => v.join(","),
    });
    Ok(Create {
        name: body.name,
        tables,
        export_snapshot: body.export_snapshot.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_rules() {
        let a = Acks {
            last: Lsn(0x100),
            sent: Lsn(0x200),
        };
        assert_eq!(
            a.judge(r#"{"lsn":"0/180"}"#),
            AckOutcome::Accepted {
                lsn: Lsn(0x180),
                reply: false
            }
        );
        assert_eq!(
            a.judge(r#"{"lsn":"0/200","reply":true}"#),
            AckOutcome::Accepted {
                lsn: Lsn(0x200),
                reply: true
            }
        );
        assert_eq!(a.judge(r#"{"lsn":"0/100"}"#), AckOutcome::Unchanged);
        assert!(matches!(
            a.judge(r#"{"lsn":"0/80"}"#),
            AckOutcome::Warning(_)
        ));
        assert!(matches!(
            a.judge(r#"{"lsn":"0/201"}"#),
            AckOutcome::Error(_)
        ));
        assert!(matches!(a.judge(r#"{"lsn":"zz"}"#), AckOutcome::Error(_)));
        assert!(matches!(a.judge(r#"{"lsn":5}"#), AckOutcome::Error(_)));
        assert!(matches!(a.judge("{}"), AckOutcome::Error(_)));
        assert!(matches!(a.judge("nope"), AckOutcome::Error(_)));
    }

    #[test]
    fn request_checks() {
        assert!(parse_request(br#"{"slotName":"s","table":"t"}"#, 10).is_ok());
        for bad in [
            &br#"{"slotName":"s","table":"t","limit":-1}"#[..],
            br#"{"slotName":"s","table":"t","limit":11}"#,
            br#"{"slotName":"s","table":"t","offset":-5}"#,
            br#"{"slotName":"s","table":"t","after":[1],"offset":3}"#,
            br#"{"slotName":"s","table":"t","whatever":1}"#,
            br#"{"slotName":"s"#,
            br#"[1]"#,
        ] {
            let e = parse_request(bad, 10).expect_err("must be refused");
            assert!(!e.0.is_empty());
        }
    }
}
