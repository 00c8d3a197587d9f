//! Catalog lookups over an ordinary connection: does a subscribed table
//! exist, and what are a table's columns and primary key (for snapshot reads).
//!
//! A table found to exist is remembered for [`KNOWN_FOR`], so clients that
//! connect in bursts (a reconnect storm after a restart, or a client that
//! connects and leaves in a loop) do not each cost PostgreSQL a query.
//! Only positive answers are kept: a table created a moment ago is found.

use crate::sql::{PoolError, SqlPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a table found to exist is taken to exist without asking again.
pub const KNOWN_FOR: Duration = Duration::from_secs(5);

/// Most tables remembered; past it the memory is cleared.
const MAX_KNOWN: usize = 10_000;

/// The `WHERE` clause that finds a table (`c`, in namespace `n`) by name
/// (`$1`) and schema (`$2`; without one, the table the search path finds).
macro_rules! table_named {
    () => {
        "WHERE c.relname = $1 AND c.relkind IN ('r', 'p') \
         AND (CASE WHEN $2::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid) \
              ELSE n.nspname = $2 END)"
    };
}

/// A table as a query names it: `(schema, name)`, schema optional.
type TableName = (Option<String>, String);

/// Why the catalog gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No connection to ask over.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Checking that a table exists failed.
    #[error("checking the table failed: {0}")]
    Check(tokio_postgres::Error),
    /// Reading a table's description failed.
    #[error("reading the catalog failed: {0}")]
    Read(tokio_postgres::Error),
}

/// Catalog questions, answered over the SQL pool.
#[derive(Clone)]
pub struct Catalog {
    pool: SqlPool,
    /// `(schema, name)` found to exist, and when.
    known: Arc<Mutex<HashMap<TableName, Instant>>>,
}

/// A column of a table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `format_type()` of the column's type (safe to use in SQL as written).
    pub type_sql: String,
}

/// A table as snapshot reads need it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order (empty: none).
    pub primary_key: Vec<usize>,
    /// A partitioned table (its rows are in its partitions).
    pub partitioned: bool,
}

pub use walcast_core::sql::quote_ident;

impl TableInfo {
    /// `"schema"."name"`.
    pub fn qualified_sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The primary key's columns of the table aliased `t`, in key order.
    pub fn key_columns_sql(&self) -> Vec<String> {
        self.primary_key
            .iter()
            .map(|&i| format!("t.{}", quote_ident(&self.columns[i].name)))
            .collect()
    }

    /// `(t.k1, ...) > ($n::text::type1, ...)`: rows after a key, whose
    /// values (as text, in key order) are appended to `params`.
    pub fn after_key_sql(&self, values: Vec<String>, params: &mut Vec<String>) -> String {
        let mut binds = Vec::with_capacity(values.len());
        for (v, &i) in values.into_iter().zip(&self.primary_key) {
            params.push(v);
            binds.push(format!(
                "${}::text::{}",
                params.len(),
                self.columns[i].type_sql
            ));
        }
        format!(
            "({}) > ({})",
            self.key_columns_sql().join(", "),
            binds.join(", ")
        )
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

impl Catalog {
    /// A catalog asking over `pool`.
    pub fn new(pool: SqlPool) -> Catalog {
        Catalog {
            pool,
            known: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The pool it asks over.
    pub fn pool(&self) -> &SqlPool {
        &self.pool
    }

    /// Whether `schema.name` (any schema when `None`) is a table or partitioned table.
    pub async fn table_exists(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<bool, CatalogError> {
        let key = (schema.map(str::to_owned), name.to_owned());
        let now = Instant::now();
        {
            let known = crate::locks::lock(&self.known);
            if known
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < KNOWN_FOR)
            {
                return Ok(true);
            }
        }
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = $1 AND ($2::text IS NULL OR n.nspname = $2) \
                 AND c.relkind IN ('r', 'p'))",
                &[&name, &schema],
            )
            .await
            .map_err(CatalogError::Check)?;
        let exists: bool = row.get(0);
        if exists {
            {
                let mut known = crate::locks::lock(&self.known);
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
                known.insert(key, now);
            }
        }
        Ok(exists)
    }

    /// The columns that identify a row of `schema.name` in the change
    /// stream, in key order: the replica identity index (`REPLICA IDENTITY
    /// USING INDEX`), else the primary key (`DEFAULT`, and `FULL` when the
    /// table has one). `None` when rows have no key (`NOTHING`, or no
    /// primary key) or there is no such table.
    pub async fn replica_key(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Option<Vec<String>>, CatalogError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                concat!(
                    "SELECT a.attname::text \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_index i ON i.indrelid = c.oid \
                   AND CASE c.relreplident WHEN 'i' THEN i.indisreplident \
                                           WHEN 'n' THEN false \
                                           ELSE i.indisprimary END \
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                 ",
                    table_named!(),
                    " ORDER BY k.ord"
                ),
                &[&name, &schema],
            )
            .await
            .map_err(CatalogError::Read)?;
        let key: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok((!key.is_empty()).then_some(key))
    }

    /// Whether `schema.name` has `REPLICA IDENTITY FULL` (its deletes and
    /// updates carry the whole old row); `None` when there is no such table.
    pub async fn identity_is_full(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Option<bool>, CatalogError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                concat!(
                    "SELECT c.relreplident = 'f' FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 ",
                    table_named!()
                ),
                &[&name, &schema],
            )
            .await
            .map_err(CatalogError::Read)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The table `schema.name`; without a schema, the one the search path
    /// finds. `None` when there is no such table.
    pub async fn table_info(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Option<TableInfo>, CatalogError> {
        let client = self.pool.get().await?;
        let rel = client
            .query_opt(
                concat!(
                    "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind = 'p' \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 ",
                    table_named!()
                ),
                &[&name, &schema],
            )
            .await
            .map_err(CatalogError::Read)?;
        let Some(rel) = rel else { return Ok(None) };
        let oid: u32 = rel.get(0);
        let cols = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                 COALESCE(array_position(i.indkey::int2[], a.attnum) \
                          - array_lower(i.indkey::int2[], 1) + 1, 0) \
                 FROM pg_catalog.pg_attribute a \
                 LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(CatalogError::Read)?;
        let mut columns = Vec::with_capacity(cols.len());
        let mut keyed: Vec<(i32, usize)> = Vec::new();
        for (i, r) in cols.iter().enumerate() {
            columns.push(Column {
                name: r.get(0),
                type_sql: r.get(1),
            });
            let pos: i32 = r.get(2);
            if pos > 0 {
                keyed.push((pos, i));
            }
        }
        keyed.sort_unstable();
        Ok(Some(TableInfo {
            oid,
            schema: rel.get(1),
            name: rel.get(2),
            columns,
            primary_key: keyed.into_iter().map(|(_, i)| i).collect(),
            partitioned: rel.get(3),
        }))
    }
}
