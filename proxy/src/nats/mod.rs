//! Scale-out on NATS JetStream: one relay reads the slot once and publishes
//! every change (`relay.rs`); any number of edges read the stream instead of
//! a slot and serve clients through their own change log (`edge.rs`).
//!
//! What is in the stream (the contract between the two, in `docs/scale-out.md`):
//!
//! - One message per object of a transaction that has a position: the row
//!   changes (`I`, `U`, `D`, `T`), transactional messages (`M`) and `DDL`,
//!   framed by the transaction's `B` and `C` (for transactions that publish
//!   something). The body is the plugin's JSON, unchanged.
//! - The header `Nats-Msg-Id` is the object's position (`pos`); a `C` gets
//!   its commit LSN with index `FFFFFFFF`, after every change of its
//!   transaction; a `B` gets `<commit LSN>:BEGIN` ([`begin_id`]), and the
//!   header `Walcast-Timeline` ([`TIMELINE_HEADER`]): the timeline its
//!   transaction was read on. JetStream drops a message published again with the same
//!   id (within the duplicate window), and edges drop any message positioned
//!   at or before the last one they have.
//! - Subjects: `walcast.<db>.<schema>.<table>.<insert|update|delete>` for
//!   row changes, `walcast.<db>.truncate`, `walcast.<db>.ddl`,
//!   `walcast.<db>.message.<prefix>`, `walcast.<db>.begin` and
//!   `walcast.<db>.commit`. Names are
//!   made subject-safe by [`token`].
//! - `walcast.<db>.lost` ([`LOST`]): the relay's slot was lost; the body is
//!   the reason. Nothing after it continues what came before.

pub mod edge;
pub mod relay;

use crate::change::{Action, Change};
use async_nats::jetstream;
use std::time::Duration;
use walcast_format::Position;

/// The first token of every subject walcast publishes.
pub const SUBJECT_ROOT: &str = "walcast";

/// Where the stream lives and how it is kept.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://host:port`, comma separated for several servers.
    pub url: String,
    /// The JetStream stream's name.
    pub stream: String,
    /// What the relay creates the stream with.
    pub max_bytes: u64,
    /// Zero: no age limit.
    pub max_age: Duration,
    pub duplicate_window: Duration,
}

/// How long a publish may wait for JetStream's acknowledgement, and a
/// request (stream info, consumer creation) for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes in flight (sent, not acknowledged) at most.
pub const PUBLISHES_IN_FLIGHT: usize = 4096;

/// Why NATS could not be reached at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {error}")]
pub struct ConnectError {
    /// The URL it was asked at.
    pub url: String,
    /// What the client said.
    pub error: async_nats::ConnectError,
}

/// Connects to NATS. An unreachable server at start is an error (the caller
/// exits); once connected, the client reconnects by itself.
pub async fn connect(url: &str, name: &str) -> Result<jetstream::Context, ConnectError> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|error| ConnectError {
            url: url.to_owned(),
            error,
        })?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_ack_inflight(PUBLISHES_IN_FLIGHT)
        .backpressure_on_inflight(true)
        .build(client))
}

/// The stream configuration a relay for database `db` creates.
pub fn stream_config(settings: &NatsSettings, db: &str) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{SUBJECT_ROOT}.{}.>", token(db))],
        max_bytes: i64::try_from(settings.max_bytes).unwrap_or(i64::MAX),
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        retention: jetstream::stream::RetentionPolicy::Limits,
        ..Default::default()
    }
}

/// A name as one subject token: ASCII letters, digits, `_` and `-` stay;
/// every other byte of its UTF-8 (`.`, `*`, `>`, spaces, `%`, non-ASCII)
/// becomes `%XX`. The empty name is `%`. The encoding is one-to-one, so
/// consumers can filter on any table by encoding its name the same way.
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The subject of a change of database `db` (its token already made by
/// [`token`]); `None` for what the relay does not publish.
pub fn subject(db: &str, change: &Change) -> Option<String> {
    let tail = match change.action {
        Action::Insert | Action::Update | Action::Delete => format!(
            "{}.{}.{}",
            token(&change.schema),
            token(&change.table),
            change.action.name()
        ),
        Action::Truncate => "truncate".to_owned(),
        Action::Ddl => "ddl".to_owned(),
        Action::Message => format!("message.{}", token(change.prefix().unwrap_or(""))),
        Action::Begin => return Some(begin_subject(db)),
        Action::Commit => "commit".to_owned(),
        _ => return None,
    };
    Some(format!("{SUBJECT_ROOT}.{db}.{tail}"))
}

/// The message id of the `B` of the transaction committed at `commit`:
/// not a position (a `B` has none), but unique and sorted with its transaction.
pub fn begin_id(commit: walcast_format::Lsn) -> String {
    format!("{:016X}:BEGIN", commit.0)
}

/// The commit LSN a `B`'s message id names ([`begin_id`]); `None` for any
/// other id.
pub fn begin_commit(id: &str) -> Option<walcast_format::Lsn> {
    id.strip_suffix(":BEGIN")
        .and_then(|c| u64::from_str_radix(c, 16).ok())
        .map(walcast_format::Lsn)
        .filter(|c| begin_id(*c) == id)
}

/// The subject of the `B`s of database `db`.
pub fn begin_subject(db: &str) -> String {
    format!("{SUBJECT_ROOT}.{db}.begin")
}

/// The header of every published `B`: the timeline of the server its
/// transaction was read from. A relay started again checks the last one
/// against the server's history after a promotion.
pub const TIMELINE_HEADER: &str = "Walcast-Timeline";

/// The last token of the message a relay publishes when the stream cannot
/// go on: its slot is lost, or what it published never happened on the
/// promoted server.
pub const LOST: &str = "lost";

/// The subject of the message that says the stream of the relay of `db`
/// cannot go on ([`LOST`]).
pub fn lost_subject(db: &str) -> String {
    format!("{SUBJECT_ROOT}.{db}.{LOST}")
}

/// Whether `subject` says a relay's stream cannot go on (`walcast.<db>.lost`).
pub fn is_lost_subject(subject: &str) -> bool {
    subject.strip_suffix(LOST).is_some_and(|s| s.ends_with('.')) && subject.split('.').count() == 3
}

/// Whether `subject` is a `B`'s ([`begin_subject`]: three tokens).
pub fn is_begin_subject(subject: &str) -> bool {
    subject.ends_with(".begin") && subject.split('.').count() == 3
}

/// The position a commit's message carries: after every change of its transaction.
pub fn commit_position(commit: walcast_format::Lsn) -> Position {
    Position::new(commit, u32::MAX)
}

/// The position just before `p`: every position after it is `p` or later.
pub fn before(p: Position) -> Position {
    if p.index > 0 {
        Position::new(p.commit, p.index - 1)
    } else if p.commit.0 > 0 {
        Position::new(walcast_format::Lsn(p.commit.0 - 1), u32::MAX)
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use walcast_format::Lsn;

    #[test]
    fn names_become_single_subject_tokens_one_to_one() {
        assert_eq!(token("users"), "users");
        assert_eq!(token("my_table-2"), "my_table-2");
        assert_eq!(token("a.b"), "a%2Eb");
        assert_eq!(token("*>"), "%2A%3E");
        assert_eq!(token("50%"), "50%25");
        assert_eq!(token("Ünï"), "%C3%9Cn%C3%AF");
        assert_eq!(token("with space"), "with%20space");
        assert_eq!(token(""), "%");
        // One-to-one: distinct names, distinct tokens.
        assert_ne!(token("a.b"), token("a%2Eb"));
        for name in ["a.b", "x y", "*", ">", "tab\t", "é"] {
            let t = token(name);
            assert!(!t.contains(['.', '*', '>', ' ', '\t']), "{t}");
            assert!(t.is_ascii());
        }
    }

    #[test]
    fn the_lost_subject_is_told_from_a_table_named_lost() {
        assert_eq!(lost_subject("shop"), "walcast.shop.lost");
        assert!(is_lost_subject(&lost_subject("shop")));
        assert!(!is_lost_subject("walcast.shop.public.lost.insert"));
        assert!(!is_lost_subject("walcast.shop.notlost"));
        assert!(!is_lost_subject("walcast.shop.commit"));
    }

    #[test]
    fn every_published_kind_has_its_subject() {
        let parse = |s: &str| Change::parse(Bytes::from(s.to_owned()), Lsn(1)).expect("change");
        let insert = parse(
            r#"{"action":"I","lsn":"0/1","schema":"public","table":"order items","columns":{"id":1}}"#,
        );
        assert_eq!(
            subject("shop", &insert).as_deref(),
            Some("walcast.shop.public.order%20items.insert")
        );
        let truncate = parse(r#"{"action":"T","lsn":"0/1","tables":["public.a","public.b"]}"#);
        assert_eq!(
            subject("shop", &truncate).as_deref(),
            Some("walcast.shop.truncate")
        );
        let message = parse(r#"{"action":"M","lsn":"0/1","prefix":"app.audit","content":"x"}"#);
        assert_eq!(
            subject("shop", &message).as_deref(),
            Some("walcast.shop.message.app%2Eaudit")
        );
        let commit = parse(r#"{"action":"C","lsn":"0/1","end_lsn":"0/2"}"#);
        assert_eq!(
            subject("shop", &commit).as_deref(),
            Some("walcast.shop.commit")
        );
        let begin = parse(r#"{"action":"B","lsn":"0/1"}"#);
        assert_eq!(
            subject("shop", &begin).as_deref(),
            Some("walcast.shop.begin")
        );
        assert!(is_begin_subject("walcast.shop.begin"));
        assert!(!is_begin_subject("walcast.shop.public.begin.insert"));
        assert_eq!(begin_id(Lsn(0x16B3800)), "00000000016B3800:BEGIN");
        let stream_start = parse(r#"{"action":"SS","xid":5}"#);
        assert_eq!(subject("shop", &stream_start), None);
    }

    #[test]
    fn positions_before_and_after_a_transaction() {
        let p = Position::new(Lsn(0x100), 3);
        assert_eq!(before(p), Position::new(Lsn(0x100), 2));
        assert_eq!(
            before(Position::new(Lsn(0x100), 0)),
            Position::new(Lsn(0xFF), u32::MAX)
        );
        assert!(commit_position(Lsn(0x100)) > p);
        assert!(commit_position(Lsn(0x100)) < Position::new(Lsn(0x101), 0));
        assert_eq!(
            commit_position(Lsn(0x16B3800)).to_string(),
            "00000000016B3800:FFFFFFFF"
        );
    }

    #[test]
    fn a_begins_id_names_its_transaction() {
        let commit = Lsn(0x16B3800);
        assert_eq!(begin_commit(&begin_id(commit)), Some(commit));
        assert_eq!(begin_commit(&Position::new(commit, 3).to_string()), None);
        assert_eq!(begin_commit("lost:1733400000"), None);
        assert_eq!(begin_commit("16B3800:BEGIN"), None);
    }
}
