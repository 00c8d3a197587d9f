//! The hub: one reader per slot hands each change to the subscribers whose
//! query matches. Each subscriber has a bounded queue; a subscriber whose
//! queue is full is disconnected with a reason (never a silent drop).
//! Subscribers are indexed by table name, so the cost of a change follows the
//! clients interested in its table, not all clients.

use crate::change::{Action, Change};
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
    query: Query,
    tx: mpsc::Sender<Arc<Change>>,
    kick: Arc<Mutex<Option<Kick>>>,
}

#[derive(Default)]
struct Registry {
    subs: HashMap<u64, Subscriber>,
    by_table: HashMap<String, Vec<u64>>,
}

impl Registry {
    /// Removes a subscriber from the map and the table index.
    fn take(&mut self, id: u64) -> Option<Subscriber> {
        let s = self.subs.remove(&id)?;
        let t = &s.query.table.name;
        if let Some(ids) = self.by_table.get_mut(t) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_table.remove(t);
            }
        }
        Some(s)
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
        let (tx, rx) = mpsc::channel(self.bound);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Mutex::new(None));
        let table = query.table.name.clone();
        if let Ok(mut r) = self.registry.write() {
            r.by_table.entry(table).or_default().push(id);
            r.subs.insert(
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
        let action = match change.action {
            Action::Insert => query::Action::Insert,
            Action::Update => query::Action::Update,
            Action::Delete => query::Action::Delete,
            Action::Truncate => query::Action::Truncate,
            _ => return,
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
                for (_, t) in &change.truncated {
                    if let Some(ids) = r.by_table.get(t) {
                        candidates.extend(ids);
                    }
                }
                candidates.sort_unstable();
                candidates.dedup();
            } else if let Some(ids) = r.by_table.get(&change.table) {
                candidates.extend(ids);
            }
            for id in candidates {
                let Some(s) = r.subs.get(&id) else { continue };
                if !s.query.wants(action) {
                    continue;
                }
                let needs_row = !s.query.filters.is_empty() && action != query::Action::Truncate;
                let view = RowView {
                    row: if needs_row { change.row() } else { None },
                    ..view
                };
                if !s.query.matches(&view) {
                    continue;
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
