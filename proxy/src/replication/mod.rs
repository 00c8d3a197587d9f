//! The replication client: a connection in `replication=database` mode that
//! identifies the system, creates or finds the slot, and streams the walcast
//! plugin's messages with standby status updates.
//!
//! ```text
//! ReplicationClient::connect(url) -> identify_system / slot / create_slot
//!     -> start(slot, lsn, options) -> ReplicationStream::next() -> XLogData
//!                                     ReplicationStream::confirm(lsn)
//! ```

mod conn;
mod error;
pub mod reader;
mod stream;

pub use error::{ErrorKind, ReplicationError, ServerError};
pub use stream::{ReplicationStream, XLogData};

use conn::Connection;
use std::time::Duration;
use walcast_format::Lsn;

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// An existing replication slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub confirmed_flush: Option<Lsn>,
    /// Whether it is a failover slot (`None` before PostgreSQL 17, and for
    /// a temporary slot, which cannot be one).
    pub failover: Option<bool>,
    /// Invalidated by PostgreSQL (`wal_status` `lost`: it fell behind
    /// `max_slot_wal_keep_size`; on 16+ also a standby's slot whose rows
    /// the primary removed): it exists and can never be read again.
    pub invalidated: bool,
}

/// A slot just created.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub name: String,
    pub consistent_point: Lsn,
    pub snapshot: Option<String>,
}

/// Why a name cannot be a slot's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotNameError {
    /// Empty, or longer than 63 bytes: the name.
    #[error("slot name {0:?} must be 1 to 63 characters")]
    Length(String),
    /// Something other than `[a-z0-9_]` in it: the name.
    #[error("slot name {0:?} may contain only lower case letters, digits and underscores")]
    Characters(String),
}

/// Checks a slot name as PostgreSQL does: 1 to 63 of `[a-z0-9_]`.
pub fn validate_slot_name(name: &str) -> Result<(), SlotNameError> {
    if name.is_empty() || name.len() > 63 {
        return Err(SlotNameError::Length(name.to_owned()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(SlotNameError::Characters(name.to_owned()));
    }
    Ok(())
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A timeline history file's text: the `content` column as the server sends
/// it (bytea, in hex when it is `\x...`).
fn history_text(content: &str) -> String {
    let Some(hex) = content.strip_prefix("\\x") else {
        return content.to_owned();
    };
    let bytes: Vec<u8> = hex
        .as_bytes()
        .chunks(2)
        .filter_map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// While a slot is made on a standby: asks the primary every second to log
/// its running transactions (`pg_log_standby_snapshot`, 16+), so that the
/// slot is ready at once rather than at the primary's next such log. A
/// primary that refuses (the function is for superusers unless granted) is
/// told once in the log; the slot then waits for the primary's own log.
fn nudge_primary(primary: crate::database::Database, slot: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pool = crate::sql::SqlPool::new(primary, 1);
        loop {
            let asked = match pool.get().await {
                Ok(c) => c
                    .simple_query("SELECT pg_catalog.pg_log_standby_snapshot()")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = asked {
                tracing::warn!(%slot, %error, "making a slot on a standby waits for the primary to log its running transactions (every 15 s while it writes); grant EXECUTE ON FUNCTION pg_log_standby_snapshot() to this role on the primary, or give --primary-url, to have it at once");
                return;
            }
            tokio::time::sleep(STANDBY_SNAPSHOT_EVERY).await;
        }
    })
}

/// The switch points of a history file, one per earlier timeline: its
/// lines are `parent-timeline <tab> switch-point <tab> reason`.
fn switch_points_in(history: &str) -> Vec<(u32, Lsn)> {
    history
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let tli: u32 = fields.next()?.parse().ok()?;
            let lsn: Lsn = fields.next()?.parse().ok()?;
            Some((tli, lsn))
        })
        .collect()
}

/// A replication connection before streaming.
pub struct ReplicationClient {
    conn: Connection,
    /// Where it was made to: for what must be written on the primary when
    /// the server is a standby (`Database::writes`).
    database: crate::database::Database,
    /// Whether the server is a standby, once asked.
    standby: Option<bool>,
}

/// How often the primary is asked to log its running transactions while a
/// slot is being made on a standby (`pg_log_standby_snapshot`).
const STANDBY_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The first major version with failover slots.
pub const FAILOVER_SLOTS_SINCE: u32 = 17;

/// The first major version that decodes on a standby.
pub const STANDBY_DECODING_SINCE: u32 = 16;

impl ReplicationClient {
    /// Connects in `replication=database` mode.
    pub async fn connect(config: &crate::database::Database) -> Result<Self, ReplicationError> {
        Ok(ReplicationClient {
            conn: Connection::connect(config, true).await?,
            database: config.clone(),
            standby: None,
        })
    }

    /// The server's major version.
    pub fn major(&self) -> u32 {
        self.conn.major()
    }

    /// `DROP_REPLICATION_SLOT name`.
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), ReplicationError> {
        validate_slot_name(name).map_err(|e| ReplicationError::definite(e.to_string()))?;
        self.conn
            .simple_query(&format!("DROP_REPLICATION_SLOT {name}"))
            .await?;
        Ok(())
    }

    /// Whether the server is a standby (in recovery); asked once per connection.
    pub async fn in_recovery(&mut self) -> Result<bool, ReplicationError> {
        if let Some(standby) = self.standby {
            return Ok(standby);
        }
        let rows = self
            .conn
            .simple_query("SELECT pg_catalog.pg_is_in_recovery()::text")
            .await?;
        let standby =
            rows.first().and_then(|r| r.first().cloned().flatten()) == Some("true".to_owned());
        self.standby = Some(standby);
        Ok(standby)
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        let rows = self.conn.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| ReplicationError::transient("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlogpos: col(2).and_then(|l| l.parse().ok()).unwrap_or(Lsn::INVALID),
            dbname: col(3),
        })
    }

    /// The slot named `name`, if it exists.
    pub async fn slot(&mut self, name: &str) -> Result<Option<SlotInfo>, ReplicationError> {
        let rows = self
            .conn
            .simple_query(&format!(
                "SELECT plugin, database, active::text, confirmed_flush_lsn::text, {}, ({})::text \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                if self.conn.major() >= FAILOVER_SLOTS_SINCE {
                    "(CASE WHEN temporary THEN NULL ELSE failover END)::text"
                } else {
                    "NULL"
                },
                if self.conn.major() >= FAILOVER_SLOTS_SINCE {
                    "invalidation_reason IS NOT NULL"
                } else if self.conn.major() >= STANDBY_DECODING_SINCE {
                    "wal_status IS NOT DISTINCT FROM 'lost' OR coalesce(conflicting, false)"
                } else {
                    "wal_status IS NOT DISTINCT FROM 'lost'"
                },
                quote_literal(name)
            ))
            .await?;
        Ok(rows.first().map(|r| SlotInfo {
            plugin: r.first().cloned().flatten(),
            database: r.get(1).cloned().flatten(),
            active: r.get(2).cloned().flatten().as_deref() == Some("true"),
            confirmed_flush: r.get(3).cloned().flatten().and_then(|l| l.parse().ok()),
            failover: r.get(4).cloned().flatten().map(|f| f == "true"),
            invalidated: r.get(5).cloned().flatten().as_deref() == Some("true"),
        }))
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL walcast`, exporting a
    /// snapshot when asked (it stays valid while this connection stays
    /// idle). With `failover`, a permanent slot on PostgreSQL 17 or newer is
    /// a failover slot (synchronized to standbys that ask for it).
    pub async fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
        export_snapshot: bool,
        failover: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        validate_slot_name(name).map_err(|e| ReplicationError::definite(e.to_string()))?;
        let snapshot = if export_snapshot { "export" } else { "nothing" };
        let mut failover = failover && !temporary && self.conn.major() >= FAILOVER_SLOTS_SINCE;
        let standby = self.in_recovery().await?;
        if failover && standby {
            tracing::info!(slot = %name, "the server is a standby: a slot made on a standby cannot be a failover slot");
            failover = false;
        }
        let sql = format!(
            "CREATE_REPLICATION_SLOT {name}{} LOGICAL walcast (SNAPSHOT '{snapshot}'{})",
            if temporary { " TEMPORARY" } else { "" },
            if failover { ", FAILOVER true" } else { "" },
        );
        let rows = if standby {
            // A slot on a standby is ready once the standby replays a log of
            // the primary's running transactions made after the slot began;
            // the primary writes one by itself only every 15 s, and only when
            // it is busy.
            let nudge = nudge_primary(self.database.writes(), name.to_owned());
            let rows = self.conn.simple_query(&sql).await;
            nudge.abort();
            rows?
        } else {
            self.conn.simple_query(&sql).await?
        };
        let row = rows.first().ok_or_else(|| {
            ReplicationError::transient("CREATE_REPLICATION_SLOT returned no row")
        })?;
        Ok(CreatedSlot {
            name: row
                .first()
                .cloned()
                .flatten()
                .unwrap_or_else(|| name.to_owned()),
            consistent_point: row
                .get(1)
                .cloned()
                .flatten()
                .and_then(|l| l.parse().ok())
                .unwrap_or(Lsn::INVALID),
            snapshot: row.get(2).cloned().flatten(),
        })
    }

    /// On PostgreSQL 17 or newer, makes the slot `name` a failover slot if
    /// it is not one yet (a slot made before failover slots were asked for,
    /// or by an older walcast), and says so in the log. `info` is what
    /// [`ReplicationClient::slot`] found, when the caller read it already.
    /// A slot that cannot be altered is used as it is, with a warning: it
    /// is not lost on this server, only not synchronized to standbys.
    pub async fn keep_failover(
        &mut self,
        name: &str,
        info: Option<&SlotInfo>,
    ) -> Result<(), ReplicationError> {
        if self.conn.major() < FAILOVER_SLOTS_SINCE || self.in_recovery().await? {
            return Ok(());
        }
        let read;
        let info = match info {
            Some(i) => i,
            None => match self.slot(name).await? {
                Some(i) => {
                    read = i;
                    &read
                }
                None => return Ok(()),
            },
        };
        if info.failover != Some(false) {
            return Ok(());
        }
        validate_slot_name(name).map_err(|e| ReplicationError::definite(e.to_string()))?;
        match self
            .conn
            .simple_query(&format!("ALTER_REPLICATION_SLOT {name} (FAILOVER true)"))
            .await
        {
            Ok(_) => {
                tracing::info!(slot = %name, "made the replication slot a failover slot (--failover-slots)")
            }
            Err(e) => {
                tracing::warn!(slot = %name, error = %e, "cannot make the replication slot a failover slot; it is used as it is, and not synchronized to standbys")
            }
        }
        Ok(())
    }

    /// Where the server's history left each earlier timeline: the first
    /// position of that timeline that is not on the history of `now` (the
    /// server's timeline, `TIMELINE_HISTORY now`). Empty on timeline 1.
    pub async fn switch_points(&mut self, now: u32) -> Result<Vec<(u32, Lsn)>, ReplicationError> {
        if now <= 1 {
            return Ok(Vec::new());
        }
        let rows = self
            .conn
            .simple_query(&format!("TIMELINE_HISTORY {now}"))
            .await?;
        let content = rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .unwrap_or_default();
        Ok(switch_points_in(&history_text(&content)))
    }

    /// Whether `walcast.streams` records the slot `name` (`None`: the
    /// database has no such table, `CREATE EXTENSION walcast` was not run,
    /// or this role may not read and write it).
    pub async fn recorded(&mut self, name: &str) -> Result<Option<bool>, ReplicationError> {
        // Asked first, by OID: naming a table in a schema the role may not
        // use is an error, not an answer.
        let usable = self
            .conn
            .simple_query(
                "SELECT count(*)::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'walcast' AND c.relname = 'streams' \
                 AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') \
                 AND pg_catalog.has_table_privilege(c.oid, 'SELECT') \
                 AND pg_catalog.has_table_privilege(c.oid, 'INSERT')",
            )
            .await?;
        if usable.first().and_then(|r| r.first().cloned().flatten()) != Some("1".to_owned()) {
            return Ok(None);
        }
        let rows = self
            .conn
            .simple_query(&format!(
                "SELECT count(*)::text FROM walcast.streams WHERE slot_name = {}",
                quote_literal(name)
            ))
            .await?;
        Ok(Some(
            rows.first().and_then(|r| r.first().cloned().flatten()) == Some("1".to_owned()),
        ))
    }

    /// Records the slot `name` in `walcast.streams` (kept if it is there),
    /// so that its loss is told from a first start on this server and on
    /// every standby, which replicate the record. On a standby the record
    /// is written on the primary (`Database::writes`). A record that cannot
    /// be written is told in the log.
    pub async fn record(&mut self, name: &str) {
        let sql = format!(
            "INSERT INTO walcast.streams (slot_name) VALUES ({}) ON CONFLICT (slot_name) DO NOTHING",
            quote_literal(name)
        );
        let done = match self.in_recovery().await {
            Ok(true) => {
                let primary = crate::sql::SqlPool::new(self.database.writes(), 1);
                match primary.get().await {
                    Ok(c) => c
                        .simple_query(&sql)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(false) => self
                .conn
                .simple_query(&sql)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = done {
            tracing::warn!(slot = %name, error = %e, "cannot record the slot in walcast.streams: its loss in a failover would look like a first start");
        }
    }

    /// `START_REPLICATION SLOT name LOGICAL lsn (options)`; status updates every `interval`.
    pub async fn start(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
        interval: Duration,
    ) -> Result<ReplicationStream, ReplicationError> {
        validate_slot_name(slot).map_err(|e| ReplicationError::definite(e.to_string()))?;
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("\"{}\" {}", k.replace('"', ""), quote_literal(v)))
            .collect();
        let mut sql = format!("START_REPLICATION SLOT {slot} LOGICAL {start}");
        if !opts.is_empty() {
            sql.push_str(&format!(" ({})", opts.join(", ")));
        }
        self.conn.start_copy_both(&sql).await?;
        Ok(ReplicationStream::new(self.conn, start, interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_point_of_a_timeline_is_read_from_its_history() {
        // `TIMELINE_HISTORY 3` as a server sends it (bytea in hex).
        let text = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000A28\tno recovery target specified\n";
        let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        let history = history_text(&format!("\\x{hex}"));
        assert_eq!(history, text);
        let lsn = |s: &str| s.parse::<Lsn>().expect("an LSN");
        assert_eq!(
            switch_points_in(&history),
            vec![(1, lsn("0/3000148")), (2, lsn("0/5000A28"))]
        );
        assert_eq!(history_text(text), text, "plain text is taken as it is");
    }
}
