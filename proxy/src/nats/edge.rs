//! `walcast-proxy serve --nats-url`: an edge, whose source is the relay's
//! JetStream stream instead of a slot.
//!
//! The edge reads the stream with an ordered consumer (no acknowledgements,
//! no server-side state to clean up) and hands the row changes to its hub,
//! in batches, exactly as the single-process reader does; from there on,
//! clients are served by the same change log and cursors. Positions are the
//! plugin's, the same on every edge, so a client resumes with `after=` on
//! any edge whose log holds what follows its position.
//!
//! At start the edge reads back as much of the stream as its log holds
//! (`--buffer-size`, from the stream's mean message size), so clients can
//! resume across an edge restart. When NATS or the stream goes away, the
//! edge reports `degraded`, keeps its clients and goes on from the next
//! stream sequence when it is back.

use super::before;
use crate::change::Change;
use crate::health::Health;
use crate::log::ENTRY_OVERHEAD;
use crate::metrics::Metrics;
use crate::replication::reader::{Backoff, BATCH};
use crate::sink::Sink;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use futures_util::{FutureExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use walcast_format::Position;

/// Where the edge is in the stream, kept across reconnects.
#[derive(Debug, Default)]
struct Follow {
    /// The stream sequence to read next.
    next: Option<u64>,
    /// The newest position handed to the hub (or taken as the floor).
    last: Option<Position>,
    /// Whether the log knows from where it is complete.
    floor_set: bool,
    /// Messages read in all.
    received: u64,
    /// Messages missing before the next one read (dropped by the stream).
    gap: u64,
}

/// Runs until `shutdown` becomes true. Never gives up: a lost stream is
/// reported on `/healthz` and looked for again with backoff.
pub async fn run(
    stream_name: String,
    js: Context,
    mut sink: impl Sink,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut at = Follow::default();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let before = at.received;
        let result = follow(
            &stream_name,
            &js,
            &mut sink,
            &metrics,
            &health,
            &shutdown,
            &mut at,
        )
        .await;
        if at.received > before {
            backoff.reset();
        }
        let Err(e) = result else { return };
        let wait = backoff.wait();
        tracing::warn!(error = %e, "the JetStream stream is out of reach; clients stay connected; trying again in {wait:?}");
        health.degraded(&e);
        metrics.nats.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Reads the stream from where `at` says until an error or shutdown.
async fn follow(
    stream_name: &str,
    js: &Context,
    sink: &mut dyn Sink,
    metrics: &Metrics,
    health: &Health,
    shutdown: &CancellationToken,
    at: &mut Follow,
) -> Result<(), String> {
    let mut stream = js.get_stream(stream_name).await.map_err(|e| {
        format!("cannot open the JetStream stream {stream_name}: {e} (is walcast-proxy relay running with the same --nats-stream?)")
    })?;
    let state = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the JetStream stream {stream_name}: {e}"))?
        .state
        .clone();
    let (start, floor_from_first) = start_at(&state, sink, at);
    let mut messages = read_from(&stream, stream_name, start).await?;
    health.streaming();
    tracing::info!(stream = %stream_name, from = start, "reading changes from JetStream");
    let mut take = Take {
        floor_from_first,
        batch: Vec::with_capacity(BATCH),
    };
    let mut link = Link {
        client: js.client(),
        connected: true,
    };
    let mut check = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = check.tick() => {
                link.check(health, metrics);
                continue;
            }
            m = messages.next() => m,
        };
        let first = first.ok_or("the JetStream consumer ended")?;
        take.ready(first, &mut messages, sink, metrics, at)
            .map_err(|e| format!("reading the JetStream stream {stream_name}: {e}"))?;
    }
}

/// The stream sequence to read from, and whether the first message read
/// only tells the floor (`floor_from_first`).
fn start_at(state: &jetstream::stream::State, sink: &mut dyn Sink, at: &mut Follow) -> (u64, bool) {
    match at.next {
        // Messages the stream dropped meanwhile are noticed by their
        // sequence numbers when reading resumes (`Take::message`).
        Some(next) => (next, false),
        None if state.last_sequence == 0 => {
            // A stream that never had a message: everything is to come.
            sink.starts_at(Position::default());
            at.floor_set = true;
            (1, false)
        }
        None => {
            // As many of the newest messages as the log holds.
            let mean = state.bytes.checked_div(state.messages).unwrap_or(0);
            let fit = (sink.max_bytes() as u64) / (mean + ENTRY_OVERHEAD as u64);
            let start = (state.last_sequence + 1)
                .saturating_sub(fit)
                .max(state.first_sequence);
            if start > state.first_sequence {
                (start - 1, true)
            } else {
                (start, false)
            }
        }
    }
}

/// The messages of the stream from sequence `start`, by an ordered consumer.
async fn read_from(
    stream: &jetstream::stream::Stream,
    stream_name: &str,
    start: u64,
) -> Result<pull::Ordered, String> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read the JetStream stream {stream_name}: {e}"))?;
    consumer
        .messages()
        .await
        .map_err(|e| format!("cannot read the JetStream stream {stream_name}: {e}"))
}

/// The NATS connection as `/healthz` was last told.
struct Link {
    client: async_nats::Client,
    connected: bool,
}

impl Link {
    /// Tells `/healthz` when the connection is lost or back. The client
    /// reconnects by itself and the ordered consumer picks up where it was.
    fn check(&mut self, health: &Health, metrics: &Metrics) {
        let now = self.client.connection_state() == async_nats::connection::State::Connected;
        if now != self.connected {
            self.connected = now;
            if now {
                tracing::info!("NATS is back");
                health.streaming();
            } else {
                tracing::warn!("lost the connection to NATS; clients stay connected");
                health.degraded("lost the connection to NATS; reconnecting");
                metrics.nats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Follow {
    /// Counts the message at `sequence`. Sequence numbers have no holes but
    /// those the stream's retention made: messages this edge will never read.
    fn read(&mut self, sequence: u64, metrics: &Metrics) {
        if let Some(next) = self.next {
            self.gap += sequence.saturating_sub(next);
        }
        self.next = Some(sequence + 1);
        self.received += 1;
        metrics.nats.received.fetch_add(1, Ordering::Relaxed);
        metrics.nats.sequence.store(sequence, Ordering::Relaxed);
    }
}

/// Counts and logs a message of the stream that is not walcast's.
fn foreign(m: &jetstream::Message, metrics: &Metrics, why: &str) {
    metrics.nats.foreign.fetch_add(1, Ordering::Relaxed);
    crate::limited!(warn, subject = %m.subject, "skipping a message of the JetStream stream: {why}");
}

/// The position and change of a message walcast published, or why it is
/// not one.
fn walcast_change(m: &jetstream::Message) -> Result<(Position, Change), String> {
    let pos = m
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|v| v.as_str().parse::<Position>().ok());
    let Some(pos) = pos else {
        return Err("no walcast position in Nats-Msg-Id".to_owned());
    };
    if !m.subject.starts_with(super::SUBJECT_ROOT)
        || m.subject.as_bytes().get(super::SUBJECT_ROOT.len()) != Some(&b'.')
    {
        return Err("not a walcast subject".to_owned());
    }
    let change = Change::parse(m.payload.clone(), pos.commit).map_err(|e| e.to_string())?;
    let own = match change.action {
        crate::change::Action::Commit => Some(super::commit_position(change.lsn)),
        _ => change.pos,
    };
    if own != Some(pos) {
        return Err("its Nats-Msg-Id is not the change's position".to_owned());
    }
    Ok((pos, change))
}

/// Turns messages into the hub's batch.
struct Take {
    floor_from_first: bool,
    batch: Vec<Change>,
}

impl Take {
    /// Hands the batch to the hub.
    fn flush(&mut self, sink: &mut dyn Sink, metrics: &Metrics) {
        if !self.batch.is_empty() {
            sink.publish(std::mem::take(&mut self.batch));
            metrics.activity();
        }
    }

    /// Takes `first` and what else is ready, a batch at most, and hands
    /// them to the hub; an error reading the stream is returned after.
    fn ready(
        &mut self,
        first: Result<jetstream::Message, pull::OrderedError>,
        messages: &mut pull::Ordered,
        sink: &mut dyn Sink,
        metrics: &Metrics,
        at: &mut Follow,
    ) -> Result<(), pull::OrderedError> {
        let mut item = Some(first);
        let mut failed = None;
        let mut taken = 0;
        // What is ready goes to the hub as one batch.
        while let Some(m) = item.take() {
            match m {
                Ok(m) => self.message(&m, sink, metrics, at),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            taken += 1;
            if taken < BATCH {
                item = messages.next().now_or_never().flatten();
            }
        }
        self.flush(sink, metrics);
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes one message: a new change of walcast's goes to the batch.
    fn message(
        &mut self,
        m: &jetstream::Message,
        sink: &mut dyn Sink,
        metrics: &Metrics,
        at: &mut Follow,
    ) {
        let Ok(info) = m.info() else {
            return foreign(m, metrics, "no JetStream metadata");
        };
        at.read(info.stream_sequence, metrics);
        if super::is_lost_subject(&m.subject) {
            // The relay lost its slot: what came before is all there is.
            self.flush(sink, metrics);
            let reason = format!("the relay stopped: {}", String::from_utf8_lossy(&m.payload));
            tracing::error!("{reason}");
            sink.lost_for_good(&reason);
            return;
        }
        // A transaction's `B` is for other consumers of the stream.
        if super::is_begin_subject(&m.subject) {
            return;
        }
        let (pos, change) = match walcast_change(m) {
            Ok(found) => found,
            Err(why) => return foreign(m, metrics, &why),
        };
        if self.floor_from_first {
            // The message before the first one this edge serves: every
            // change after it is to come.
            self.floor_from_first = false;
            sink.starts_at(pos);
            at.floor_set = true;
            at.last = Some(pos);
            return;
        }
        self.floor_or_gap(pos, sink, metrics, at);
        // Published again by a relay after a restart, past the duplicate window.
        if at.last.is_some_and(|l| pos <= l) {
            return;
        }
        at.last = Some(pos);
        self.keep(change, metrics);
    }

    /// Tells the hub where its log starts, before the first change at
    /// `pos`, or what it lost, when the stream dropped messages before it.
    fn floor_or_gap(
        &mut self,
        pos: Position,
        sink: &mut dyn Sink,
        metrics: &Metrics,
        at: &mut Follow,
    ) {
        if !at.floor_set {
            sink.starts_at(before(pos));
            at.floor_set = true;
        } else if at.gap > 0 {
            let lost = std::mem::take(&mut at.gap);
            metrics.nats.lost.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(
                lost,
                "{lost} messages of the JetStream stream were dropped by its retention before this \
                 edge read them; its clients are closed, and resuming from before {pos} answers 410"
            );
            // What came before the gap goes first; then the hub learns.
            self.flush(sink, metrics);
            sink.lost(
                before(pos),
                &format!(
                    "this edge could not read {lost} messages of the JetStream stream (its retention \
                     dropped them while NATS was out of reach); reconnect with after to learn where \
                     the log starts"
                ),
            );
        }
    }

    /// Adds a change to the batch when it is for live clients: row changes
    /// (and the watermarks of backfills); commits, DDL and messages are for
    /// other consumers of the stream.
    fn keep(&mut self, change: Change, metrics: &Metrics) {
        if walcast_core::marks::is_mark(&change) {
            self.batch.push(change);
            return;
        }
        if change.row_action().is_none() {
            return;
        }
        metrics.changes_in.fetch_add(1, Ordering::Relaxed);
        metrics.count_action(change.action.name());
        self.batch.push(change);
    }
}
