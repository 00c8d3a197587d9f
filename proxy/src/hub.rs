//! The hub: one reader per slot hands each change to the subscribers whose
//! query matches. Each subscriber has a bounded queue; a subscriber whose
//! queue is full is disconnected with a reason (never a silent drop).
//! Subscribers are indexed by table name, so the cost of a change follows the
//! clients interested in its table, not all clients.

use crate::change::Change;
use crate::metrics::Metrics;
use crate::query::{self, Query, RowView};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

/// Why the hub ended a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kick {
    /// The client fell behind its queue bound.
    Lagging { bound: usize },
    /// The stream ended for everyone (definite error, shutdown).
    Closed { reason: String },
}

struct Subscriber {
    /// `None`: every row change (a WASM filter decides).
    query: Option<Query>,
    tx: mpsc::Sender<Arc<Change>>,
    kick: Arc<Mutex<Option<Kick>>>,
}

/// Where a subscriber is indexed: under its table, or, when its query has
/// an `eq` filter, under (table, column, value) so that a change only meets
/// the subscribers whose value it carries.
#[derive(Clone, PartialEq, Eq, Hash)]
enum IndexKey {
    /// Subscribers of every change.
    All,
    Table(String),
    Eq {
        table: String,
        column: String,
        value: EqKey,
    },
}

/// A value normalised so that equal values (as `eq` compares them) are equal keys.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum EqKey {
    Int(i128),
    Float(u64),
    Text(String),
}

impl EqKey {
    /// The key a subscriber is indexed under for an `eq` operand.
    fn of_operand(s: &str) -> EqKey {
        if let Some(k) = number_key(s) {
            k
        } else if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
            EqKey::Text(s.to_ascii_lowercase())
        } else {
            EqKey::Text(s.to_owned())
        }
    }

    /// Every key under which a subscriber whose `eq` can match `v` may be
    /// indexed (a superset is fine: the full query decides).
    fn lookups(v: &serde_json::Value, out: &mut Vec<EqKey>) {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Number(n) => out.extend(number_key(&n.to_string())),
            serde_json::Value::Bool(b) => out.push(EqKey::Text(b.to_string())),
            serde_json::Value::String(s) => {
                out.push(EqKey::Text(s.clone()));
                out.extend(number_key(s));
                if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
                    out.push(EqKey::Text(s.to_ascii_lowercase()));
                }
            }
            other => out.push(EqKey::Text(other.to_string())),
        }
    }
}

fn number_key(s: &str) -> Option<EqKey> {
    if let Ok(i) = s.parse::<i128>() {
        return Some(EqKey::Int(i));
    }
    let f: f64 = s.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 1e30 {
        return Some(EqKey::Int(f as i128));
    }
    Some(EqKey::Float(f.to_bits()))
}

/// The index key of a query: its first `eq` filter whose operand is a value.
fn index_key(q: &Option<Query>) -> IndexKey {
    let Some(q) = q else {
        return IndexKey::All;
    };
    for f in &q.filters {
        if let (query::Op::Eq, query::Operand::Value(v)) = (&f.op, &f.operand) {
            return IndexKey::Eq {
                table: q.table.name.clone(),
                column: f.column.clone(),
                value: EqKey::of_operand(v),
            };
        }
    }
    IndexKey::Table(q.table.name.clone())
}

#[derive(Default)]
struct Registry {
    subs: HashMap<u64, (Subscriber, IndexKey)>,
    index: HashMap<IndexKey, Vec<u64>>,
    /// Per table, the columns that some subscriber's `eq` index uses.
    eq_columns: HashMap<String, HashMap<String, usize>>,
}

impl Registry {
    fn insert(&mut self, id: u64, sub: Subscriber) {
        let key = index_key(&sub.query);
        if let IndexKey::Eq { table, column, .. } = &key {
            *self
                .eq_columns
                .entry(table.clone())
                .or_default()
                .entry(column.clone())
                .or_default() += 1;
        }
        self.index.entry(key.clone()).or_default().push(id);
        self.subs.insert(id, (sub, key));
    }

    /// Removes a subscriber from the map and the indexes.
    fn take(&mut self, id: u64) -> Option<Subscriber> {
        let (s, key) = self.subs.remove(&id)?;
        if let Some(ids) = self.index.get_mut(&key) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.index.remove(&key);
            }
        }
        if let IndexKey::Eq { table, column, .. } = &key {
            if let Some(cols) = self.eq_columns.get_mut(table) {
                if let Some(n) = cols.get_mut(column) {
                    *n -= 1;
                    if *n == 0 {
                        cols.remove(column);
                    }
                }
                if cols.is_empty() {
                    self.eq_columns.remove(table);
                }
            }
        }
        Some(s)
    }

    /// Subscribers that may want a change of `table` with `row`.
    fn candidates<'a>(
        &self,
        table: &str,
        row: impl Fn() -> Option<&'a serde_json::Map<String, serde_json::Value>>,
        out: &mut Vec<u64>,
    ) {
        if let Some(ids) = self.index.get(&IndexKey::Table(table.to_owned())) {
            out.extend(ids);
        }
        if let Some(cols) = self.eq_columns.get(table) {
            let Some(row) = row() else { return };
            let mut keys = Vec::new();
            for column in cols.keys() {
                let Some(v) = row.get(column) else { continue };
                keys.clear();
                EqKey::lookups(v, &mut keys);
                for value in keys.drain(..) {
                    let key = IndexKey::Eq {
                        table: table.to_owned(),
                        column: column.clone(),
                        value,
                    };
                    if let Some(ids) = self.index.get(&key) {
                        out.extend(ids);
                    }
                }
            }
        }
    }
}

/// Shared fan-out point.
#[derive(Clone)]
pub struct Hub {
    registry: Arc<RwLock<Registry>>,
    next_id: Arc<AtomicU64>,
    bound: usize,
    metrics: Arc<Metrics>,
}

/// A client's end of the hub.
pub struct Subscription {
    id: u64,
    pub rx: mpsc::Receiver<Arc<Change>>,
    kick: Arc<Mutex<Option<Kick>>>,
    hub: Hub,
}

impl Subscription {
    /// Why the hub ended this subscription, once its queue is closed.
    pub fn kick_reason(&self) -> Option<Kick> {
        self.kick.lock().ok().and_then(|k| k.clone())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl Hub {
    /// A hub whose subscribers each queue at most `bound` changes.
    pub fn new(bound: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            registry: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            bound: bound.max(1),
            metrics,
        }
    }

    /// Registers a subscriber for `query`.
    pub fn subscribe(&self, query: Query) -> Subscription {
        self.register(Some(query))
    }

    /// Registers a subscriber of every row change.
    pub fn subscribe_all(&self) -> Subscription {
        self.register(None)
    }

    fn register(&self, query: Option<Query>) -> Subscription {
        let (tx, rx) = mpsc::channel(self.bound);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Mutex::new(None));
        if let Ok(mut r) = self.registry.write() {
            r.insert(
                id,
                Subscriber {
                    query,
                    tx,
                    kick: kick.clone(),
                },
            );
        }
        Subscription {
            id,
            rx,
            kick,
            hub: self.clone(),
        }
    }

    fn remove(&self, id: u64) {
        if let Ok(mut r) = self.registry.write() {
            r.take(id);
        }
    }

    /// Number of subscribers.
    pub fn len(&self) -> usize {
        self.registry.read().map(|r| r.subs.len()).unwrap_or(0)
    }

    /// True when nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands a change to every matching subscriber. Subscribers whose queue is
    /// full are disconnected (and told why).
    pub fn publish(&self, change: &Arc<Change>) {
        let Some(action) = change.row_action() else {
            return;
        };
        let view = RowView {
            action,
            schema: &change.schema,
            table: &change.table,
            truncated: &change.truncated,
            row: None,
        };
        let mut lagging = Vec::new();
        {
            let Ok(r) = self.registry.read() else { return };
            let mut candidates: Vec<u64> = Vec::new();
            if action == query::Action::Truncate {
                // A truncate has no row: every subscriber of the table may want it.
                for (_, t) in &change.truncated {
                    for (key, ids) in &r.index {
                        let table = match key {
                            IndexKey::Table(t) | IndexKey::Eq { table: t, .. } => t,
                            IndexKey::All => continue,
                        };
                        if table == t {
                            candidates.extend(ids);
                        }
                    }
                }
            } else {
                r.candidates(&change.table, || change.row(), &mut candidates);
            }
            if let Some(ids) = r.index.get(&IndexKey::All) {
                candidates.extend(ids);
            }
            candidates.sort_unstable();
            candidates.dedup();
            for id in candidates {
                let Some((s, _)) = r.subs.get(&id) else {
                    continue;
                };
                if let Some(q) = &s.query {
                    if !q.wants(action) {
                        continue;
                    }
                    let needs_row = !q.filters.is_empty() && action != query::Action::Truncate;
                    let view = RowView {
                        row: if needs_row { change.row() } else { None },
                        ..view
                    };
                    if !q.matches(&view) {
                        continue;
                    }
                }
                match s.tx.try_send(change.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => lagging.push(id),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        for id in lagging {
            self.kick(id, Kick::Lagging { bound: self.bound });
            self.metrics
                .clients_disconnected_lagging
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn kick(&self, id: u64, why: Kick) {
        let sub = self.registry.write().ok().and_then(|mut r| r.take(id));
        if let Some(s) = sub {
            if let Ok(mut k) = s.kick.lock() {
                *k = Some(why);
            }
            // Dropping the sender closes the client's queue.
        }
    }

    /// Ends every subscription with `reason`.
    pub fn close_all(&self, reason: &str) {
        let ids: Vec<u64> = self
            .registry
            .read()
            .map(|r| r.subs.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.kick(
                id,
                Kick::Closed {
                    reason: reason.to_owned(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use walcast_format::Lsn;

    fn change(columns: &str) -> Arc<Change> {
        let raw = format!(
            r#"{{"action":"I","lsn":"0/1","schema":"public","table":"t","columns":{columns}}}"#
        );
        Arc::new(Change::parse(Bytes::from(raw), Lsn(1)).expect("change"))
    }

    #[test]
    fn indexed_eq_delivers_exactly_what_the_query_matches() {
        let queries = [
            "insert:t:a.eq.5",
            "insert:t:a.eq.5.0",
            "insert:t:a.eq.\"5\"",
            "insert:t:a.eq.05",
            "insert:t:b.eq.TRUE",
            "insert:t:b.eq.true",
            "insert:t:c.eq.abc",
            "insert:t:c.eq.abc:a.gt.1",
            "insert:t:a.neq.5",
            "insert:t",
            "insert:other:a.eq.5",
            "insert:t:a.eq.9007199254740993",
        ];
        let rows = [
            r#"{"a":5,"b":true,"c":"abc"}"#,
            r#"{"a":5.0,"b":"TRUE","c":"x"}"#,
            r#"{"a":"5","b":"true","c":"abc"}"#,
            r#"{"a":"05","b":false,"c":null}"#,
            r#"{"a":null,"b":null}"#,
            r#"{"a":9007199254740993,"c":"abc"}"#,
            r#"{"a":9007199254740992}"#,
            r#"{"a":[5],"c":{"k":1}}"#,
        ];
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(64, metrics);
        let mut subs: Vec<(Query, Subscription)> = queries
            .iter()
            .map(|q| {
                let parsed = query::parse(q).expect("query");
                (parsed.clone(), hub.subscribe(parsed))
            })
            .collect();
        for row in rows {
            let c = change(row);
            hub.publish(&c);
            for (q, s) in subs.iter_mut() {
                let view = RowView {
                    action: query::Action::Insert,
                    schema: "public",
                    table: "t",
                    truncated: &[],
                    row: c.row(),
                };
                let want = q.matches(&view);
                let got = s.rx.try_recv().is_ok();
                assert_eq!(got, want, "query {q:?} on row {row}");
            }
        }
    }

    #[test]
    fn a_full_queue_disconnects_with_the_bound_as_reason() {
        let hub = Hub::new(2, Arc::new(Metrics::default()));
        let mut s = hub.subscribe(query::parse("insert:t").expect("query"));
        for _ in 0..3 {
            hub.publish(&change(r#"{"a":1}"#));
        }
        assert!(s.rx.try_recv().is_ok());
        assert!(s.rx.try_recv().is_ok());
        assert!(s.rx.try_recv().is_err());
        assert_eq!(s.kick_reason(), Some(Kick::Lagging { bound: 2 }));
        assert!(hub.is_empty());
    }
}
