//! Durable streams on JetStream (an edge, `serve --nats-url`): each stream
//! is a durable JetStream consumer of the relay's stream instead of a slot,
//! so any number of durable streams cost PostgreSQL the relay's one slot.
//!
//! - **Create** (`streams.rs`): a *temporary* slot exports the snapshot
//!   (held as for slot streams) and gives its consistent point `C`; the
//!   consumer starts at the stream's next sequence as it was *before* the
//!   slot was created, and every transaction that committed before `C` is
//!   skipped (it is in the snapshot). Both are kept in the consumer's
//!   description.
//! - **Consume** (`consumer.rs`, through [`JetSource`]): frames are the
//!   stream's messages (`B`, changes, `C`), the same bytes as from a slot. An
//!   ACK of a `C`'s `end_lsn` acknowledges that message on the consumer
//!   (ack-all: everything before it too).
//! - **Resume**: every connection takes the stream over with a new
//!   *generation* of the consumer (`<stream>_g<n>`) that starts right after
//!   the last acknowledged message, then deletes the old one (whose
//!   connection, on any edge, ends). Messages delivered but not acknowledged
//!   come again, in order, at once; a crash between the two steps leaves two
//!   generations, and the newest wins.

use crate::change::{Action, Change};
use crate::nats::{begin_commit, is_begin_subject, is_lost_subject};
use crate::refusal::{Kind, Refusal};
use crate::replication::XLogData;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::time::Duration;
use walcast_format::{Lsn, Position};

/// How long JetStream waits for an ACK before it delivers a message again
/// (to the same connection: a new connection takes over at once).
const ACK_WAIT: Duration = Duration::from_secs(300);

/// Messages delivered and not acknowledged a connection may have at most:
/// past it, delivery waits for the client's ACKs (as WAL waits for a slot's).
const MAX_ACK_PENDING: i64 = 100_000;

/// The durable streams of one JetStream stream.
pub struct JetStreams {
    js: Context,
    stream: String,
}

/// What a durable stream's consumer remembers of its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The snapshot's consistent point: transactions committed before it are in the snapshot.
    pub snapshot_lsn: Lsn,
    /// The stream sequence the first generation started at.
    pub start: u64,
    /// The stream sequence this generation started at: everything before
    /// it was acknowledged on an older one (a generation whose connection
    /// ACKed nothing reports no ack floor of its own).
    pub resume: u64,
}

impl Origin {
    fn describe(&self) -> String {
        format!(
            "walcast durable stream; snapshot {}; from {}; at {}",
            self.snapshot_lsn, self.start, self.resume
        )
    }

    fn parse(description: &str) -> Option<Origin> {
        let rest = description.strip_prefix("walcast durable stream; snapshot ")?;
        let (lsn, rest) = rest.split_once("; from ")?;
        let (start, resume) = rest.split_once("; at ")?;
        Some(Origin {
            snapshot_lsn: lsn.parse().ok()?,
            start: start.parse().ok()?,
            resume: resume.parse().ok()?,
        })
    }
}

/// One durable stream as JetStream knows it.
#[derive(Debug, Clone)]
pub struct JetInfo {
    pub name: String,
    /// Whether a connection (on any edge) is pulling from it now.
    pub active: bool,
    /// The position of the last acknowledged transaction, if any.
    pub confirmed_lsn: Option<Lsn>,
    /// Messages not yet delivered, times the stream's mean message size.
    pub lag_bytes: i64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal::unavailable(format!("{what}: {e} (JetStream)"))
}

/// `walcast_amber1_g3` -> (`walcast_amber1`, 3).
fn generation(consumer: &str) -> Option<(&str, u64)> {
    let (name, n) = consumer.rsplit_once("_g")?;
    if !super::is_stream_slot_name(name) {
        return None;
    }
    Some((name, n.parse().ok()?))
}

impl JetStreams {
    pub fn new(js: Context, stream: String) -> JetStreams {
        JetStreams { js, stream }
    }

    async fn get(&self) -> Result<jetstream::stream::Stream, Refusal> {
        self.js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unavailable(&format!("cannot open the stream {}", self.stream), e))
    }

    /// The stream sequence the next message will get.
    pub async fn next_sequence(&self) -> Result<u64, Refusal> {
        let mut s = self.get().await?;
        let info = s
            .info()
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?;
        Ok(info.state.last_sequence + 1)
    }

    /// Every durable stream's consumers: name -> generations, oldest first.
    async fn generations(&self) -> Result<Vec<(String, Vec<u64>)>, Refusal> {
        let s = self.get().await?;
        let mut names = s.consumer_names();
        let mut all: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        while let Some(n) = names.next().await {
            let n = n.map_err(|e| unavailable("cannot list the consumers", e))?;
            if let Some((name, g)) = generation(&n) {
                all.entry(name.to_owned()).or_default().push(g);
            }
        }
        Ok(all
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_unstable();
                (k, v)
            })
            .collect())
    }

    /// The generations of `name`, oldest first (none: no such stream).
    async fn generations_of(&self, name: &str) -> Result<Vec<u64>, Refusal> {
        Ok(self
            .generations()
            .await?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, g)| g)
            .unwrap_or_default())
    }

    /// Whether a durable stream (any generation) is called `name`.
    pub async fn exists(&self, name: &str) -> Result<bool, Refusal> {
        Ok(!self.generations_of(name).await?.is_empty())
    }

    fn config(name: &str, generation: u64, origin: Origin, start: u64) -> pull::Config {
        let origin = Origin {
            resume: start.max(1),
            ..origin
        };
        pull::Config {
            durable_name: Some(format!("{name}_g{generation}")),
            description: Some(origin.describe()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ack_policy: AckPolicy::All,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        }
    }

    /// Creates the first generation of the stream `name`.
    pub async fn create(&self, name: &str, origin: Origin) -> Result<(), Refusal> {
        let s = self.get().await?;
        s.create_consumer(Self::config(name, 1, origin, origin.start))
            .await
            .map_err(|e| unavailable(&format!("cannot create the consumer of {name}"), e))?;
        Ok(())
    }

    /// Takes the stream over: a new generation from right after the last
    /// acknowledged message, the older ones deleted. 404 when there is no
    /// such stream.
    pub async fn take_over(&self, name: &str) -> Result<(JetSource, Lsn), Refusal> {
        let s = self.get().await?;
        let gens = self.generations_of(name).await?;
        let Some(&g) = gens.last() else {
            return Err(Refusal::new(
                Kind::NotFound,
                format!("no durable stream {name:?} (see GET /v1/streams)"),
            ));
        };
        let old = format!("{name}_g{g}");
        let info = s
            .consumer_info(&old)
            .await
            .map_err(|e| unavailable(&format!("cannot read the consumer of {name}"), e))?;
        let origin = info
            .config
            .description
            .as_deref()
            .and_then(Origin::parse)
            .ok_or_else(|| {
                Refusal::unavailable(format!(
                    "the consumer {old} was not made by walcast (its description says nothing of a snapshot)"
                ))
            })?;
        // What this generation acknowledged, or at least what the ones
        // before it did (it started right after that).
        let floor = info
            .ack_floor
            .stream_sequence
            .max(origin.resume.saturating_sub(1));
        let start = (floor + 1).max(origin.start);
        let (confirmed, floor_position) = self.position_of(&s, floor).await.unzip();
        let consumer = s
            .create_consumer(Self::config(name, g + 1, origin, start))
            .await
            .map_err(|e| unavailable(&format!("cannot take over {name}"), e))?;
        // The older generations go; their connections end.
        for old in gens {
            let _ = s.delete_consumer(&format!("{name}_g{old}")).await;
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(&format!("cannot read {name}"), e))?;
        Ok((
            JetSource {
                messages,
                snapshot_lsn: origin.snapshot_lsn,
                // A transaction the relay published again later in the
                // stream (past the duplicate window) is not delivered again.
                last: floor_position,
                commits: VecDeque::new(),
                confirm: Lsn(0),
            },
            confirmed.unwrap_or(Lsn(0)),
        ))
    }

    /// The LSN a client ACKed to reach stream sequence `seq` (a `C`'s
    /// `end_lsn`) and that message's position, if it is still there.
    async fn position_of(
        &self,
        s: &jetstream::stream::Stream,
        seq: u64,
    ) -> Option<(Lsn, Position)> {
        if seq == 0 {
            return None;
        }
        let m = s.get_raw_message(seq).await.ok()?;
        let pos = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .and_then(|v| v.as_str().parse::<Position>().ok())?;
        let c = Change::parse(m.payload, Lsn(0)).ok()?;
        Some((c.end_lsn().unwrap_or(c.lsn), pos))
    }

    /// Every durable stream with its state.
    pub async fn list(&self) -> Result<Vec<JetInfo>, Refusal> {
        let mut s = self.get().await?;
        let state = s
            .info()
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?
            .state
            .clone();
        let mean = state.bytes.checked_div(state.messages).unwrap_or(0);
        let mut out = Vec::new();
        for (name, gens) in self.generations().await? {
            let Some(g) = gens.last() else { continue };
            let Ok(info) = s.consumer_info(format!("{name}_g{g}")).await else {
                continue;
            };
            out.push(JetInfo {
                active: info.num_waiting > 0,
                confirmed_lsn: self
                    .position_of(&s, info.ack_floor.stream_sequence)
                    .await
                    .map(|(lsn, _)| lsn),
                lag_bytes: i64::try_from(info.num_pending.saturating_mul(mean)).unwrap_or(i64::MAX),
                name,
            });
        }
        Ok(out)
    }

    /// Deletes every generation of `name`; 404 when there is none.
    pub async fn delete(&self, name: &str) -> Result<(), Refusal> {
        let s = self.get().await?;
        let gens = self.generations_of(name).await?;
        if gens.is_empty() {
            return Err(Refusal::new(
                Kind::NotFound,
                format!("no durable stream {name:?} (see GET /v1/streams)"),
            ));
        }
        for g in gens {
            s.delete_consumer(&format!("{name}_g{g}"))
                .await
                .map_err(|e| unavailable(&format!("cannot delete {name}"), e))?;
        }
        Ok(())
    }
}

/// JetStream did not take a connection's acknowledgement.
#[derive(Debug, thiserror::Error)]
#[error("JetStream did not take the ACK: {0}")]
pub struct AckError(async_nats::Error);

/// Why the consumer's messages end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// They could not be read (the consumer was taken over by another
    /// connection or deleted, or NATS is out of reach).
    #[error("reading from JetStream: {0}")]
    Messages(#[from] pull::MessagesError),
    /// The relay lost its slot (`walcast.<db>.lost`): the reason. Nothing
    /// after it continues the stream.
    #[error("the relay stopped: {0}")]
    Lost(String),
}

/// A connection's reading of its durable stream's consumer, in the shape
/// the slot's replication stream has (`consumer.rs`).
pub struct JetSource {
    messages: pull::Stream,
    snapshot_lsn: Lsn,
    /// The position of the last message passed on (a message again after a
    /// relay restart, or delivered again, is dropped).
    last: Option<Position>,
    /// The `C` messages passed on and not yet acknowledged, with their `end_lsn`.
    commits: VecDeque<(Lsn, jetstream::Message)>,
    /// The newest ACK to acknowledge on the next [`JetSource::send_status`].
    confirm: Lsn,
}

impl JetSource {
    /// The next message for the client, as plugin bytes. Errors when the
    /// consumer is gone (taken over by another connection, deleted) or NATS is.
    pub async fn next(&mut self) -> Result<Option<XLogData>, ReadError> {
        loop {
            let Some(m) = self.messages.next().await else {
                return Ok(None);
            };
            let m = m?;
            if is_lost_subject(&m.subject) {
                return Err(ReadError::Lost(
                    String::from_utf8_lossy(&m.payload).into_owned(),
                ));
            }
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            // Where the message sits: a `B` by its transaction's commit.
            let pos = if is_begin_subject(&m.subject) {
                begin_commit(&id)
                    .map(|c| Position::new(c, 0))
                    .map(|p| (p, true))
            } else {
                id.parse::<Position>().ok().map(|p| (p, false))
            };
            let Some((pos, begin)) = pos else {
                // Not a relay's message: it is acknowledged with what follows.
                continue;
            };
            // In the snapshot.
            if pos.commit < self.snapshot_lsn {
                continue;
            }
            // A `B` sorts before its transaction's first change.
            if let Some(last) = self.last {
                let again = if begin {
                    pos.commit <= last.commit
                } else {
                    pos <= last
                };
                if again {
                    continue;
                }
            }
            if !begin {
                self.last = Some(pos);
            }
            let data = m.payload.clone();
            if let Ok(change) = Change::parse(data.clone(), pos.commit) {
                if change.action == Action::Commit {
                    let end = change.end_lsn().unwrap_or(change.lsn);
                    self.commits.push_back((end, m));
                }
            }
            return Ok(Some(XLogData {
                wal_start: Lsn(0),
                wal_end: Lsn(0),
                data,
            }));
        }
    }

    /// Marks everything up to `lsn` (a `C`'s `end_lsn`) as processed.
    pub fn confirm(&mut self, lsn: Lsn) {
        self.confirm = self.confirm.max(lsn);
    }

    /// Acknowledges, on the consumer, the newest `C` at or before the
    /// confirmed position (and so everything before it), and waits for
    /// JetStream to have it.
    pub async fn send_status(&mut self) -> Result<(), AckError> {
        let mut newest = None;
        while self
            .commits
            .front()
            .is_some_and(|(end, _)| *end <= self.confirm)
        {
            newest = self.commits.pop_front();
        }
        if let Some((_, m)) = newest {
            m.double_ack().await.map_err(AckError)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_generations_read_back() {
        let o = Origin {
            snapshot_lsn: Lsn(0x16B3748),
            start: 42,
            resume: 50,
        };
        assert_eq!(Origin::parse(&o.describe()), Some(o));
        assert_eq!(Origin::parse("something else"), None);
        assert_eq!(generation("walcast_amber1_g3"), Some(("walcast_amber1", 3)));
        assert_eq!(
            generation("walcast_orders_eu2_g10"),
            Some(("walcast_orders_eu2", 10))
        );
        assert_eq!(generation("walcast_amber1"), None);
        assert_eq!(generation("other_g1"), None);
    }
}
