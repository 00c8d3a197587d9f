//! A live client's view: the keys of the rows it holds, so that it hears
//! when one of them leaves (docs/proxy.md#live-views).
//!
//! A client holds a row once it was sent it: a read event (`snapshot=1`),
//! or an insert or update its query matched. With row filters (its own, or
//! the user's row rules folded into its query), two changes of a held row
//! would not reach it on their own: a delete, matched on the old key (which
//! need not hold the filtered columns), and an update that moves the row
//! out of the query. The hub lists both for the client's group although its
//! query did not match them (`Entry::unmatched`); here they become frames
//! for the rows the client holds, and nothing for the others:
//!
//! - a delete of a held row: the delete itself (`D`, with its `identity`);
//! - an update that moves a held row out: a leave frame, `L`, with the
//!   row's old key as `identity` (never its new values);
//! - a truncate of the table (matched like any truncate): every row goes.
//!
//! The set is one hash per held row; it is bounded by `--view-max-rows`,
//! and a client that would hold more is closed with the reason, never left
//! with a view that can go stale silently.

use crate::change::{Action, Change};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A key's hash, already mixed: the set uses it as it is.
#[derive(Default)]
struct Mixed(u64);

impl Hasher for Mixed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What one unmatched change is for this client.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not a row it holds: nothing.
    Skip,
    /// A held row was deleted: send the delete as it is.
    Send,
    /// A held row left the query: send this leave frame.
    Leave(String),
}

/// The client would hold more than `--view-max-rows` rows.
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    pub max_rows: usize,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "view too large: the query selects more than {} rows (--view-max-rows); subscribe with a narrower query",
            self.max_rows
        )
    }
}

/// The rows one client holds, by key.
pub struct View {
    /// The key columns, in key order.
    key: Vec<String>,
    held: HashSet<u64, BuildHasherDefault<Mixed>>,
    seed: std::collections::hash_map::RandomState,
    max_rows: usize,
    /// Rows held by every view of the process (`walcast_view_rows`).
    total: Arc<AtomicI64>,
}

impl View {
    /// A view of rows keyed by `key` columns, holding at most `max_rows`.
    pub fn new(key: Vec<String>, max_rows: usize, total: Arc<AtomicI64>) -> View {
        View {
            key,
            held: HashSet::default(),
            seed: Default::default(),
            max_rows,
            total,
        }
    }

    /// Rows held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// A change the client was sent: what it holds now.
    pub fn sent(&mut self, c: &Change) -> Result<(), Full> {
        match c.action {
            Action::Insert | Action::Read => {
                if let Some(k) = self.key_of(c, Side::New) {
                    self.hold(k)?;
                }
            }
            Action::Update => {
                let old = self.key_of(c, Side::Old);
                let new = self.key_of(c, Side::New);
                if old != new {
                    if let Some(o) = old {
                        self.release(o);
                    }
                }
                if let Some(n) = new {
                    self.hold(n)?;
                }
            }
            Action::Delete => {
                if let Some(k) = self.key_of(c, Side::Old) {
                    self.release(k);
                }
            }
            Action::Truncate => self.clear(),
            _ => {}
        }
        Ok(())
    }

    /// A change listed for the client although its query did not match it
    /// (an update or delete of its table, see [`crate::query::Query::may_leave`]).
    pub fn unmatched(&mut self, c: &Change) -> Step {
        let Some(k) = self.key_of(c, Side::Old) else {
            return Step::Skip;
        };
        if !self.held.contains(&k) {
            return Step::Skip;
        }
        self.release(k);
        match c.action {
            Action::Delete => Step::Send,
            Action::Update => match self.leave_frame(c) {
                Some(frame) => Step::Leave(frame),
                None => Step::Skip,
            },
            _ => Step::Skip,
        }
    }

    fn hold(&mut self, k: u64) -> Result<(), Full> {
        if self.held.contains(&k) {
            return Ok(());
        }
        if self.held.len() >= self.max_rows {
            return Err(Full {
                max_rows: self.max_rows,
            });
        }
        self.held.insert(k);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&mut self, k: u64) {
        if self.held.remove(&k) {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn clear(&mut self) {
        self.total
            .fetch_sub(self.held.len() as i64, Ordering::Relaxed);
        self.held = HashSet::default();
    }

    /// The hash of a row's key: the raw JSON of each key column, in key
    /// order. `New` reads `columns` (an unchanged TOASTed key column from
    /// `identity`), `Old` reads `identity`. `None` when a key column is
    /// missing (a table without a key, `REPLICA IDENTITY NOTHING`).
    fn key_of(&self, c: &Change, side: Side) -> Option<u64> {
        let raw = c.text.as_str();
        let object = |range: Option<(usize, usize)>| range.and_then(|(s, e)| raw.get(s..e));
        let identity = object(c.identity_range()).and_then(fields);
        let primary = match side {
            Side::New => object(c.columns_range()).and_then(fields),
            Side::Old => None,
        };
        let mut h = self.seed.build_hasher();
        for col in &self.key {
            let v = primary
                .as_ref()
                .and_then(|f| f.get(col.as_str()))
                .or_else(|| identity.as_ref().and_then(|f| f.get(col.as_str())))?;
            h.write(v.get().as_bytes());
            h.write_u8(0xff);
        }
        Some(h.finish())
    }

    /// `{"action":"L","lsn","xid","ts","schema","table","identity","pos"}`:
    /// the held row, by its old key, left the query.
    fn leave_frame(&self, c: &Change) -> Option<String> {
        let raw = c.text.as_str();
        let (s, e) = c.identity_range()?;
        let identity = fields(raw.get(s..e)?)?;
        #[derive(serde::Deserialize)]
        struct Ts<'a> {
            #[serde(default, borrow)]
            ts: Option<Cow<'a, str>>,
        }
        let ts = serde_json::from_str::<Ts>(raw).ok().and_then(|t| t.ts);
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let mut key = String::from("{");
        for (i, col) in self.key.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&quote(col));
            key.push(':');
            key.push_str(identity.get(col.as_str())?.get());
        }
        key.push('}');
        let leave = crate::change::Action::Leave.letter();
        let mut out = format!(r#"{{"action":"{leave}","lsn":"{}""#, c.lsn);
        if let Some(x) = c.xid {
            out.push_str(&format!(r#","xid":{x}"#));
        }
        if let Some(ts) = ts {
            out.push_str(&format!(r#","ts":{}"#, quote(&ts)));
        }
        out.push_str(&format!(
            r#","schema":{},"table":{},"identity":{key}"#,
            quote(&c.schema),
            quote(&c.table)
        ));
        if let Some(p) = c.pos {
            out.push_str(&format!(r#","pos":"{p}""#));
        }
        out.push('}');
        Some(out)
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.clear();
    }
}

#[derive(Clone, Copy)]
enum Side {
    New,
    Old,
}

/// An object's fields as raw JSON, borrowed when its names have no escapes.
fn fields(object: &str) -> Option<HashMap<Cow<'_, str>, &RawValue>> {
    if let Ok(m) = serde_json::from_str::<HashMap<&str, &RawValue>>(object) {
        return Some(m.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)).collect());
    }
    // Escaped names: owned names, values still borrowed.
    #[derive(serde::Deserialize)]
    struct Owned<'a>(#[serde(borrow)] HashMap<String, &'a RawValue>);
    serde_json::from_str::<Owned>(object)
        .ok()
        .map(|o| o.0.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use walcast_format::Lsn;

    fn change(json: &str) -> Change {
        Change::parse(Bytes::from(json.to_owned()), Lsn(1)).expect("a change")
    }

    fn view(max: usize) -> (View, Arc<AtomicI64>) {
        let total = Arc::new(AtomicI64::new(0));
        (View::new(vec!["id".into()], max, total.clone()), total)
    }

    const INSERT: &str = r#"{"action":"I","lsn":"0/10","xid":7,"ts":"2026-12-01T00:00:00+00:00","schema":"public","table":"t","columns":{"id":4,"grp":1},"pos":"0000000000000020:00000000"}"#;
    const MOVED: &str = r#"{"action":"U","lsn":"0/30","xid":8,"ts":"2026-12-01T00:00:01+00:00","schema":"public","table":"t","columns":{"id":4,"grp":2},"identity":{"id":4},"pos":"0000000000000040:00000000"}"#;
    const DELETED: &str = r#"{"action":"D","lsn":"0/50","xid":9,"schema":"public","table":"t","identity":{"id":4},"pos":"0000000000000060:00000000"}"#;

    #[test]
    fn a_held_row_that_moves_out_leaves_by_its_old_key() {
        let (mut v, total) = view(10);
        v.sent(&change(INSERT)).unwrap();
        assert_eq!((v.len(), total.load(Ordering::Relaxed)), (1, 1));
        let step = v.unmatched(&change(MOVED));
        assert_eq!(
            step,
            Step::Leave(
                r#"{"action":"L","lsn":"0/30","xid":8,"ts":"2026-12-01T00:00:01+00:00","schema":"public","table":"t","identity":{"id":4},"pos":"0000000000000040:00000000"}"#
                    .into()
            )
        );
        assert!(v.is_empty());
        // Not held any more: its delete is not this client's.
        assert_eq!(v.unmatched(&change(DELETED)), Step::Skip);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_held_row_deleted_is_sent_and_others_are_not() {
        let (mut v, _) = view(10);
        assert_eq!(v.unmatched(&change(DELETED)), Step::Skip, "never held");
        v.sent(&change(INSERT)).unwrap();
        assert_eq!(v.unmatched(&change(DELETED)), Step::Send);
        assert!(v.is_empty());
    }

    #[test]
    fn a_key_change_moves_what_is_held_and_truncate_clears() {
        let (mut v, total) = view(10);
        v.sent(&change(INSERT)).unwrap();
        let rekeyed = r#"{"action":"U","lsn":"0/30","schema":"public","table":"t","columns":{"id":5,"grp":1},"identity":{"id":4},"pos":"0000000000000040:00000000"}"#;
        v.sent(&change(rekeyed)).unwrap();
        assert_eq!(v.len(), 1);
        let gone_old = r#"{"action":"D","lsn":"0/50","schema":"public","table":"t","identity":{"id":4},"pos":"0000000000000060:00000000"}"#;
        assert_eq!(v.unmatched(&change(gone_old)), Step::Skip);
        let gone_new = r#"{"action":"D","lsn":"0/50","schema":"public","table":"t","identity":{"id":5},"pos":"0000000000000060:00000000"}"#;
        assert_eq!(v.unmatched(&change(gone_new)), Step::Send);
        v.sent(&change(INSERT)).unwrap();
        let truncate = r#"{"action":"T","lsn":"0/70","schema":"public","table":"t","tables":["public.t"],"pos":"0000000000000080:00000000"}"#;
        v.sent(&change(truncate)).unwrap();
        assert!(v.is_empty());
        drop(v);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn values_compare_as_the_plugin_wrote_them_and_full_identity_is_projected() {
        let total = Arc::new(AtomicI64::new(0));
        let mut v = View::new(vec!["a".into(), "b".into()], 10, total);
        let ins = r#"{"action":"I","lsn":"0/1","schema":"s","table":"t","columns":{"b":"x","a":1.50,"v":null},"pos":"0000000000000002:00000000"}"#;
        v.sent(&change(ins)).unwrap();
        // REPLICA IDENTITY FULL: the old row whole, in another order.
        let out = r#"{"action":"U","lsn":"0/3","schema":"s","table":"t","columns":{"a":1.50,"b":"y","v":1},"identity":{"v":null,"a":1.50,"b":"x"},"pos":"0000000000000004:00000000"}"#;
        match v.unmatched(&change(out)) {
            Step::Leave(f) => assert!(f.contains(r#""identity":{"a":1.50,"b":"x"}"#), "{f}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_bound_is_an_error_not_a_silent_drop() {
        let (mut v, _) = view(1);
        v.sent(&change(INSERT)).unwrap();
        let other = INSERT.replace(r#""id":4"#, r#""id":5"#);
        assert_eq!(v.sent(&change(&other)), Err(Full { max_rows: 1 }));
        // The same row again is no new row.
        v.sent(&change(INSERT)).unwrap();
    }
}
