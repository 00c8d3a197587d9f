//! Ordinary SQL connections to the streamed database (catalog questions,
//! snapshot reads, heartbeats, slot administration): a small pool, TLS like
//! the replication connection.

use postgres_native_tls::MakeTlsConnector;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// A pool of at most `max` connections, opened on demand.
#[derive(Clone)]
pub struct SqlPool {
    database: crate::database::Database,
    idle: Arc<Mutex<Vec<Client>>>,
    permits: Arc<Semaphore>,
    /// Where writes go when that is another server (a standby's primary).
    writes: Option<Arc<SqlPool>>,
}

/// Connections of the pool for writes, beside a pool on a standby.
const WRITE_CONNECTIONS: usize = 4;

/// Why the pool gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool was closed.
    #[error("the connection pool is closed")]
    Closed,
    /// PostgreSQL did not answer or refused the connection.
    #[error("cannot reach PostgreSQL: {}", with_cause(.0))]
    Unreachable(tokio_postgres::Error),
    /// TLS could not be set up as the database URL asks.
    #[error(transparent)]
    Tls(#[from] crate::database::TlsError),
}

impl PoolError {
    /// Whether a later connection may succeed: the server did not answer,
    /// refused connections for now, or does not take writes (yet: a
    /// standby being promoted). Not a refused login or a missing database.
    pub fn may_pass(&self) -> bool {
        match self {
            PoolError::Unreachable(e) => e.as_db_error().is_none_or(|d| retryable(d.code())),
            _ => false,
        }
    }
}

/// The message, for callers whose errors are text.
impl From<PoolError> for String {
    fn from(e: PoolError) -> String {
        e.to_string()
    }
}

/// Whether retrying can help: the connection or the server went away, the
/// server is starting, stopping or full, or it cancelled the statement
/// for a conflict. Configuration, permissions, missing objects and objects
/// in use (a slot another consumer holds: report it rather than fight) are
/// not retried.
pub fn retryable(state: &SqlState) -> bool {
    state.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_SERIALIZATION_FAILURE,
        ]
        .contains(state)
}

/// Whether a statement may succeed if tried again on a new connection (to
/// the server when it is back, or to the one that took over): its
/// connection closed or broke, or the server answered with a
/// [`retryable`] state.
pub fn may_pass(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => retryable(db.code()),
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>())
        }
    }
}

/// An error followed by its cause, when it has one.
pub fn with_cause(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// A connection taken from the pool; it goes back when dropped (unless closed).
pub struct Conn {
    client: ManuallyDrop<Client>,
    idle: Arc<Mutex<Vec<Client>>>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once and `self.client` is not used after this.
        let client = unsafe { ManuallyDrop::take(&mut self.client) };
        if !client.is_closed() {
            {
                let mut idle = crate::locks::lock(&self.idle);
                idle.push(client);
            }
        }
    }
}

impl SqlPool {
    /// A pool of up to `max` connections to `database`.
    pub fn new(database: crate::database::Database, max: usize) -> SqlPool {
        let writes = Self::other_writer(&database)
            .map(|w| Arc::new(Self::with_writes(w, WRITE_CONNECTIONS, None)));
        Self::with_writes(database, max, writes)
    }

    fn with_writes(
        database: crate::database::Database,
        max: usize,
        writes: Option<Arc<SqlPool>>,
    ) -> SqlPool {
        SqlPool {
            database,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(max.max(1))),
            writes,
        }
    }

    /// The database writes go to, when the URL's own choice of server may
    /// not take them: `--primary-url`, or several hosts without
    /// `target_session_attrs=read-write`.
    fn other_writer(database: &crate::database::Database) -> Option<crate::database::Database> {
        use tokio_postgres::config::TargetSessionAttrs;
        let chooses_writer =
            database.config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite;
        (database.primary.is_some() || (database.endpoints().len() > 1 && !chooses_writer))
            .then(|| database.writes())
    }

    /// The pool for what must be written, and for reads that must see the
    /// server where it is written (`snapshot=1` chunks between their
    /// watermarks): this pool unless the database is a standby with its
    /// primary elsewhere (`Database::writes`).
    pub fn writes(&self) -> &SqlPool {
        self.writes.as_deref().unwrap_or(self)
    }

    /// The connection settings.
    pub fn database(&self) -> &crate::database::Database {
        &self.database
    }

    /// An idle connection, or a new one; waits while `max` are in use.
    pub async fn get(&self) -> Result<Conn, PoolError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)?;
        let reused = loop {
            let c = crate::locks::lock(&self.idle).pop();
            match c {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            client: ManuallyDrop::new(client),
            idle: self.idle.clone(),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Client, PoolError> {
        let config = &self.database.config;
        if !self.database.tls.wanted() {
            let (client, conn) = config
                .connect(NoTls)
                .await
                .map_err(PoolError::Unreachable)?;
            tokio::spawn(conn);
            Ok(client)
        } else {
            let tls = self.database.tls.connector()?;
            let (client, conn) = config
                .connect(MakeTlsConnector::new(tls))
                .await
                .map_err(PoolError::Unreachable)?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}
