//! Re-snapshots of a durable stream: a table's current rows, read in chunks
//! between watermarks (`backfill/`), judged on the stream's own changes and
//! sent as read events at each chunk's high watermark. Asked for with
//! `POST /v1/streams/{slot}/snapshot` or `&snapshot=<tables>` on
//! `/v1/lr/stream`; tables are read one after another while the consumer is
//! connected. Nothing is held between chunks, and ACKs go on throughout.

use crate::backfill::driver::{self, Plan, Shared};
use crate::backfill::window::{is_mark, Windows};
use crate::backfill::{Event, Ready};
use crate::change::{Action, Change};
use crate::metrics::Metrics;
use crate::sql::SqlPool;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A backfill being read, and its table's name.
struct Running {
    handle: driver::Handle,
    table: String,
}

/// What the consumer's loop learns while idle.
pub enum Step {
    /// Re-snapshots asked for through the API.
    Requested(Vec<Plan>),
    /// A backfill stopped: the frame telling the client why.
    Failed(String),
    /// A backfill ended (its last chunk was sent).
    Ended,
    /// Nothing (no more requests can come).
    Quiet,
}

/// One consumer's backfills.
pub struct Backfills {
    windows: Arc<Mutex<Windows>>,
    queue: VecDeque<Plan>,
    running: Option<Running>,
    requests: Option<mpsc::Receiver<Vec<Plan>>>,
    pool: SqlPool,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

/// A backfill that gave no rows: it stopped, or none was running. Its text
/// is the frame that tells the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::frames::snapshot_failed(.table, .reason))]
pub struct SnapshotFailed {
    /// `schema.table` (empty when none was running).
    pub table: String,
    /// Why it stopped.
    pub reason: String,
}

impl SnapshotFailed {
    fn new(table: &str, reason: &str) -> SnapshotFailed {
        SnapshotFailed {
            table: table.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

impl Backfills {
    pub fn new(
        requests: Option<mpsc::Receiver<Vec<Plan>>>,
        pool: SqlPool,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> Backfills {
        Backfills {
            windows: Arc::default(),
            queue: VecDeque::new(),
            running: None,
            requests,
            pool,
            shared,
            metrics,
        }
    }

    /// Queues backfills; the first starts at once if none runs.
    pub fn add(&mut self, plans: Vec<Plan>) {
        self.queue.extend(plans);
        self.start_next();
    }

    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        let Some(plan) = self.queue.pop_front() else {
            return;
        };
        let table = format!("{}.{}", plan.table.schema, plan.table.name);
        let handle = driver::spawn(
            self.windows.clone(),
            self.pool.clone(),
            self.shared.clone(),
            plan,
            self.metrics.clone(),
        );
        self.running = Some(Running { handle, table });
    }

    /// Notes a change of the stream (watermarks included, in order); true
    /// when a chunk's rows are due right after it.
    pub fn observe(&mut self, change: &Change) -> bool {
        let mut verdicts = Vec::new();
        {
            let mut w = crate::locks::lock(&self.windows);
            if is_mark(change) {
                w.mark(change, 0, &mut verdicts);
            } else if change.row_action().is_some() || change.action == Action::Commit {
                // Commits too: this stream's changes carry no `pos`.
                w.observe(change);
            }
        }
        for (tx, v) in verdicts {
            let _ = tx.send(v);
        }
        self.running
            .as_ref()
            .is_some_and(|r| r.handle.places.next().is_some())
    }

    /// The rows of the chunk [`Backfills::observe`] said are due, or the
    /// frame of a backfill that stopped instead.
    pub async fn take(&mut self) -> Result<Ready, SnapshotFailed> {
        let Some(r) = self.running.as_mut() else {
            return Err(SnapshotFailed::new("", "no snapshot is running"));
        };
        let table = r.table.clone();
        let got = r.handle.events.recv().await;
        r.handle.places.sent();
        match got {
            Some(Event::Ready(ready)) => Ok(ready),
            Some(Event::Failed(reason)) => {
                self.finish();
                Err(SnapshotFailed::new(&table, &reason))
            }
            None => {
                self.finish();
                Err(SnapshotFailed::new(&table, "the snapshot stopped"))
            }
        }
    }

    /// A backfill ended: the next one starts.
    pub fn finish(&mut self) {
        self.running = None;
        self.start_next();
    }

    /// Waits for a request or for the running backfill to end. Cancel
    /// safe: it only receives from channels.
    pub async fn next(&mut self) -> Step {
        let Backfills {
            requests, running, ..
        } = self;
        let asked = async {
            match requests.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let ended = async {
            match running.as_mut() {
                Some(r) => (r.handle.events.recv().await, r.table.clone()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            req = asked => match req {
                Some(plans) => Step::Requested(plans),
                None => {
                    *requests = None;
                    Step::Quiet
                }
            },
            (ev, table) = ended => match ev {
                Some(Event::Failed(reason)) => Step::Failed(crate::frames::snapshot_failed(&table, &reason)),
                // Rows only come after the session's own verdict, which it
                // waits for in `take`; this is the driver finishing.
                _ => Step::Ended,
            },
        }
    }
}
