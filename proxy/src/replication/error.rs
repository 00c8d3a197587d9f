//! Errors of the replication connection, classified by what to do next:
//! retry or stop, and the advice, both by SQLSTATE.

use tokio_postgres::error::SqlState;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection or the server went away: reconnect with backoff and
    /// resume from the last confirmed LSN.
    Transient,
    /// Retrying cannot help (plugin missing, wal_level wrong,
    /// authentication refused): stop and report.
    Definite,
    /// The slot is lost (gone from the server, or it would have to be made
    /// again): the changes since its confirmed position cannot be read.
    /// Stop, and tell every client that resumes that they are gone.
    SlotLost,
    /// The promoted server's history does not hold changes already handed
    /// on (the old primary had them and its standby did not): they never
    /// happened there. Stop, and tell every client.
    Diverged,
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
    pub sqlstate: Option<SqlState>,
}

/// The fields of a server's ErrorResponse the proxy uses.
#[derive(Debug, Default, Clone)]
pub struct ServerError {
    /// `C`: the SQLSTATE.
    pub code: String,
    /// `M`: the message, in the server's `lc_messages` language.
    pub message: String,
    /// `D`
    pub detail: Option<String>,
    /// `H`
    pub hint: Option<String>,
    /// `R`: the server function that raised it; a name in the source, the
    /// same in every language, which tells apart errors sharing a SQLSTATE.
    pub routine: Option<String>,
}

/// What to do about a server error, chosen by SQLSTATE (never by the
/// message text, which follows the server's language) and, where one
/// SQLSTATE covers several causes, by the routine that raised it.
fn advice(e: &ServerError, state: &SqlState) -> Option<&'static str> {
    let routine = e.routine.as_deref().unwrap_or("");
    Some(if *state == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE {
        // 55000 is raised both for wal_level and for a slot that cannot
        // be used (invalidated, physical, of another database).
        if routine == "CheckLogicalDecodingRequirements" {
            "set wal_level = logical in postgresql.conf and restart PostgreSQL"
        } else {
            "the slot cannot be used as it is: see pg_replication_slots (wal_status 'lost' \
             means it fell behind max_slot_wal_keep_size and was invalidated, its changes are \
             lost); recreate it"
        }
    } else if *state == SqlState::UNDEFINED_FILE {
        "install the walcast extension on the database server (walcast.so must be in its lib directory)"
    } else if *state == SqlState::UNDEFINED_OBJECT {
        "the replication slot is gone (dropped, or lost in a failover to a server without it: \
         docs/operations.md#failover); the changes since its last confirmed position cannot be read"
    } else if *state == SqlState::OBJECT_IN_USE {
        "another client is reading this slot; a slot has one reader at a time"
    } else if *state == SqlState::INVALID_PASSWORD
        || *state == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        "check the user and password in the database URL and pg_hba.conf (a replication entry is needed)"
    } else if *state == SqlState::INSUFFICIENT_PRIVILEGE {
        if routine == "StartupDecodingContext" {
            // Debian's PostgreSQL: output plugins must be listed in a
            // setting (its check runs where the decoding context starts).
            "add walcast to output_plugin_libraries: ALTER SYSTEM SET output_plugin_libraries = \
             'pgoutput', 'test_decoding', 'walcast'"
        } else {
            "the role needs the REPLICATION attribute: ALTER ROLE ... REPLICATION"
        }
    } else {
        return None;
    })
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

    /// Classifies an ErrorResponse from the server.
    pub fn from_server(e: &ServerError) -> Self {
        let state = SqlState::from_code(&e.code);
        let mut text = e.message.clone();
        if let Some(d) = &e.detail {
            text.push_str(": ");
            text.push_str(d);
        }
        if let Some(a) = advice(e, &state).or(e.hint.as_deref()) {
            text.push_str("; ");
            text.push_str(a);
        }
        // The slot is missing. (An invalidated slot shares its SQLSTATE
        // and routine with a slot of another database or a physical one:
        // here a definite error, whose advice names both; the reader asks
        // pg_replication_slots before it starts and reports an invalidated
        // slot lost.)
        let slot_lost = state == SqlState::UNDEFINED_OBJECT;
        ReplicationError {
            kind: if crate::sql::retryable(&state) {
                ErrorKind::Transient
            } else if slot_lost {
                ErrorKind::SlotLost
            } else {
                ErrorKind::Definite
            },
            message: text,
            sqlstate: Some(state),
        }
    }

    /// Whether the server answered with this SQLSTATE.
    pub fn is(&self, state: &SqlState) -> bool {
        self.sqlstate.as_ref() == Some(state)
    }
}

impl From<std::io::Error> for ReplicationError {
    fn from(e: std::io::Error) -> Self {
        ReplicationError::transient(format!("connection to PostgreSQL failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str, routine: &str) -> ReplicationError {
        ReplicationError::from_server(&ServerError {
            code: code.into(),
            message: message.into(),
            routine: Some(routine.into()),
            ..ServerError::default()
        })
    }

    #[test]
    fn advice_follows_sqlstate_and_routine_not_the_language() {
        // Messages as a server with lc_messages = 'de_DE' writes them.
        let wal = server(
            "55000",
            "logische Dekodierung erfordert wal_level >= logical",
            "CheckLogicalDecodingRequirements",
        );
        assert!(wal.message.contains("set wal_level = logical"), "{wal}");
        let lost = server(
            "55000",
            "kann nicht aus logischem Replikations-Slot lesen",
            "CreateDecodingContext",
        );
        assert!(lost.message.contains("wal_status 'lost'"), "{lost}");
        assert!(!lost.message.contains("wal_level"), "{lost}");
        let unlisted = server("42501", "Bibliothek darf nicht", "StartupDecodingContext");
        assert!(
            unlisted.message.contains("output_plugin_libraries"),
            "{unlisted}"
        );
        let role = server("42501", "Zugriff verweigert", "InitPostgres");
        assert!(role.message.contains("REPLICATION attribute"), "{role}");
        for e in [&wal, &lost, &unlisted, &role] {
            assert_eq!(e.kind, ErrorKind::Definite, "{e}");
        }
        let missing = server(
            "42704",
            "Replikations-Slot existiert nicht",
            "SearchNamedReplicationSlot",
        );
        assert_eq!(missing.kind, ErrorKind::SlotLost, "{missing}");
    }

    #[test]
    fn connection_and_shutdown_errors_are_retried() {
        for code in ["57P01", "57P02", "57P03", "08006", "08P01", "53300"] {
            assert_eq!(server(code, "x", "r").kind, ErrorKind::Transient, "{code}");
        }
        for code in ["55006", "42501", "28P01", "58P01", "XX000"] {
            assert_eq!(server(code, "x", "r").kind, ErrorKind::Definite, "{code}");
        }
    }
}
