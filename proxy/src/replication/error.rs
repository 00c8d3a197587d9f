//! Errors of the replication connection, classified by what to do next.

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection or the server went away: reconnect with backoff and
    /// resume from the last confirmed LSN.
    Transient,
    /// Retrying cannot help (slot gone, plugin missing, wal_level wrong,
    /// authentication refused): stop and report.
    Definite,
}

/// A replication error with an actionable message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ReplicationError {
    /// Transient or definite.
    pub kind: ErrorKind,
    /// What happened and what to do about it.
    pub message: String,
    /// The server's SQLSTATE when the error came from PostgreSQL.
    pub sqlstate: Option<String>,
}

impl ReplicationError {
    /// A transient error.
    pub fn transient(message: impl Into<String>) -> Self {
        ReplicationError {
            kind: ErrorKind::Transient,
            message: message.into(),
            sqlstate: None,
        }
    }

    /// A definite error.
    pub fn definite(message: impl Into<String>) -> Self {
        ReplicationError {
            kind: ErrorKind::Definite,
            message: message.into(),
            sqlstate: None,
        }
    }

    /// Classifies an ErrorResponse from the server by SQLSTATE and message.
    pub fn from_server(
        sqlstate: &str,
        message: &str,
        detail: Option<&str>,
        hint: Option<&str>,
    ) -> Self {
        let mut text = message.to_owned();
        if let Some(d) = detail {
            text.push_str(": ");
            text.push_str(d);
        }
        let advice = if message.contains("logical decoding requires wal_level") {
            Some("set wal_level = logical in postgresql.conf and restart PostgreSQL")
        } else if message.contains("could not access file \"walcast\"") {
            Some("install the walcast extension on the database server (walcast.so must be in its lib directory)")
        } else if message.contains("output_plugin_libraries") || message.contains("is not allowed")
        {
            Some("add walcast to output_plugin_libraries: ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'walcast'")
        } else if sqlstate == "42704" || message.contains("does not exist") {
            Some("the replication slot is gone (dropped by an administrator?); recreate it to stream again")
        } else if message.contains("can no longer get changes") || message.contains("invalidated") {
            Some("the slot was invalidated because it fell behind max_slot_wal_keep_size; changes were lost, recreate it")
        } else if sqlstate == "28P01" || sqlstate == "28000" {
            Some("check the user and password in the database URL and pg_hba.conf (a replication entry is needed)")
        } else if sqlstate == "42501" {
            Some("the role needs the REPLICATION attribute: ALTER ROLE ... REPLICATION")
        } else {
            hint
        };
        if let Some(a) = advice {
            text.push_str("; ");
            text.push_str(a);
        }
        // Connection-level and shutdown errors are worth retrying; errors about
        // configuration, permissions, missing objects or a busy slot are not
        // (a busy slot: another consumer holds it; report instead of fighting).
        let transient = matches!(
            sqlstate,
            "57P01"
                | "57P02"
                | "57P03"
                | "08000"
                | "08003"
                | "08006"
                | "08001"
                | "08004"
                | "53300"
                | "40001"
        ) || sqlstate.starts_with("08");
        ReplicationError {
            kind: if transient {
                ErrorKind::Transient
            } else {
                ErrorKind::Definite
            },
            message: text,
            sqlstate: Some(sqlstate.to_owned()),
        }
    }
}

impl From<std::io::Error> for ReplicationError {
    fn from(e: std::io::Error) -> Self {
        ReplicationError::transient(format!("connection to PostgreSQL failed: {e}"))
    }
}
