//! A live view (docs/proxy.md#live-views): the rows a filtered query
//! selects, by key, kept current by applying every frame of a snapshot
//! subscription.
//!
//! `R`, `I` and `U` put a row, `D` and `L` (a held row left the query)
//! remove one, `T` empties the view. After an interruption the
//! subscription reads the rows again ([`Options::resync`]); rows from
//! before that it did not put again by its `done` frame are removed.

use crate::live::{Frame, Options, Subscription};
use crate::{Action, Change, Error};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Why a row left the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Delete,
    /// An update moved it out of the query (`L`), or changed its key.
    Leave,
    Truncate,
    /// Gone while the connection was down: not read again.
    Resync,
}

/// One change of a view.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewEvent {
    Put {
        key: String,
        row: Map<String, Value>,
    },
    Remove {
        key: String,
        row: Map<String, Value>,
        why: Removed,
    },
    /// The current rows are in (the snapshot's `done`), after each resync too.
    Ready,
}

/// The rows of a filtered query, kept current.
pub struct View {
    sub: Subscription,
    key: Vec<String>,
    rows: BTreeMap<String, Map<String, Value>>,
    /// During a resync: the keys from before not put again yet.
    stale: Option<BTreeSet<String>>,
    ready: bool,
    events: VecDeque<ViewEvent>,
}

impl View {
    /// A view of `query` on the proxy at `url`; `key` names the table's key
    /// columns (its primary key, or replica identity index). `options`'
    /// `snapshot` and `resync` are set, `after` must be unset.
    pub fn new(url: &str, query: &str, key: &[&str], options: Options) -> Result<View, Error> {
        if options.after.is_some() {
            return Err(Error::Invalid(
                "a view reads its rows at the start: no after".into(),
            ));
        }
        let options = Options {
            snapshot: true,
            resync: true,
            ..options
        };
        Ok(View {
            sub: Subscription::new(url, query, options)?,
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            rows: BTreeMap::new(),
            stale: None,
            ready: false,
            events: VecDeque::new(),
        })
    }

    /// The rows, by the JSON array of their key values.
    pub fn rows(&self) -> &BTreeMap<String, Map<String, Value>> {
        &self.rows
    }

    /// Whether the current rows are in (the last snapshot is done).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The subscription under the view (to reconnect, refresh its token).
    pub fn subscription(&mut self) -> &mut Subscription {
        &mut self.sub
    }

    /// The key of a row (or an `identity`): the JSON array of its key values.
    pub fn key_of(&self, row: &Map<String, Value>) -> Option<String> {
        let values: Option<Vec<&Value>> = self.key.iter().map(|k| row.get(k)).collect();
        values.and_then(|v| serde_json::to_string(&v).ok())
    }

    /// The next change of the view; `Ok(None)` once closed.
    pub async fn next(&mut self) -> Result<Option<ViewEvent>, Error> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            match self.sub.next().await? {
                None => return Ok(None),
                Some(frame) => self.apply(frame),
            }
        }
    }

    /// Ends the view's subscription.
    pub async fn close(&mut self) {
        self.sub.close().await;
    }

    fn put(&mut self, row: Map<String, Value>) {
        let Some(key) = self.key_of(&row) else { return };
        if let Some(s) = self.stale.as_mut() {
            s.remove(&key);
        }
        self.rows.insert(key.clone(), row.clone());
        self.events.push_back(ViewEvent::Put { key, row });
    }

    fn remove(&mut self, key: Option<String>, why: Removed) {
        let Some(key) = key else { return };
        if let Some(s) = self.stale.as_mut() {
            s.remove(&key);
        }
        if let Some(row) = self.rows.remove(&key) {
            self.events.push_back(ViewEvent::Remove { key, row, why });
        }
    }

    fn apply(&mut self, frame: Frame) {
        match frame {
            Frame::Resynced => {
                self.ready = false;
                self.stale = Some(self.rows.keys().cloned().collect());
            }
            Frame::Snapshot(v) => {
                if v.get("state").and_then(Value::as_str) == Some("done") {
                    for key in self.stale.take().unwrap_or_default() {
                        self.remove(Some(key), Removed::Resync);
                    }
                    self.ready = true;
                    self.events.push_back(ViewEvent::Ready);
                }
            }
            Frame::Change(c) => self.change(*c),
            Frame::FilterError(_) | Frame::Other(_) => {}
        }
    }

    fn change(&mut self, c: Change) {
        match c.action {
            Action::Read | Action::Insert => {
                if let Some(row) = c.columns {
                    self.put(row);
                }
            }
            Action::Update => {
                let Some(mut row) = c.columns else { return };
                let old = c.identity.as_ref().and_then(|i| self.key_of(i));
                let key = self.key_of(&row);
                // Unchanged TOASTed columns are left out of an update: keep them.
                if let Some(before) = self
                    .rows
                    .get(old.as_ref().or(key.as_ref()).map_or("", |k| k))
                {
                    if let Some(Value::Array(cols)) = c.raw.get("unchanged_toast") {
                        for col in cols.iter().filter_map(Value::as_str) {
                            if let Some(v) = before.get(col) {
                                row.entry(col.to_owned()).or_insert_with(|| v.clone());
                            }
                        }
                    }
                }
                if old.is_some() && old != key {
                    self.remove(old, Removed::Leave);
                }
                self.put(row);
            }
            Action::Delete => {
                let k = c.identity.as_ref().and_then(|i| self.key_of(i));
                self.remove(k, Removed::Delete);
            }
            Action::Leave => {
                let k = c.identity.as_ref().and_then(|i| self.key_of(i));
                self.remove(k, Removed::Leave);
            }
            Action::Truncate => {
                let keys: Vec<String> = self.rows.keys().cloned().collect();
                for k in keys {
                    self.remove(Some(k), Removed::Truncate);
                }
            }
            // Not rows: messages, schema changes, transaction frames.
            _ => {}
        }
    }
}
