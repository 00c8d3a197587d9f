//! Catalog lookups over an ordinary connection: does a subscribed table exist?

use postgres_native_tls::MakeTlsConnector;
use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

/// A lazily (re)connected SQL connection for catalog questions.
pub struct Catalog {
    config: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
}

impl Catalog {
    /// A catalog that connects with `config` on first use.
    pub fn new(config: tokio_postgres::Config) -> Catalog {
        Catalog {
            config,
            client: Mutex::new(None),
        }
    }

    /// Whether `schema.name` (any schema when `None`) is a table or partitioned table.
    pub async fn table_exists(&self, schema: Option<&str>, name: &str) -> Result<bool, String> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let unreachable = |e: tokio_postgres::Error| {
                format!("cannot reach PostgreSQL to check the table: {e}")
            };
            let client = if self.config.get_ssl_mode() == SslMode::Disable {
                let (client, conn) = self.config.connect(NoTls).await.map_err(unreachable)?;
                tokio::spawn(conn);
                client
            } else {
                let tls = crate::replication::tls_connector().map_err(|e| e.message)?;
                let (client, conn) = self
                    .config
                    .connect(MakeTlsConnector::new(tls))
                    .await
                    .map_err(unreachable)?;
                tokio::spawn(conn);
                client
            };
            *guard = Some(client);
        }
        let client = guard.as_ref().ok_or("no catalog connection")?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = $1 AND ($2::text IS NULL OR n.nspname = $2) \
                 AND c.relkind IN ('r', 'p'))",
                &[&name, &schema],
            )
            .await
            .map_err(|e| format!("checking the table failed: {e}"))?;
        Ok(row.get(0))
    }
}
