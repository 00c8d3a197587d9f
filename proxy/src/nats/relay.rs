//! `walcast-proxy relay`: the slot, read once, published to JetStream.
//!
//! The relay streams its slot as the single-process reader does
//! (`reader::open`), publishes every object with a position as one message
//! (subject and id as `nats/mod.rs` says) and keeps many publishes in
//! flight. A second task takes JetStream's acknowledgements in order; when
//! every message of a transaction is acknowledged it passes the
//! transaction's end on, and only then is it confirmed to PostgreSQL. A
//! relay killed at any point restarts from a position whose changes are all
//! in the stream; what it publishes again is dropped by JetStream (same
//! message id, within the duplicate window) or, later, by the edges (same
//! position).

use super::{
    begin_id, commit_position, subject, token, NatsSettings, PUBLISHES_IN_FLIGHT, TIMELINE_HEADER,
};
use crate::change::{Action, Change};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::replication::reader::{self, ReaderConfig};
use crate::replication::{ErrorKind, ReplicationError, ReplicationStream, XLogData};
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, PublishAckFuture, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{InfoError, LastRawMessageError, LastRawMessageErrorKind};
use async_nats::jetstream::{Context, ErrorCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use walcast_format::{Lsn, Position};

/// What the relay needs.
#[derive(Clone)]
pub struct RelayConfig {
    pub reader: ReaderConfig,
    pub nats: NatsSettings,
}

/// Why the relay cannot publish to its JetStream stream, with the advice
/// that fits the server's answer.
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    /// The stream reserves more than the server's JetStream storage.
    #[error(
        "cannot create the JetStream stream {stream}: {error}. The stream reserves \
         --nats-max-bytes ({max_bytes} bytes) of the NATS server's JetStream storage, which is \
         smaller (its max_file_store; by default 75% of the disk that was free when the \
         server started): lower --nats-max-bytes, free disk space, or set max_file_store \
         in the server's jetstream block"
    )]
    Storage {
        stream: String,
        max_bytes: u64,
        error: CreateStreamError,
    },
    /// The stream could not be created or opened.
    #[error(
        "cannot create or open the JetStream stream {stream}: {error} (is JetStream enabled on \
         the NATS server? nats-server -js)"
    )]
    Create {
        stream: String,
        error: CreateStreamError,
    },
    /// The stream's state could not be read.
    #[error("cannot read the JetStream stream {stream}: {error}")]
    Info { stream: String, error: InfoError },
    /// The stream ends with a relay's notice that its slot was lost (or
    /// its history left the server's): nothing may continue it.
    #[error(
        "the JetStream stream {stream} ends with a relay's notice that what it holds cannot be \
         continued ({reason}): give the relay a new --nats-stream and restart it and the edges \
         (docs/scale-out.md#failures)"
    )]
    Ended { stream: String, reason: String },
    /// The stream's last message of this database could not be read.
    #[error("cannot read the last message of the JetStream stream {stream}: {error}")]
    Last {
        stream: String,
        error: LastRawMessageError,
    },
    /// The stream exists and does not take this database's subjects.
    #[error(
        "the JetStream stream {stream} exists with the subjects {subjects:?}, which do not include {wanted}: \
         choose another --nats-stream or add that subject to the stream"
    )]
    Subjects {
        stream: String,
        subjects: Vec<String>,
        wanted: String,
    },
}

/// Why the stream could not be created.
fn create_error(cfg: &RelayConfig, error: CreateStreamError) -> StreamSetupError {
    let stream = cfg.nats.stream.clone();
    match error.kind() {
        CreateStreamErrorKind::JetStream(js)
            if js.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED =>
        {
            StreamSetupError::Storage {
                stream,
                max_bytes: cfg.nats.max_bytes,
                error,
            }
        }
        _ => StreamSetupError::Create { stream, error },
    }
}

/// What the relay knows before it connects to PostgreSQL.
pub struct Prepared {
    /// The database's subject token.
    pub db: String,
    /// The commit LSN of the latest transaction of this database in the
    /// stream (what the edges have; its `B`'s), and the timeline it was
    /// read on when the `B` says it.
    last: Option<(Lsn, Option<u32>)>,
}

/// Creates the stream when missing, checks that it takes this database's
/// subjects and reads what was last published to it.
pub async fn prepare(cfg: &RelayConfig, js: &Context) -> Result<Prepared, StreamSetupError> {
    let db = cfg
        .reader
        .database
        .config
        .get_dbname()
        .or(cfg.reader.database.config.get_user())
        .unwrap_or("postgres");
    let db = token(db);
    let wanted = super::stream_config(&cfg.nats, &db);
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| create_error(cfg, e))?;
    let info = stream
        .info()
        .await
        .map_err(|error| StreamSetupError::Info {
            stream: cfg.nats.stream.clone(),
            error,
        })?;
    let ours = &wanted.subjects[0];
    if !info.config.subjects.iter().any(|s| s == ours) {
        return Err(StreamSetupError::Subjects {
            stream: cfg.nats.stream.clone(),
            subjects: info.config.subjects.clone(),
            wanted: ours.clone(),
        });
    }
    let messages = info.state.messages;
    let name = &cfg.nats.stream;
    if let Some(m) = last_message(&stream, name, ours).await? {
        if super::is_lost_subject(&m.subject) {
            return Err(StreamSetupError::Ended {
                stream: name.clone(),
                reason: String::from_utf8_lossy(&m.payload).into_owned(),
            });
        }
    }
    // A transaction's `B` goes before its first message: the last `B` names
    // the latest transaction in the stream, and carries its timeline.
    let last = last_message(&stream, name, &super::begin_subject(&db))
        .await?
        .and_then(|m| last_published(&m));
    tracing::info!(
        stream = %cfg.nats.stream,
        subjects = %ours,
        messages,
        "publishing to JetStream"
    );
    Ok(Prepared { db, last })
}

/// The last message of the JetStream stream `name` on `subject`.
async fn last_message(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    subject: &str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, StreamSetupError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(StreamSetupError::Last {
            stream: name.to_owned(),
            error,
        }),
    }
}

/// The commit LSN of a `B` the relay published (its `Nats-Msg-Id`) and the
/// timeline it was read on (its [`TIMELINE_HEADER`]).
fn last_published(m: &async_nats::jetstream::message::StreamMessage) -> Option<(Lsn, Option<u32>)> {
    let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
    let commit = super::begin_commit(id.as_str())?;
    let timeline = m
        .headers
        .get(TIMELINE_HEADER)
        .and_then(|t| t.as_str().parse::<u32>().ok());
    Some((commit, timeline))
}

/// Runs until `shutdown` becomes true or a definite error stops it (returned).
#[tracing::instrument(name = "relay", skip_all, fields(slot = %cfg.reader.slot, stream = %cfg.nats.stream))]
pub async fn run(
    cfg: RelayConfig,
    js: Context,
    prepared: Prepared,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), ReplicationError> {
    let db = prepared.db;
    let mut backoff = reader::Backoff::default();
    let mut known = Known {
        slot: match prepared.last {
            Some((_, Some(timeline))) => reader::Slot::read_earlier_on(timeline),
            _ => reader::Slot::default(),
        },
        published: prepared.last.map(|(commit, _)| commit),
    };
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut streamed = false;
        let result = relay_once(
            &cfg,
            &js,
            &db,
            Shared {
                metrics: &metrics,
                health: &health,
            },
            &shutdown,
            &mut known,
            &mut streamed,
        )
        .await;
        if streamed {
            backoff.reset();
        }
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.kind == ErrorKind::Transient => {
                let what = "relay interrupted; starting again from the slot's confirmed position";
                if !reader::retry_after(&e, what, &mut backoff, &health, &metrics, &shutdown).await
                {
                    return Ok(());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "relay stopped");
                health.failed(&e.message);
                if e.kind == ErrorKind::SlotLost {
                    metrics.slots_lost.fetch_add(1, Ordering::Relaxed);
                }
                // The edges' clients are told; nothing published after it
                // continues the stream.
                if matches!(e.kind, ErrorKind::SlotLost | ErrorKind::Diverged) {
                    tell_lost(&js, &db, &e.message).await;
                }
                return Err(e);
            }
        }
    }
}

/// What the relay knows across reconnects.
struct Known {
    slot: reader::Slot,
    /// The commit LSN of the latest transaction published to the stream
    /// (sent, perhaps not yet acknowledged: the check errs only toward
    /// telling): it must be on the history of the server the slot is read
    /// on (checked after a promotion).
    published: Option<Lsn>,
}

#[derive(Clone, Copy)]
struct Shared<'a> {
    metrics: &'a Arc<Metrics>,
    health: &'a Health,
}

/// What the acknowledging task is given, in publish order.
enum Pending {
    Ack(PublishAckFuture),
    /// Everything before this is acknowledged once it is reached: the slot
    /// may advance to the position.
    Confirm(Lsn),
}

/// What the acknowledging task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acked {
    Upto(Lsn),
    Failed(String),
}

/// Relays the slot from its confirmed position until shutdown or an error.
async fn relay_once(
    cfg: &RelayConfig,
    js: &Context,
    db: &str,
    shared: Shared<'_>,
    shutdown: &CancellationToken,
    known: &mut Known,
    streamed: &mut bool,
) -> Result<(), ReplicationError> {
    // From the slot's confirmed position: everything after it is published
    // again (JetStream drops what it has by id). After a promotion, what
    // was published must be on the new history.
    let (stream, start) =
        reader::open(&cfg.reader, &mut known.slot, Lsn(0), known.published).await?;
    shared.health.streaming();
    *streamed = true;
    tracing::info!(slot = %cfg.reader.slot, from = %start, "relaying changes");
    let timeline = known
        .slot
        .timeline()
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut relay = Relay::start(
        js,
        db,
        shared,
        (stream, start),
        timeline,
        &mut known.published,
    );
    let mut report = tokio::time::interval(Duration::from_secs(1));
    // Nothing in flight yet: keepalives may advance the slot.
    relay.stream.set_caught_up(true);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                relay.finish().await;
                return Ok(());
            }
            _ = report.tick() => {
                relay.report();
                continue;
            }
            changed = relay.acked.changed() => {
                relay.acknowledged(changed)?;
                continue;
            }
            n = relay.stream.next() => n?,
        };
        let Some(msg) = next else {
            return Err(ReplicationError::transient(
                "PostgreSQL ended the replication stream",
            ));
        };
        relay.message(&msg).await?;
    }
}

/// One replication connection's relaying: where its transaction is, what
/// was handed to the acknowledging task and the replication stream. Fields
/// drop in this order: the acknowledging task is stopped before the
/// channels and the replication stream.
struct Relay<'a> {
    js: &'a Context,
    db: &'a str,
    metrics: &'a Arc<Metrics>,
    health: &'a Health,
    /// A transaction's `B`, published before its first object with a
    /// position (whose commit LSN names it); never when it has none.
    begin: Option<Change>,
    in_txn: bool,
    published_in_txn: usize,
    /// The end of the last transaction handed to the acknowledging task.
    sent_upto: Lsn,
    /// The commit LSN of the latest transaction published ([`Known`]).
    published: &'a mut Option<Lsn>,
    /// The replication connection's timeline, sent with every `B`
    /// ([`TIMELINE_HEADER`]).
    timeline: String,
    /// Stops the acknowledging task whichever way the relaying ends.
    _acker: AbortOnDrop,
    acked: watch::Receiver<Acked>,
    tx: mpsc::Sender<Pending>,
    stream: ReplicationStream,
}

impl<'a> Relay<'a> {
    /// Starts the acknowledging task for a stream opened at `start`.
    fn start(
        js: &'a Context,
        db: &'a str,
        shared: Shared<'a>,
        (stream, start): (ReplicationStream, Lsn),
        timeline: String,
        published: &'a mut Option<Lsn>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Pending>(PUBLISHES_IN_FLIGHT);
        let (acked_tx, acked) = watch::channel(Acked::Upto(start));
        let acker = tokio::spawn(acknowledge(rx, acked_tx, shared.metrics.clone()));
        Relay {
            js,
            db,
            metrics: shared.metrics,
            health: shared.health,
            begin: None,
            in_txn: false,
            published_in_txn: 0,
            sent_upto: start,
            published,
            timeline,
            _acker: AbortOnDrop(acker),
            acked,
            tx,
            stream,
        }
    }

    /// Gives the acknowledgements in flight a moment, confirms, ends.
    async fn finish(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.acked.borrow().clone() != Acked::Upto(self.sent_upto) {
                if self.acked.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if let Acked::Upto(lsn) = self.acked.borrow().clone() {
            self.stream.confirm(lsn);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.close()).await;
    }

    /// Reports the slot's positions and lag.
    fn report(&self) {
        let stream = &self.stream;
        self.health.positions(stream.confirmed(), stream.received());
        self.metrics.lag_bytes.store(
            stream.received().0.saturating_sub(stream.confirmed().0),
            Ordering::Relaxed,
        );
    }

    /// Confirms to the slot what the acknowledging task reports in the stream.
    fn acknowledged(
        &mut self,
        changed: Result<(), watch::error::RecvError>,
    ) -> Result<(), ReplicationError> {
        if changed.is_err() {
            return Err(ReplicationError::transient(
                "the JetStream acknowledgement task ended",
            ));
        }
        match self.acked.borrow_and_update().clone() {
            Acked::Upto(lsn) => {
                self.stream.confirm(lsn);
                self.metrics.confirmed_lsn.store(lsn.0, Ordering::Relaxed);
                // Keepalives may advance the slot only when nothing is in flight.
                self.stream
                    .set_caught_up(!self.in_txn && lsn >= self.sent_upto);
            }
            Acked::Failed(e) => return Err(ReplicationError::transient(e)),
        }
        Ok(())
    }

    /// Relays every object of one message of the plugin.
    async fn message(&mut self, msg: &XLogData) -> Result<(), ReplicationError> {
        for change in reader::changes(msg, self.metrics) {
            if let Some(pending) = self.pending(change, msg.wal_start).await? {
                send(&self.tx, pending).await?;
            }
        }
        Ok(())
    }

    /// Publishes what of `change` goes to the stream and returns what the
    /// acknowledging task is given for it; `None` for nothing.
    async fn pending(
        &mut self,
        change: Change,
        wal_start: Lsn,
    ) -> Result<Option<Pending>, ReplicationError> {
        let pending = match change.action {
            Action::Begin => {
                self.in_txn = true;
                self.published_in_txn = 0;
                self.begin = Some(change);
                self.stream.set_caught_up(false);
                return Ok(None);
            }
            Action::Commit => self.commit(&change, wal_start).await?,
            // Between transactions, a heartbeat lets the slot advance
            // once what came before is acknowledged.
            Action::Message if change.is_heartbeat() => {
                if self.in_txn {
                    return Ok(None);
                }
                self.sent_upto = self.sent_upto.max(wal_start);
                Pending::Confirm(wal_start)
            }
            _ => {
                // Only what has a position is in the stream (not
                // non-transactional messages).
                let Some(pos) = change.pos else {
                    return Ok(None);
                };
                self.object(&change, pos).await?
            }
        };
        Ok(Some(pending))
    }

    /// Publishes a transaction's `C` when the transaction published
    /// anything; the slot may advance to its end.
    async fn commit(
        &mut self,
        change: &Change,
        wal_start: Lsn,
    ) -> Result<Pending, ReplicationError> {
        let end = change.end_lsn().unwrap_or(wal_start);
        if self.published_in_txn > 0 {
            let id = commit_position(change.lsn);
            let ack = self.publish(change, &id.to_string()).await?;
            send(&self.tx, Pending::Ack(ack)).await?;
        }
        self.metrics.activity();
        self.in_txn = false;
        self.begin = None;
        self.sent_upto = end;
        Ok(Pending::Confirm(end))
    }

    /// Publishes an object with a position, its transaction's `B` first
    /// when it is the transaction's first.
    async fn object(
        &mut self,
        change: &Change,
        pos: Position,
    ) -> Result<Pending, ReplicationError> {
        if let Some(b) = self.begin.take() {
            let ack = self.publish(&b, &begin_id(pos.commit)).await?;
            *self.published = Some(pos.commit);
            send(&self.tx, Pending::Ack(ack)).await?;
        }
        if let Some(label) = change.row_action().map(|_| change.action.name()) {
            self.metrics.count_action(label);
        }
        self.published_in_txn += 1;
        Ok(Pending::Ack(self.publish(change, &pos.to_string()).await?))
    }

    /// Publishes one object with its id; a `B` with the timeline it was
    /// read on.
    async fn publish(
        &mut self,
        change: &Change,
        id: &str,
    ) -> Result<PublishAckFuture, ReplicationError> {
        let timeline = (change.action == Action::Begin).then_some(self.timeline.as_str());
        publish(self.js, self.db, change, id, timeline).await
    }
}

/// Publishes that the stream cannot go on (`walcast.<db>.lost`, the reason
/// as its body: the slot is lost, or what was published never happened on
/// the promoted server), so that the edges close their clients with the
/// reason instead of leaving them waiting or serving what never happened.
async fn tell_lost(js: &Context, db: &str, reason: &str) {
    let id = format!(
        "lost:{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let message = PublishMessage::build()
        .payload(bytes::Bytes::from(reason.to_owned()))
        .message_id(&id);
    let sent = match js.send_publish(super::lost_subject(db), message).await {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = sent {
        tracing::error!(%error, "could not tell the edges that the slot is lost");
    }
}

/// Sends one message; its acknowledgement is awaited by [`acknowledge`].
async fn publish(
    js: &Context,
    db: &str,
    change: &Change,
    id: &str,
    timeline: Option<&str>,
) -> Result<PublishAckFuture, ReplicationError> {
    let Some(subject) = subject(db, change) else {
        return Err(ReplicationError::definite(format!(
            "the relay has no subject for a {:?} object",
            change.action
        )));
    };
    let mut message = PublishMessage::build()
        .payload(change.bytes())
        .message_id(id);
    if let Some(timeline) = timeline {
        message = message.header(TIMELINE_HEADER, timeline);
    }
    js.send_publish(subject, message).await.map_err(|e| {
        if e.kind() == PublishErrorKind::MaxPayloadExceeded {
            ReplicationError::definite(format!(
                "the change at {id} is {} bytes, more than the NATS server accepts in one message \
                 ({e}): raise max_payload in the nats-server configuration (at most 64MB)",
                change.raw().len()
            ))
        } else {
            ReplicationError::transient(format!("cannot publish to JetStream: {e}"))
        }
    })
}

async fn send(tx: &mpsc::Sender<Pending>, p: Pending) -> Result<(), ReplicationError> {
    tx.send(p)
        .await
        .map_err(|_| ReplicationError::transient("the JetStream acknowledgement task ended"))
}

/// Takes acknowledgements in publish order and reports how far every
/// message is in the stream.
async fn acknowledge(
    mut rx: mpsc::Receiver<Pending>,
    acked: watch::Sender<Acked>,
    counters: Arc<Metrics>,
) {
    while let Some(p) = rx.recv().await {
        match p {
            Pending::Ack(fut) => match fut.await {
                Ok(ack) => {
                    let n = &counters.nats;
                    n.published.fetch_add(1, Ordering::Relaxed);
                    if ack.duplicate {
                        n.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    n.sequence.fetch_max(ack.sequence, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = acked.send(Acked::Failed(format!(
                        "JetStream did not acknowledge a message: {e}"
                    )));
                    return;
                }
            },
            Pending::Confirm(lsn) => {
                let _ = acked.send(Acked::Upto(lsn));
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
