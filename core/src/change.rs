//! One plugin message, parsed once: the header fields a hub and filters need
//! (action, schema, table, lsn, xid), the raw bytes that are sent to clients
//! unchanged, and the row values parsed lazily when a filter asks for them.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use tungstenite::Utf8Bytes;
use walcast_format::{Lsn, Position};

/// What a plugin message is (its `action` letters, `walcast-abi`). The
/// plugin never writes `L` (the proxy's frame of a row leaving a view).
pub use walcast_abi::Action;

/// The prefix of the proxy's heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "walcast.heartbeat";

/// Why plugin bytes could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("plugin message is not a JSON object walcast-proxy understands: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plugin message has an unknown action {0:?}")]
    UnknownAction(String),
    #[error("plugin message has an invalid lsn {0:?}")]
    BadLsn(String),
    #[error("plugin message has an invalid pos {0:?}")]
    BadPosition(String),
    #[error("plugin message is not UTF-8")]
    NotUtf8,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    action: &'a str,
    #[serde(default, borrow)]
    lsn: Option<&'a str>,
    #[serde(default)]
    end_lsn: Option<&'a str>,
    #[serde(default)]
    pos: Option<&'a str>,
    #[serde(default)]
    xid: Option<u32>,
    #[serde(default, borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    table: Option<Cow<'a, str>>,
    #[serde(default)]
    tables: Option<Vec<String>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default, borrow)]
    columns: Option<&'a RawValue>,
    #[serde(default, borrow)]
    identity: Option<&'a RawValue>,
}

/// A schema or table name. Changes of the same table share one copy
/// (see [`Name::of`]), so a change in the log costs no allocation for
/// its names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Name(Arc<str>);

/// Names kept for sharing per thread at most; past that, a name gets a
/// copy of its own (a bound, whatever the schema).
const SHARED_NAMES: usize = 64;

impl Name {
    /// The shared copy of `s` when one is at hand, else a new one (which
    /// is then shared): the newest names are looked up first.
    pub fn of(s: &str) -> Name {
        thread_local! {
            static RECENT: RefCell<Vec<Arc<str>>> = const { RefCell::new(Vec::new()) };
        }
        RECENT
            .try_with(|recent| {
                let mut recent = recent.try_borrow_mut().ok()?;
                if let Some(i) = recent.iter().rposition(|n| **n == *s) {
                    // The newest last.
                    recent[i..].rotate_left(1);
                    return recent.last().map(|n| Name(n.clone()));
                }
                if recent.len() >= SHARED_NAMES {
                    recent.remove(0);
                }
                let name: Arc<str> = Arc::from(s);
                recent.push(name.clone());
                Some(Name(name))
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| Name(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

/// What only some kinds of change carry, kept out of line so that the
/// row changes the log holds stay small.
#[derive(Debug)]
struct Rare {
    end_lsn: Option<Lsn>,
    truncated: Vec<(String, String)>,
    prefix: Option<String>,
}

/// One change, shared by all subscribers. Kept small: the log holds one
/// per change it retains.
#[derive(Debug)]
pub struct Change {
    pub action: Action,
    pub xid: Option<u32>,
    /// The change's own LSN (`lsn` in the JSON), or the stream position.
    pub lsn: Lsn,
    /// The change's position (`pos`, with the plugin's `include-position`).
    pub pos: Option<Position>,
    pub schema: Name,
    pub table: Name,
    /// The plugin's bytes, sent to clients unchanged (checked to be UTF-8
    /// once, so every client's frame reuses them as websocket text).
    pub text: Utf8Bytes,
    /// Byte ranges of `columns` and `identity` inside the bytes.
    columns_at: Option<(u32, u32)>,
    identity_at: Option<(u32, u32)>,
    rare: Option<Box<Rare>>,
    /// Boxed: a `Map` is large, and the log's changes keep no row.
    row: OnceLock<Option<Box<Map<String, Value>>>>,
    /// The head of a WASM filter's input record (filter/record.rs): the
    /// same for every subscription, so built once.
    filter_head: OnceLock<Box<[u8]>>,
}

fn range_in(raw: &[u8], part: &RawValue) -> Option<(u32, u32)> {
    let start = (part.get().as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    let end = start + part.get().len();
    if end > raw.len() {
        return None;
    }
    Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
}

impl Change {
    /// Parses the plugin's bytes; `wal_start` is the stream position of the message.
    pub fn parse(raw: Bytes, wal_start: Lsn) -> Result<Change, ChangeError> {
        // Checked as UTF-8 once: the JSON parser then does not check its
        // strings again, and every client's frame reuses it.
        let text = Utf8Bytes::try_from(raw).map_err(|_| ChangeError::NotUtf8)?;
        let h: Header = serde_json::from_str(text.as_str())?;
        let action = Action::from_letter(h.action)
            .filter(|a| *a != Action::Leave)
            .ok_or_else(|| ChangeError::UnknownAction(h.action.to_owned()))?;
        let parse_lsn = |s: &str| {
            s.parse::<Lsn>()
                .map_err(|_| ChangeError::BadLsn(s.to_owned()))
        };
        let lsn = match h.lsn {
            Some(s) => parse_lsn(s)?,
            None => wal_start,
        };
        let end_lsn = h.end_lsn.map(parse_lsn).transpose()?;
        let pos = h
            .pos
            .map(|p| {
                p.parse::<Position>()
                    .map_err(|_| ChangeError::BadPosition(p.to_owned()))
            })
            .transpose()?;
        let truncated: Vec<(String, String)> = h
            .tables
            .unwrap_or_default()
            .iter()
            .map(|t| split_qualified(t))
            .collect();
        let bytes = text.as_str().as_bytes();
        let columns_at = h.columns.and_then(|c| range_in(bytes, c));
        let identity_at = h.identity.and_then(|c| range_in(bytes, c));
        let rare = (end_lsn.is_some() || !truncated.is_empty() || h.prefix.is_some()).then(|| {
            Box::new(Rare {
                end_lsn,
                truncated,
                prefix: h.prefix,
            })
        });
        let name = |n: Option<Cow<'_, str>>| n.map(|n| Name::of(&n)).unwrap_or_default();
        Ok(Change {
            action,
            xid: h.xid,
            lsn,
            pos,
            schema: name(h.schema),
            table: name(h.table),
            columns_at,
            identity_at,
            rare,
            row: OnceLock::new(),
            filter_head: OnceLock::new(),
            text,
        })
    }

    /// The plugin's bytes.
    pub fn raw(&self) -> &[u8] {
        self.text.as_str().as_bytes()
    }

    /// The plugin's bytes, shared (no copy).
    pub fn bytes(&self) -> Bytes {
        Bytes::from(self.text.clone())
    }

    /// For commits: the position after the commit record (what to confirm).
    pub fn end_lsn(&self) -> Option<Lsn> {
        self.rare.as_ref().and_then(|r| r.end_lsn)
    }

    /// For truncates: the (schema, table) pairs named.
    pub fn truncated(&self) -> &[(String, String)] {
        self.rare.as_ref().map_or(&[], |r| &r.truncated)
    }

    /// For logical messages: the prefix.
    pub fn prefix(&self) -> Option<&str> {
        self.rare.as_ref().and_then(|r| r.prefix.as_deref())
    }

    /// The row a filter looks at: `columns` for inserts and updates,
    /// `identity` for deletes; parsed on first use, then kept.
    pub fn row(&self) -> Option<&Map<String, Value>> {
        self.row
            .get_or_init(|| self.parse_row().map(Box::new))
            .as_deref()
    }

    /// The row as [`Change::row`] gives it, without keeping it when it
    /// was not parsed yet (a change in the log is shared and keeps no row).
    pub fn row_uncached(&self) -> Option<Cow<'_, Map<String, Value>>> {
        match self.row.get() {
            Some(row) => row.as_deref().map(Cow::Borrowed),
            None => self.parse_row().map(Cow::Owned),
        }
    }

    fn parse_row(&self) -> Option<Map<String, Value>> {
        let at = if self.action == Action::Delete {
            self.identity_at
        } else {
            self.columns_at
        };
        let (s, e) = at?;
        match serde_json::from_slice::<Value>(self.raw().get(s as usize..e as usize)?) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        }
    }

    /// Drops the parsed row (it is parsed again when asked for): a change
    /// kept in the log holds only its JSON.
    pub fn forget_row(&mut self) {
        self.row.take();
    }

    /// Byte range of `columns` inside `raw`.
    pub fn columns_range(&self) -> Option<(usize, usize)> {
        self.columns_at.map(|(s, e)| (s as usize, e as usize))
    }

    /// Byte range of `identity` inside `raw`.
    pub fn identity_range(&self) -> Option<(usize, usize)> {
        self.identity_at.map(|(s, e)| (s as usize, e as usize))
    }

    /// The head of a WASM filter's input record, made by `build` the first
    /// time a subscription's filter needs it (see filter/record.rs).
    pub fn filter_head(&self, build: impl FnOnce(&Change) -> Box<[u8]>) -> &[u8] {
        self.filter_head.get_or_init(|| build(self))
    }

    /// Whether `query` selects this change (row changes only).
    pub fn matched_by(&self, query: &crate::query::Query) -> bool {
        self.matched_with(
            query,
            |c| c.row().map(Cow::Borrowed),
            false,
            |v| query.matches(v),
        )
    }

    /// Like [`Change::matched_by`], without keeping the parsed row.
    pub fn matched_by_without_caching(&self, query: &crate::query::Query) -> bool {
        self.matched_with(
            query,
            |c| c.parse_row().map(Cow::Owned),
            false,
            |v| query.matches(v),
        )
    }

    /// [`Change::matched_by`] within `budget` (see
    /// [`crate::query::Query::matches_within`]): `None` when the query's
    /// filters would cost more than that on this change.
    pub fn matched_within(&self, query: &crate::query::Query, budget: usize) -> Option<bool> {
        self.matched_with(
            query,
            |c| c.row().map(Cow::Borrowed),
            Some(false),
            |v| query.matches_within(v, self.raw().len(), budget),
        )
    }

    /// `decide` on what `query` sees of this change (`no` for a change it
    /// cannot want); `row` gives the row, asked for only when a filter needs it.
    fn matched_with<'a, R>(
        &'a self,
        query: &crate::query::Query,
        row: impl FnOnce(&'a Change) -> Option<Cow<'a, Map<String, Value>>>,
        no: R,
        decide: impl FnOnce(&crate::query::RowView<'_>) -> R,
    ) -> R {
        let Some(action) = self.row_action() else {
            return no;
        };
        if !query.wants(action) {
            return no;
        }
        let row = if query.filters.is_empty() || action == crate::query::RowAction::Truncate {
            None
        } else {
            row(self)
        };
        decide(&crate::query::RowView {
            action,
            schema: &self.schema,
            table: &self.table,
            truncated: self.truncated(),
            row: row.as_deref(),
        })
    }

    /// Whether this is a heartbeat the proxy wrote (`walcast.heartbeat`).
    pub fn is_heartbeat(&self) -> bool {
        self.action == Action::Message && self.prefix() == Some(HEARTBEAT_PREFIX)
    }

    /// The action as queries name it, for the row changes clients
    /// subscribe to (I, U, D, T); `None` for everything else.
    pub fn row_action(&self) -> Option<crate::query::RowAction> {
        use crate::query::RowAction as Q;
        Some(match self.action {
            Action::Insert => Q::Insert,
            Action::Update => Q::Update,
            Action::Delete => Q::Delete,
            Action::Truncate => Q::Truncate,
            _ => return None,
        })
    }
}

/// Splits `schema.table` as the plugin writes it in truncates (each part a
/// plain or double-quoted identifier).
pub fn split_qualified(name: &str) -> (String, String) {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = name.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cur.is_empty() => quoted = true,
            ('"', true) => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                }
            }
            ('.', false) => parts.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    parts.push(cur);
    if parts.len() >= 2 {
        let table = parts.pop().unwrap_or_default();
        (parts.join("."), table)
    } else {
        (String::new(), parts.pop().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_keeps_raw_bytes() {
        let raw = Bytes::from_static(
            br#"{"action":"U","lsn":"0/16B3748","xid":740,"ts":"2026-11-22T05:00:00.123456+00:00","schema":"public","table":"users","columns":{"id":1,"name":"ann"},"identity":{"id":1}}"#,
        );
        let c = Change::parse(raw.clone(), Lsn(1)).expect("parse");
        assert_eq!(c.action, Action::Update);
        assert_eq!(c.lsn, Lsn(0x16B3748));
        assert_eq!(c.xid, Some(740));
        assert_eq!((c.schema.as_str(), c.table.as_str()), ("public", "users"));
        assert_eq!(c.raw(), &raw[..]);
        assert_eq!(
            c.row().and_then(|r| r.get("name")).and_then(|v| v.as_str()),
            Some("ann")
        );
    }

    #[test]
    fn deletes_expose_identity_and_truncates_their_tables() {
        let d = Change::parse(
            Bytes::from_static(
                br#"{"action":"D","lsn":"0/1","schema":"s","table":"t","identity":{"id":7}}"#,
            ),
            Lsn(0),
        )
        .expect("parse");
        assert_eq!(
            d.row().and_then(|r| r.get("id")).and_then(|v| v.as_i64()),
            Some(7)
        );
        let t = Change::parse(
            Bytes::from_static(br#"{"action":"T","lsn":"0/2","tables":["public.a","\"My Schema\".\"Tab.le \"\"x\"\"\""],"cascade":false,"restart_seqs":false}"#),
            Lsn(0),
        )
        .expect("parse");
        assert_eq!(
            t.truncated(),
            vec![
                ("public".into(), "a".into()),
                ("My Schema".into(), "Tab.le \"x\"".into())
            ]
        );
    }

    #[test]
    fn changes_of_one_table_share_its_names_and_stay_small() {
        let parse = |raw: &'static str| Change::parse(Bytes::from_static(raw.as_bytes()), Lsn(0));
        let a = parse(r#"{"action":"I","schema":"public","table":"users","columns":{"id":1}}"#)
            .expect("parse");
        let b = parse(r#"{"action":"D","schema":"public","table":"users","identity":{"id":1}}"#)
            .expect("parse");
        assert!(Arc::ptr_eq(&a.table.0, &b.table.0));
        assert!(Arc::ptr_eq(&a.schema.0, &b.schema.0));
        // Escaped names are unescaped, and still shared.
        let c = parse(r#"{"action":"I","schema":"public","table":"us\u0065rs"}"#).expect("parse");
        assert_eq!(c.table, "users");
        assert!(Arc::ptr_eq(&a.table.0, &c.table.0));
        // Past the bound a name is still right, only not shared.
        for i in 0..2 * SHARED_NAMES {
            assert_eq!(Name::of(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(Name::of("users"), "users");
        // The log holds one `Change` per change it retains (ENTRY_OVERHEAD).
        assert!(
            std::mem::size_of::<Change>() <= 192,
            "{}",
            std::mem::size_of::<Change>()
        );
    }

    #[test]
    fn commits_carry_end_lsn_and_bad_input_is_an_error() {
        let c = Change::parse(
            Bytes::from_static(br#"{"action":"C","xid":5,"lsn":"0/10","ts":"x","end_lsn":"0/20"}"#),
            Lsn(0),
        )
        .expect("parse");
        assert_eq!(c.end_lsn(), Some(Lsn(0x20)));
        assert!(Change::parse(Bytes::from_static(b"not json"), Lsn(0)).is_err());
        assert!(Change::parse(Bytes::from_static(br#"{"action":"X"}"#), Lsn(0)).is_err());
        assert!(
            Change::parse(Bytes::from_static(br#"{"action":"I","lsn":"zz"}"#), Lsn(0)).is_err()
        );
    }
}
