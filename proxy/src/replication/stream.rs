//! The CopyBoth stream of `START_REPLICATION`: XLogData messages in,
//! standby status updates out (on a timer, when the server asks, and when the
//! consumer confirms a new position).

use super::conn::Connection;
use super::error::ReplicationError;
use bytes::{Buf, Bytes};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use walcast_format::Lsn;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_USECS: i64 = 946_684_800_000_000;

/// One message of the plugin with its WAL position.
#[derive(Debug, Clone)]
pub struct XLogData {
    /// The LSN the message belongs to (the change's, or the commit's end).
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The plugin's bytes (one JSON object).
    pub data: Bytes,
}

/// An open replication stream.
pub struct ReplicationStream {
    conn: Connection,
    interval: Duration,
    next_status: Instant,
    received: Lsn,
    flushed: Lsn,
    caught_up: bool,
    /// When the server last asked for a reply (to notice a shutdown wait).
    reply_requests: Vec<Instant>,
}

/// Replies asked for within [`WAIT_WINDOW`] that mean the server is
/// waiting for positions (a shutting-down walsender pings until the client
/// confirms everything it sent).
const WAIT_PINGS: usize = 5;
const WAIT_WINDOW: Duration = Duration::from_secs(2);

impl ReplicationStream {
    pub(super) fn new(conn: Connection, start: Lsn, interval: Duration) -> Self {
        ReplicationStream {
            conn,
            interval,
            next_status: Instant::now() + interval,
            received: start,
            flushed: start,
            caught_up: false,
            reply_requests: Vec::new(),
        }
    }

    /// Tells the stream whether everything received so far is processed and
    /// no transaction is open. While true, a keepalive's position is
    /// confirmed as it comes (nothing before it is left to process), as
    /// `pg_recvlogical` does; this lets idle slots advance and lets a
    /// shutting-down server finish.
    pub fn set_caught_up(&mut self, yes: bool) {
        self.caught_up = yes;
    }

    /// The position confirmed to the server so far (or about to be).
    pub fn confirmed(&self) -> Lsn {
        self.flushed
    }

    /// The highest WAL position the server said it has.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// Marks everything up to `lsn` as processed; the server may release the
    /// WAL before it once the next status update tells it.
    pub fn confirm(&mut self, lsn: Lsn) {
        if lsn > self.flushed {
            self.flushed = lsn;
        }
    }

    /// The next plugin message. Keepalives are answered and status updates
    /// sent on the timer while waiting. `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<XLogData>, ReplicationError> {
        loop {
            let read = tokio::time::timeout_at(self.next_status, self.conn.read_copy_data()).await;
            let mut buf = match read {
                Err(_elapsed) => {
                    self.send_status(false).await?;
                    continue;
                }
                Ok(r) => match r? {
                    Some(b) => b,
                    None => return Ok(None),
                },
            };
            if buf.is_empty() {
                return Err(ReplicationError::transient("empty replication message"));
            }
            match buf.get_u8() {
                b'w' if buf.len() >= 24 => {
                    let wal_start = Lsn(buf.get_u64());
                    let wal_end = Lsn(buf.get_u64());
                    let _server_clock = buf.get_i64();
                    if wal_end > self.received {
                        self.received = wal_end;
                    }
                    return Ok(Some(XLogData {
                        wal_start,
                        wal_end,
                        data: buf,
                    }));
                }
                b'k' if buf.len() >= 17 => {
                    let wal_end = Lsn(buf.get_u64());
                    let _server_clock = buf.get_i64();
                    let reply = buf.get_u8() == 1;
                    if wal_end > self.received {
                        self.received = wal_end;
                    }
                    if self.caught_up && wal_end > self.flushed {
                        self.flushed = wal_end;
                    }
                    if reply {
                        let now = Instant::now();
                        self.reply_requests
                            .retain(|t| now.duration_since(*t) < WAIT_WINDOW);
                        self.reply_requests.push(now);
                        if self.reply_requests.len() >= WAIT_PINGS && self.flushed < wal_end {
                            return Err(ReplicationError::transient(format!(
                                "PostgreSQL is waiting for positions up to {wal_end} that are not \
                                 acknowledged yet (it is shutting down)"
                            )));
                        }
                        self.send_status(false).await?;
                    }
                }
                other => {
                    return Err(ReplicationError::transient(format!(
                        "unexpected replication message {:?}",
                        other as char
                    )))
                }
            }
        }
    }

    /// Sends a standby status update: written = received, flushed = applied = confirmed.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), ReplicationError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let mut msg = Vec::with_capacity(34);
        msg.push(b'r');
        msg.extend_from_slice(&self.received.max(self.flushed).0.to_be_bytes());
        msg.extend_from_slice(&self.flushed.0.to_be_bytes());
        msg.extend_from_slice(&self.flushed.0.to_be_bytes());
        msg.extend_from_slice(&(now - PG_EPOCH_UNIX_USECS).to_be_bytes());
        msg.push(u8::from(reply_requested));
        self.conn.send_copy_data(&msg).await?;
        self.next_status = Instant::now() + self.interval;
        Ok(())
    }

    /// Confirms the final position and ends the stream cleanly (CopyDone, Terminate).
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        self.send_status(false).await?;
        self.conn.close().await
    }
}
