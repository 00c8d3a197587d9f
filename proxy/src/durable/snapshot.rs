//! `POST /v1/snapshot/data`: one page of a table as it was when the stream's
//! slot was created, read in `REPEATABLE READ` with `SET TRANSACTION
//! SNAPSHOT`. Rows are JSON objects with the same value representation as
//! the stream (`row_to_json`, i.e. `to_json` per column). Paging by
//! `offset` (compatible) or by `after` (keyset on the primary key, constant
//! time per page). Table and column names are looked up in the catalog and
//! quoted; request values only ever travel as bind parameters.

use super::streams::Streams;
use crate::auth::Rules;
use crate::catalog::{quote_ident, TableInfo};
use crate::change::split_qualified;
use crate::refusal::{Kind, Refusal};
use futures_util::{pin_mut, TryStreamExt};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;
pub use walcast_core::requests::{parse_request, OrderBy, PageRequest, DEFAULT_LIMIT};

/// One page: the JSON array, and the `after` value for the next page.
pub struct Page {
    pub body: String,
    pub rows: usize,
    /// JSON array of the last row's primary key values (tables with a key).
    pub next_after: Option<String>,
}

fn order_word(order: Option<&str>) -> Result<&'static str, Refusal> {
    match order.map(str::to_ascii_lowercase).as_deref() {
        None | Some("asc") => Ok("ASC"),
        Some("desc") => Ok("DESC"),
        Some(other) => Err(Refusal::invalid(format!(
            "order must be \"asc\" or \"desc\" (got {other:?})"
        ))),
    }
}

/// A bind parameter's text for a key value given in JSON.
fn key_text(v: &Value) -> Result<String, Refusal> {
    match v {
        Value::Null => Err(Refusal::invalid("after: primary key values are never null")),
        Value::String(s) => Ok(s.clone()),
        other => Ok(other.to_string()),
    }
}

/// Builds the page's SQL and its text parameters (limit, offset, key values).
fn build_sql(
    table: &TableInfo,
    req: &PageRequest,
    limit: i64,
    rules: Option<&Rules>,
) -> Result<(String, Vec<String>), Refusal> {
    let from = table.qualified_sql();
    let key_cols = table.key_columns_sql();
    let mut params = vec![limit.to_string()];
    let mut sql = format!("SELECT pg_catalog.row_to_json(t)::text FROM {from} AS t");
    let mut conditions = Vec::new();
    if let Some(rules) = rules {
        let column_type = |name: &str| table.column(name).map(|c| c.type_sql.clone());
        conditions.extend(rules.sql_condition(column_type, &mut params));
    }
    if let Some(after) = &req.after {
        if key_cols.is_empty() {
            return Err(Refusal::invalid(format!(
                "after pages by the primary key, and {}.{} has none: use offset",
                table.schema, table.name
            )));
        }
        let values: Vec<&Value> = match after {
            Value::Array(a) => a.iter().collect(),
            single => vec![single],
        };
        if values.len() != key_cols.len() {
            return Err(Refusal::invalid(format!(
                "after needs {} value(s), the primary key ({}) in order",
                key_cols.len(),
                table
                    .primary_key
                    .iter()
                    .map(|&i| table.columns[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let texts = values
            .iter()
            .map(|v| key_text(v))
            .collect::<Result<Vec<_>, _>>()?;
        conditions.push(table.after_key_sql(texts, &mut params));
    }
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    let mut order: Vec<String> = Vec::new();
    if let Some(ob) = &req.order_by {
        let col = table.column(&ob.column).ok_or_else(|| {
            Refusal::invalid(format!(
                "order_by: {}.{} has no column {:?}",
                table.schema, table.name, ob.column
            ))
        })?;
        order.push(format!(
            "t.{} {}",
            quote_ident(&col.name),
            order_word(ob.order.as_deref())?
        ));
    }
    // The key (or the row's place in the snapshot) makes the order total, so
    // pages neither overlap nor skip rows.
    if key_cols.is_empty() {
        order.push("t.ctid".into());
    } else {
        order.extend(key_cols);
    }
    sql.push_str(&format!(
        " ORDER BY {} LIMIT $1::text::int8",
        order.join(", ")
    ));
    if req.after.is_none() {
        params.push(req.offset.unwrap_or(0).to_string());
        sql.push_str(&format!(" OFFSET ${}::text::int8", params.len()));
    }
    Ok((sql, params))
}

/// Whether `schema.name` passes an allow-list.
fn allowed(patterns: &[walcast_format::TablePattern], t: &TableInfo) -> bool {
    patterns.iter().any(|p| p.matches(&t.schema, &t.name))
}

/// The table `name` (`schema.table`, or the one the search path finds) of
/// stream `slot`, if the proxy's and the stream's allow-lists and the
/// user's `rules` let it be read.
pub async fn stream_table(
    streams: &Streams,
    slot: &str,
    name: &str,
    rules: Option<&Rules>,
) -> Result<TableInfo, Refusal> {
    let (schema, bare) = split_qualified(name);
    if bare.is_empty() {
        return Err(Refusal::invalid("table is empty"));
    }
    let schema = (!schema.is_empty()).then_some(schema);
    let table = streams
        .catalog
        .table_info(schema.as_deref(), &bare)
        .await
        .map_err(|e| Refusal::unavailable(e.to_string()))?
        .ok_or_else(|| Refusal::invalid(format!("unknown table {name:?}")))?;
    let mut lists = Vec::new();
    if let Some((_, global)) = &streams.cfg.tables {
        lists.push(global.clone());
    }
    if let Some(own) = streams.stream_tables(slot).await? {
        lists.push(walcast_format::TablePattern::parse_list(&own).unwrap_or_default());
    }
    if lists.iter().any(|l| !allowed(l, &table)) {
        return Err(Refusal::invalid(format!(
            "table {name:?} is not in this stream's table allow-list"
        )));
    }
    if rules.is_some_and(|r| !r.table_allowed(&table.schema, &table.name)) {
        return Err(Refusal::new(
            Kind::Forbidden,
            format!("this token does not allow the table {name:?}"),
        ));
    }
    Ok(table)
}

/// Reads one page for `req`; `rules` are the user's limits (tables, rows).
pub async fn read_page(
    streams: &Streams,
    req: &PageRequest,
    rules: Option<&Rules>,
) -> Result<Page, Refusal> {
    let snapshot = streams.snapshot_name(&req.slot_name).await?;
    let table = stream_table(streams, &req.slot_name, &req.table, rules).await?;
    let limit = req
        .limit
        .unwrap_or(DEFAULT_LIMIT.min(streams.cfg.page_cap as i64));
    let (sql, params) = build_sql(&table, req, limit, rules)?;

    let mut conn = streams.pool.get().await.map_err(Refusal::unavailable)?;
    let tx = in_snapshot(&mut conn, streams, &req.slot_name, &snapshot).await?;
    let rows = read_rows(&tx, &sql, &params, streams.cfg.page_max_bytes).await?;
    same_file(&tx, &table).await?;
    let _ = tx.commit().await;
    let next_after = match rows.last {
        Some((s, e)) if !table.primary_key.is_empty() => last_key(&table, &rows.body[s..e]),
        _ => None,
    };
    Ok(Page {
        body: rows.body,
        rows: rows.count,
        next_after,
    })
}

/// A read-only `REPEATABLE READ` transaction on `conn` that sees the
/// exported `snapshot` of stream `slot` (410 when it is no longer readable).
async fn in_snapshot<'a>(
    conn: &'a mut tokio_postgres::Client,
    streams: &Streams,
    slot: &str,
    snapshot: &str,
) -> Result<Transaction<'a>, Refusal> {
    let tx = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| Refusal::unavailable(format!("snapshot read failed: {e}")))?;
    if let Err(e) = tx
        .batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT '{}'",
            snapshot.replace('\'', "''")
        ))
        .await
    {
        let detail = e.as_db_error().map(|d| d.message()).unwrap_or("unknown");
        let reason = streams.snapshot_lost(slot, detail);
        return Err(Refusal::new(
            Kind::Gone,
            format!("the snapshot of {slot} is no longer readable: {reason}"),
        ));
    }
    Ok(tx)
}

/// The rows of a page as a JSON array, before the next key is known.
struct Rows {
    body: String,
    count: usize,
    /// Where the last row is in `body`.
    last: Option<(usize, usize)>,
}

/// Runs the page's query in `tx` and joins its rows into a JSON array of
/// at most `max_bytes` (413 past that).
async fn read_rows(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[String],
    max_bytes: u64,
) -> Result<Rows, Refusal> {
    let binds: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = tx
        .query_raw(sql, binds)
        .await
        .map_err(|e| query_error(&e))?;
    pin_mut!(rows);
    let mut body = String::from("[");
    let mut count = 0usize;
    let mut last = None;
    while let Some(row) = rows.try_next().await.map_err(|e| query_error(&e))? {
        let text: &str = row.get(0);
        if body.len() + text.len() + 2 > max_bytes as usize {
            return Err(Refusal::new(
                Kind::TooLarge,
                format!(
                    "this page would be over {max_bytes} bytes after {count} rows; ask for fewer rows (limit)"
                ),
            ));
        }
        if count > 0 {
            body.push(',');
        }
        body.push_str(text);
        count += 1;
        last = Some((body.len() - text.len(), body.len()));
    }
    body.push(']');
    Ok(Rows { body, count, last })
}

/// Refuses (409) a page of `table` if the table was truncated or rewritten
/// after the snapshot was taken.
async fn same_file(tx: &Transaction<'_>, table: &TableInfo) -> Result<(), Refusal> {
    // TRUNCATE and table rewrites are not MVCC-safe: a snapshot older than
    // them sees the new, empty file. The catalog row as of the snapshot
    // names the file the snapshot's rows were in; if it is no longer the
    // table's file, the rows cannot be read any more.
    let files = tx
        .query_one(
            "SELECT c.relfilenode = pg_catalog.pg_relation_filenode(c.oid) \
             FROM pg_catalog.pg_class c WHERE c.oid = $1::text::oid",
            &[&table.oid.to_string()],
        )
        .await
        .map_err(|e| query_error(&e))?;
    let same_file: Option<bool> = files.get(0);
    if same_file == Some(false) {
        return Err(Refusal::new(
            Kind::InUse,
            format!(
                "{}.{} was truncated or rewritten after the snapshot was taken (TRUNCATE is not \
                 MVCC-safe), so its rows as of the snapshot are gone; the stream carries the \
                 TRUNCATE: apply it, or create a new stream",
                table.schema, table.name
            ),
        ));
    }
    Ok(())
}

/// The `after` of the next page: a JSON array of the primary key values of
/// `row`, the page's last row (`None` if it does not parse).
fn last_key(table: &TableInfo, row: &str) -> Option<String> {
    let row = serde_json::from_str::<serde_json::Map<String, Value>>(row).ok()?;
    let keys: Vec<Value> = table
        .primary_key
        .iter()
        .map(|&i| {
            row.get(&table.columns[i].name)
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    Some(Value::Array(keys).to_string())
}

fn query_error(e: &tokio_postgres::Error) -> Refusal {
    match e.as_db_error() {
        // A key value of the wrong type (22P02 invalid text representation, 22xxx data errors).
        Some(d) if d.code().code().starts_with("22") => Refusal::invalid(format!(
            "a value does not fit its column (in after, or in the token's row_filter): {}",
            d.message()
        )),
        Some(d) => Refusal::unavailable(format!("snapshot read failed: {}", d.message())),
        None => Refusal::unavailable(format!("snapshot read failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Column;

    fn table() -> TableInfo {
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: "we\"ird".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_sql: "integer".into(),
                },
                Column {
                    name: "name; DROP TABLE x".into(),
                    type_sql: "text".into(),
                },
            ],
            primary_key: vec![0],
            partitioned: false,
        }
    }

    #[test]
    fn sql_quotes_names_and_binds_values() {
        let req = parse_request(
            br#"{"slotName":"s","table":"t","after":["1') OR true --"]}"#,
            10,
        )
        .unwrap_or_else(|e| panic!("{}", e.0));
        let (sql, params) =
            build_sql(&table(), &req, 5, None).unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(
            sql,
            "SELECT pg_catalog.row_to_json(t)::text FROM \"public\".\"we\"\"ird\" AS t \
             WHERE (t.\"id\") > ($2::text::integer) ORDER BY t.\"id\" LIMIT $1::text::int8"
        );
        assert_eq!(params, vec!["5".to_owned(), "1') OR true --".to_owned()]);

        let req = parse_request(
            br#"{"slotName":"s","table":"t","offset":20,"order_by":{"column":"name; DROP TABLE x","order":"DESC"}}"#,
            10,
        )
        .unwrap_or_else(|e| panic!("{}", e.0));
        let (sql, params) =
            build_sql(&table(), &req, 5, None).unwrap_or_else(|e| panic!("{}", e.message));
        assert!(sql.ends_with(
            "ORDER BY t.\"name; DROP TABLE x\" DESC, t.\"id\" LIMIT $1::text::int8 OFFSET $2::text::int8"
        ));
        assert_eq!(params, vec!["5".to_owned(), "20".to_owned()]);

        for bad in [
            &br#"{"slotName":"s","table":"t","order_by":{"column":"id; --"}}"#[..],
            br#"{"slotName":"s","table":"t","order_by":{"column":"id","order":"asc; DROP"}}"#,
            br#"{"slotName":"s","table":"t","after":[1,2]}"#,
            br#"{"slotName":"s","table":"t","after":[null]}"#,
        ] {
            let req = parse_request(bad, 10).unwrap_or_else(|e| panic!("{}", e.0));
            let e = build_sql(&table(), &req, 5, None).expect_err("must be refused");
            assert_eq!(e.kind, Kind::Invalid);
        }
    }
}
