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

/// A replication connection before streaming.
pub struct ReplicationClient {
    conn: Connection,
}

impl ReplicationClient {
    /// Connects in `replication=database` mode.
    pub async fn connect(config: &crate::database::Database) -> Result<Self, ReplicationError> {
        Ok(ReplicationClient {
            conn: Connection::connect(config, true).await?,
        })
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
                "SELECT plugin, database, active::text, confirmed_flush_lsn::text \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                quote_literal(name)
            ))
            .await?;
        Ok(rows.first().map(|r| SlotInfo {
            plugin: r.first().cloned().flatten(),
            database: r.get(1).cloned().flatten(),
            active: r.get(2).cloned().flatten().as_deref() == Some("true"),
            confirmed_flush: r.get(3).cloned().flatten().and_then(|l| l.parse().ok()),
        }))
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL walcast`, exporting a
    /// snapshot when asked (it stays valid while this connection stays idle).
    pub async fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        validate_slot_name(name).map_err(|e| ReplicationError::definite(e.to_string()))?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT {name}{} LOGICAL walcast {}",
            if temporary { " TEMPORARY" } else { "" },
            if export_snapshot {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            }
        );
        let rows = self.conn.simple_query(&sql).await?;
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
