//! What clients send, parsed and checked before anything acts on it: a
//! live websocket's first frame, a durable stream's ACK frames, and the
//! bodies of `POST /v1/init` and `POST /v1/snapshot/data`.

use crate::query::{self, Query};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
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

/// A WASM filter a client chose: its id (from `POST /v1/filters`) and the
/// bytes given to its `walcast_init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChoice {
    pub id: String,
    pub config: Vec<u8>,
}

/// What a client chose to receive: a query, a WASM filter, or both. A live
/// subscription and a durable stream's connection name it the same way.
#[derive(Debug, Default)]
pub struct Choice {
    pub query: Option<Query>,
    pub filter: Option<FilterChoice>,
}

/// A live subscription, from a websocket URL's parameters or from the
/// client's first frame: both forms are read by this module and checked by
/// the same rules.
#[derive(Debug)]
pub struct Subscription {
    pub choice: Choice,
    /// Resume after this position.
    pub after: Option<Position>,
    /// The matching rows first.
    pub snapshot: bool,
}

/// Why a subscription was refused.
#[derive(Debug)]
pub enum SubscriptionError {
    /// The query does not parse: its message and position.
    Query(query::QueryError),
    /// Anything else: why.
    Invalid(String),
}

impl std::fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscriptionError::Query(e) => write!(f, "invalid query: {e}"),
            SubscriptionError::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for SubscriptionError {}

/// The bytes given to `walcast_init`: a JSON string's content, or the
/// compact JSON text of any other value.
pub fn config_bytes(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

impl Choice {
    /// `query=`, `filter=` and `config=` of a websocket URL.
    pub fn from_url(params: &HashMap<String, String>) -> Result<Choice, SubscriptionError> {
        let filter = params.get("filter").map(|id| FilterChoice {
            id: id.clone(),
            config: params
                .get("config")
                .map(|c| c.as_bytes().to_vec())
                .unwrap_or_default(),
        });
        if filter.is_none() && params.contains_key("config") {
            return Err(SubscriptionError::Invalid(
                "config= is given to a filter: it needs filter= too".into(),
            ));
        }
        Choice::parsed(params.get("query").map(String::as_str), filter)
    }

    fn parsed(
        query: Option<&str>,
        filter: Option<FilterChoice>,
    ) -> Result<Choice, SubscriptionError> {
        let query = query
            .map(query::parse)
            .transpose()
            .map_err(SubscriptionError::Query)?;
        Ok(Choice { query, filter })
    }

    /// Whether nothing was chosen.
    pub fn is_empty(&self) -> bool {
        self.query.is_none() && self.filter.is_none()
    }
}

impl Subscription {
    /// A websocket URL's subscription (`query`, `filter`, `config`,
    /// `after`, `snapshot`); `None` when it names neither a query nor a
    /// filter (the client's first frame will).
    pub fn from_url(
        params: &HashMap<String, String>,
    ) -> Result<Option<Subscription>, SubscriptionError> {
        use SubscriptionError::Invalid;
        let choice = Choice::from_url(params)?;
        let after = params
            .get("after")
            .map(|a| {
                a.parse::<Position>()
                    .map_err(|e| Invalid(format!("after: {e}")))
            })
            .transpose()?;
        let snapshot = match params.get("snapshot").map(String::as_str) {
            None | Some("0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => {
                return Err(Invalid(format!("snapshot must be 1 or 0 (got {other:?})")));
            }
        };
        if choice.is_empty() && after.is_none() && !snapshot {
            return Ok(None);
        }
        Subscription::checked(choice, after, snapshot).map(Some)
    }

    /// A first frame's text:
    /// `{"subscribe":{"query":"...","filter":{"id":"...","config":...},"after":"...","snapshot":true}}`.
    pub fn from_frame(text: &str) -> Result<Subscription, SubscriptionError> {
        use serde_json::Value as V;
        use SubscriptionError::Invalid;
        let v: V = serde_json::from_str(text)
            .map_err(|e| Invalid(format!("subscription frame is not JSON: {e}")))?;
        let Some(sub) = v.get("subscribe").filter(|s| s.is_object()) else {
            return Err(Invalid(
                "subscription frame needs {\"subscribe\":{\"query\":\"...\"}} and/or a \"filter\""
                    .into(),
            ));
        };
        let query = match sub.get("query") {
            None | Some(V::Null) => None,
            Some(V::String(q)) => Some(q.as_str()),
            Some(_) => return Err(Invalid("\"query\" must be a string".into())),
        };
        let filter = match sub.get("filter") {
            None | Some(V::Null) => None,
            Some(f) => {
                let id = f.get("id").and_then(|i| i.as_str()).ok_or_else(|| {
                    Invalid("the filter needs an \"id\" (from POST /v1/filters)".into())
                })?;
                let config = f.get("config").map(config_bytes).unwrap_or_default();
                Some(FilterChoice {
                    id: id.to_owned(),
                    config,
                })
            }
        };
        let after = match sub.get("after") {
            None | Some(V::Null) => None,
            Some(V::String(p)) => Some(
                p.parse::<Position>()
                    .map_err(|e| Invalid(format!("after: {e}")))?,
            ),
            Some(_) => {
                return Err(Invalid(
                    "after must be a position string (the \"pos\" of a change)".into(),
                ))
            }
        };
        let snapshot = match sub.get("snapshot") {
            None | Some(V::Null) => false,
            Some(V::Bool(b)) => *b,
            Some(_) => return Err(Invalid("snapshot must be true or false".into())),
        };
        Subscription::checked(Choice::parsed(query, filter)?, after, snapshot)
    }

    /// The rules every subscription keeps, whichever form it came in.
    fn checked(
        choice: Choice,
        after: Option<Position>,
        snapshot: bool,
    ) -> Result<Subscription, SubscriptionError> {
        use SubscriptionError::Invalid;
        if snapshot && choice.query.is_none() {
            return Err(Invalid(
                "a snapshot reads the table a query names: it needs query= in a URL, or the subscription frame needs a \"query\"".into(),
            ));
        }
        if choice.is_empty() {
            return Err(Invalid(
                "a subscription needs a query or a filter (after and snapshot refer to them)"
                    .into(),
            ));
        }
        Ok(Subscription {
            choice,
            after,
            snapshot,
        })
    }
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

    fn url(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_subscription_reads_the_same_from_a_url_and_a_first_frame() {
        let from_url = Subscription::from_url(&url(&[
            ("query", "update:users:age.gt.30"),
            ("filter", "sha256:ab"),
            ("config", "{\"min\":3}"),
            ("after", "0000000001A2B400:00000002"),
            ("snapshot", "1"),
        ]))
        .expect("valid")
        .expect("a subscription");
        let from_frame = Subscription::from_frame(
            r#"{"subscribe":{"query":"update:users:age.gt.30","filter":{"id":"sha256:ab","config":{"min":3}},"after":"0000000001A2B400:00000002","snapshot":true}}"#,
        )
        .expect("valid");
        for s in [&from_url, &from_frame] {
            assert_eq!(
                format!("{:?}", s.choice.query),
                format!("{:?}", from_url.choice.query)
            );
            assert_eq!(s.choice.filter, from_url.choice.filter);
            assert_eq!(s.after, from_url.after);
            assert!(s.snapshot);
        }
        assert_eq!(
            from_frame.choice.filter.map(|f| f.config),
            Some(b"{\"min\":3}".to_vec())
        );
        // Nothing chosen in the URL: the first frame will say.
        assert!(Subscription::from_url(&url(&[])).expect("valid").is_none());
    }

    #[test]
    fn both_forms_of_a_subscription_keep_the_same_rules() {
        let refused = |r: Result<Subscription, SubscriptionError>| match r {
            Err(SubscriptionError::Invalid(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let url_refused = |pairs: &[(&str, &str)]| {
            refused(Subscription::from_url(&url(pairs)).map(|s| s.expect("some")))
        };
        // A snapshot without a query.
        assert_eq!(
            url_refused(&[("filter", "f"), ("snapshot", "1")]),
            refused(Subscription::from_frame(
                r#"{"subscribe":{"filter":{"id":"f"},"snapshot":true}}"#
            ))
        );
        // A position without a query or a filter.
        assert_eq!(
            url_refused(&[("after", "0000000001A2B400:00000002")]),
            refused(Subscription::from_frame(
                r#"{"subscribe":{"after":"0000000001A2B400:00000002"}}"#
            ))
        );
        // A position that is not one.
        assert_eq!(
            url_refused(&[("query", "*:t"), ("after", "x")]),
            refused(Subscription::from_frame(
                r#"{"subscribe":{"query":"*:t","after":"x"}}"#
            ))
        );
        // A query that does not parse: its position, in either form.
        for r in [
            Subscription::from_url(&url(&[("query", "*:t:a.zz.1")])).map(|s| s.expect("some")),
            Subscription::from_frame(r#"{"subscribe":{"query":"*:t:a.zz.1"}}"#),
        ] {
            assert!(matches!(r, Err(SubscriptionError::Query(e)) if e.position == 6));
        }
        assert!(Subscription::from_url(&url(&[("config", "1")])).is_err());
        assert!(Subscription::from_frame(r#"{"subscribe":{"query":5}}"#).is_err());
        assert!(Subscription::from_frame("[]").is_err());
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
