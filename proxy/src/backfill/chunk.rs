//! Reading one chunk of a table: the next rows by primary key, in a short
//! `REPEATABLE READ` transaction of its own that also reports its snapshot.
//! Nothing is held between chunks: no transaction, no snapshot, no `xmin`.
//!
//! Rows come as `row_to_json`, the stream's value representation. The
//! subscription's filters become the `WHERE` clause, their values bind
//! parameters cast to the columns' types; names come from the catalog.

use super::marks::Visibility;
use super::window::key_text;
use crate::auth::rules::filter_sql;
use crate::catalog::TableInfo;
use crate::query::RowFilter;
use futures_util::{pin_mut, TryStreamExt};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Where the next chunk starts: after this key (`None`: at the first row).
pub type From = Option<Vec<Value>>;

/// What one chunk read.
#[derive(Debug)]
pub struct Chunk {
    pub visibility: Visibility,
    /// Rows as JSON objects.
    pub rows: Vec<String>,
    /// Each row's key text.
    pub keys: Vec<String>,
    /// Where the next chunk starts; `None` when this was the last.
    pub next: Option<From>,
}

/// Why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A value of the subscription does not fit its column.
    #[error("a value of the query does not fit its column: {0}")]
    Value(String),
    #[error("reading the table failed: {0}")]
    Failed(String),
    /// PostgreSQL could not run the read now (its connection broke, it
    /// restarts or fails over: [`crate::sql::may_pass`]): it may be read
    /// again.
    #[error("PostgreSQL could not read it now: {0}")]
    Gone(String),
}

fn failed(e: tokio_postgres::Error) -> ReadError {
    if crate::sql::may_pass(&e) {
        return ReadError::Gone(e.to_string());
    }
    match e.as_db_error() {
        // 22xxx: data exceptions (a filter value of the wrong type).
        Some(d) if d.code().code().starts_with("22") => ReadError::Value(d.message().to_owned()),
        Some(d) => ReadError::Failed(d.message().to_owned()),
        None => ReadError::Failed(e.to_string()),
    }
}

/// The table's row count as its statistics estimate it (0 when never analyzed).
pub async fn estimated_rows(client: &Client, table: &TableInfo) -> u64 {
    client
        .query_one(
            "SELECT GREATEST(reltuples, 0)::float8 FROM pg_catalog.pg_class WHERE oid = $1::text::oid",
            &[&table.oid.to_string()],
        )
        .await
        .ok()
        .map(|r| r.get::<_, f64>(0) as u64)
        .unwrap_or(0)
}

/// The chunk's SQL and its text parameters.
fn build_sql(
    table: &TableInfo,
    filters: &[RowFilter],
    from: &From,
    limit: usize,
) -> (String, Vec<String>) {
    let mut params = Vec::new();
    let mut conditions: Vec<String> = filters
        .iter()
        .map(|f| {
            let ty = table.column(&f.column).map(|c| c.type_sql.clone());
            filter_sql(f, ty, &mut params)
        })
        .collect();
    let mut sql = format!(
        "SELECT pg_catalog.row_to_json(t)::text FROM {} AS t",
        table.qualified_sql()
    );
    if let Some(values) = from {
        let texts = values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        conditions.push(table.after_key_sql(texts, &mut params));
    }
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    params.push(limit.to_string());
    sql.push_str(&format!(
        " ORDER BY {} LIMIT ${}::text::int8",
        table.key_columns_sql().join(", "),
        params.len()
    ));
    (sql, params)
}

/// Reads the chunk starting at `from`: at most `limit` rows by key.
pub async fn read(
    client: &mut Client,
    table: &TableInfo,
    filters: &[RowFilter],
    from: &From,
    limit: usize,
) -> Result<Chunk, ReadError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(failed)?;
    // The first statement takes the transaction's snapshot; the chunk's
    // rows are read in the same one.
    let snap = tx
        .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
        .await
        .map_err(failed)?;
    let visibility = Visibility::parse(snap.get::<_, &str>(0)).ok_or_else(|| {
        ReadError::Failed(format!(
            "unexpected pg_current_snapshot() {:?}",
            snap.get::<_, &str>(0)
        ))
    })?;
    let (sql, params) = build_sql(table, filters, from, limit);
    let binds: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let stream = tx.query_raw(&sql, binds).await.map_err(failed)?;
    pin_mut!(stream);
    let mut rows = Vec::new();
    let mut keys = Vec::new();
    let key_names: Vec<String> = table
        .primary_key
        .iter()
        .map(|&i| table.columns[i].name.clone())
        .collect();
    let mut last_key = None;
    while let Some(row) = stream.try_next().await.map_err(failed)? {
        let text: String = row.get(0);
        let parsed: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| ReadError::Failed(format!("row_to_json gave invalid JSON: {e}")))?;
        let key = key_text(&parsed, &key_names)
            .ok_or_else(|| ReadError::Failed("a row without its key columns".into()))?;
        keys.push(key);
        last_key = Some(
            key_names
                .iter()
                .map(|k| parsed.get(k).cloned().unwrap_or(Value::Null))
                .collect::<Vec<_>>(),
        );
        rows.push(text);
    }
    let _ = tx.commit().await;
    let next = if rows.len() < limit {
        None
    } else {
        Some(last_key)
    };
    Ok(Chunk {
        visibility,
        rows,
        keys,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Column;

    fn table() -> TableInfo {
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: "Or\"ders".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_sql: "bigint".into(),
                },
                Column {
                    name: "name".into(),
                    type_sql: "text".into(),
                },
            ],
            primary_key: vec![0],
            partitioned: false,
        }
    }

    #[test]
    fn chunks_page_by_key_with_filters_bound() {
        let q = crate::query::parse("insert:t:name.eq.x':id.gt.3").expect("query");
        let (sql, params) = build_sql(&table(), &q.filters, &None, 500);
        assert_eq!(
            sql,
            "SELECT pg_catalog.row_to_json(t)::text FROM \"public\".\"Or\"\"ders\" AS t \
             WHERE t.\"name\" = $1::text::text AND t.\"id\" > $2::text::bigint \
             ORDER BY t.\"id\" LIMIT $3::text::int8"
        );
        assert_eq!(params, vec!["x'", "3", "500"]);
        let (sql, params) = build_sql(&table(), &[], &Some(vec![Value::from(42)]), 10);
        assert!(
            sql.ends_with(
                "WHERE (t.\"id\") > ($1::text::bigint) ORDER BY t.\"id\" LIMIT $2::text::int8"
            ),
            "{sql}"
        );
        assert_eq!(params, vec!["42", "10"]);
    }
}
