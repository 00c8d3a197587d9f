//! The `/v1/` endpoints of durable streams (PGDeltaStream-compatible paths):
//!
//! | method and path                 | does                                        |
//! |---------------------------------|---------------------------------------------|
//! | `GET /v1/init`, `POST /v1/streams` | create a stream: slot + exported snapshot |
//! | `GET /v1/streams`               | list streams: position, lag, snapshot state |
//! | `DELETE /v1/streams/{slotName}` | drop a stream                               |
//! | `POST /v1/snapshot/data`        | one page of a table inside the snapshot     |
//! | `GET /v1/lr/stream?slotName=`   | websocket: stream, ACK, resume              |
//! | `POST /v1/streams/{slotName}/snapshot` | a table's current rows into the stream |

use crate::auth::Grant;
use crate::backfill::driver::Plan;
use crate::delivery::Admitted;
use crate::durable::{consumer, snapshot};
use crate::http::selection::selection;
use crate::http::upgrade::{accept_upgrade, begin, switching_protocols, Opened};
use crate::http::ApiError;
use crate::http::{json_error, query_params, read_body, respond, AppState, Resp};
use axum::extract::{Path, Request, State};
use axum::response::IntoResponse;
use axum::Extension;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use walcast_core::requests::{parse_create, Create};

/// Largest request body accepted on `/v1/` (bytes).
const MAX_BODY: usize = 64 * 1024;

fn json(status: StatusCode, body: serde_json::Value) -> Resp {
    respond(status, "application/json", body.to_string())
}

async fn body(req: Request, state: &AppState) -> Result<bytes::Bytes, ApiError> {
    read_body(req.into_body(), MAX_BODY, state)
        .await
        .map_err(|e| ApiError::new(e.status(), e.to_string()))
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/init?name=&tables=`: creates a stream.
pub async fn init(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    req: Request,
) -> Result<Resp, ApiError> {
    let params = query_params(req.uri());
    let export = match params.get("export_snapshot").map(String::as_str) {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "export_snapshot must be true or false (got {other:?})"
            )))
        }
    };
    create_stream(
        &state,
        &grant,
        Create {
            name: params.get("name").cloned(),
            tables: params.get("tables").cloned(),
            export_snapshot: export,
        },
    )
    .await
}

/// `POST /v1/streams` with `{"name","tables"}`: creates a stream.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    req: Request,
) -> Result<Resp, ApiError> {
    let b = body(req, &state).await?;
    create_stream(&state, &grant, parse_create(&b)?).await
}

/// `DELETE /v1/streams/{slot}`: drops a stream.
pub async fn drop_stream(
    State(state): State<Arc<AppState>>,
    Path(slot): Path<String>,
) -> Result<Resp, ApiError> {
    state
        .streams
        .delete(&slot, "deleted through the API")
        .await
        .map(|()| json(StatusCode::OK, serde_json::json!({ "dropped": slot })))
        .map_err(ApiError::from)
}

/// `POST /v1/snapshot/data`: one page of a table inside the snapshot.
pub async fn snapshot_data(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    req: Request,
) -> Result<Resp, ApiError> {
    let b = body(req, &state).await?;
    page(&state, &grant, &b).await
}

/// Re-snapshots of `tables` for stream `slot`: each table allowed for the
/// stream and the user, with a primary key; `after` maps a table to the key
/// to start after (the `next` of the last progress frame processed).
async fn backfill_plans(
    state: &AppState,
    grant: &Grant,
    slot: &str,
    tables: &[String],
    after: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<Plan>, ApiError> {
    let rules = grant.read_limits().map(|r| &**r);
    let mut plans = Vec::with_capacity(tables.len());
    for name in tables {
        let table = snapshot::stream_table(&state.streams, slot, name, rules).await?;
        crate::backfill::driver::readable(&table)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let after = match after.and_then(|a| a.get(name)) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(key)) if key.len() == table.primary_key.len() => {
                Some(key.clone())
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "after.{name}: {other} is not the table's key ({} values, the \"next\" of a progress frame)",
                    table.primary_key.len()
                )))
            }
        };
        plans.push(Plan {
            table,
            filters: Vec::new(),
            after,
        });
    }
    Ok(plans)
}

/// The body of `POST /v1/streams/{slot}/snapshot`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillRequest {
    tables: Vec<String>,
    #[serde(default)]
    after: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /v1/streams/{slot}/snapshot` with `{"tables":[...],"after":{...}}`:
/// the tables' current rows into the stream, chunk by chunk, while its
/// consumer is connected here.
pub async fn backfill(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    Path(slot): Path<String>,
    req: Request,
) -> Result<Resp, ApiError> {
    let b = body(req, &state).await?;
    let r: BackfillRequest = serde_json::from_slice(&b).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid request body: {e}; send {{\"tables\":[\"schema.table\",...]}}"
        ))
    })?;
    if r.tables.is_empty() {
        return Err(ApiError::bad_request("tables is empty"));
    }
    state.streams.require(&slot).await?;
    let plans = backfill_plans(&state, &grant, &slot, &r.tables, r.after.as_ref()).await?;
    let names: Vec<String> = plans
        .iter()
        .map(|p| format!("{}.{}", p.table.schema, p.table.name))
        .collect();
    state.streams.request_backfill(&slot, plans)?;
    Ok(json(
        StatusCode::ACCEPTED,
        serde_json::json!({"slotName": slot, "tables": names}),
    ))
}

/// The tables of a stream a user creates: within the user's `tables`
/// claim (their patterns when the request names none; otherwise each
/// requested pattern must be one of theirs, or a table they may read).
fn stream_tables(grant: &Grant, tables: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(allowed) = grant.read_limits().and_then(|r| r.tables.as_ref()) else {
        return Ok(tables);
    };
    let Some(asked) = tables else {
        if allowed.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this token allows no tables",
            ));
        }
        let list: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
        return Ok(Some(list.join(",")));
    };
    let patterns = walcast_format::TablePattern::parse_list(&asked)
        .map_err(|e| ApiError::bad_request(format!("invalid tables: {e}")))?;
    for p in &patterns {
        let own = allowed.iter().any(|a| a.as_str() == p.as_str());
        // A single table, named plainly as schema.table.
        let text = p.as_str();
        let concrete = !text.contains(['*', '\\', '"'])
            && text
                .split_once('.')
                .filter(|(_, n)| !n.contains('.'))
                .is_some_and(|(s, n)| allowed.iter().any(|a| a.matches(s, n)));
        if !own && !concrete {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this token does not allow the tables {:?} (it allows {})",
                    p.as_str(),
                    allowed
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(Some(asked))
}

async fn create_stream(state: &AppState, grant: &Grant, create: Create) -> Result<Resp, ApiError> {
    let tables = stream_tables(grant, create.tables)?;
    let c = state
        .streams
        .create(
            create.name.as_deref(),
            tables.as_deref(),
            create.export_snapshot,
        )
        .await?;
    let mut body = serde_json::json!({
        "slotName": c.slot,
        "snapshot": c.snapshot.as_ref().map(|(name, _)| name),
        "lsn": c.lsn.to_string(),
        "snapshotExpiresAt": c.snapshot.as_ref().map(|(_, at)| unix_seconds(*at)),
    });
    let warnings = identity_warnings(state, tables.as_deref()).await;
    if !warnings.is_empty() {
        body["warnings"] = warnings.into();
    }
    Ok(json(StatusCode::OK, body))
}

/// The tables a stream names (without wildcards) that lack `REPLICA
/// IDENTITY FULL`: a query with row filters on them gets a delete only when
/// its key matches, and no update that moves a row out (docs/streams.md).
async fn identity_warnings(state: &AppState, tables: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables.unwrap_or_default().split(',').map(str::trim) {
        if t.is_empty() || t.contains('*') || t.contains('\\') {
            continue;
        }
        let (schema, name) = match t.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, t),
        };
        if let Ok(Some(false)) = state.catalog.identity_is_full(schema, name).await {
            out.push(format!(
                "{t} has no REPLICA IDENTITY FULL: a stream query with row filters on it gets a delete only when the row's key matches the filters, and no update that moves a row out (ALTER TABLE {t} REPLICA IDENTITY FULL; docs/streams.md)"
            ));
        }
    }
    out
}

/// `GET /v1/streams`: every stream, its position, lag and snapshot.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Resp, ApiError> {
    let streams = state.streams.list().await?;
    let items: Vec<serde_json::Value> = streams
        .iter()
        .map(|s| {
            serde_json::json!({
                "slotName": s.slot,
                "active": s.active,
                "consumerHere": state.streams.has_consumer(&s.slot),
                "confirmedLsn": s.confirmed_lsn.map(|l| l.to_string()),
                "lagBytes": s.lag_bytes,
                "overMaxLag": state.streams.cfg.max_lag.is_some_and(|m| s.lag_bytes.unwrap_or(0).max(0) as u64 > m),
                "snapshot": s.snapshot,
                "snapshotExpiresAt": s.snapshot_expires.map(unix_seconds),
                "tables": s.tables,
                "lost": s.lost.map(|l| l.word()),
                "lostReason": s.lost.map(|l| l.reason()),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "streams": items }),
    ))
}

async fn page(state: &AppState, grant: &Grant, b: &[u8]) -> Result<Resp, ApiError> {
    let req = snapshot::parse_request(b, state.streams.cfg.page_cap)?;
    let page = snapshot::read_page(&state.streams, &req, grant.read_limits().map(|r| &**r)).await?;
    let mut r = respond(StatusCode::OK, "application/json", page.body);
    if let Ok(v) = HeaderValue::from_str(&page.rows.to_string()) {
        r.headers_mut().insert("x-walcast-rows", v);
    }
    if let Some(after) = page.next_after {
        if let Ok(v) = HeaderValue::from_str(&after) {
            r.headers_mut().insert("x-walcast-after", v);
        }
    }
    Ok(r)
}

/// What a durable stream with a filtered query misses on a table without
/// `REPLICA IDENTITY FULL` (a stream keeps no view: docs/proxy.md#live-views).
async fn filtered_stream_warning(state: &AppState, q: &crate::query::Query) -> Option<String> {
    use crate::query::RowAction;
    if !(q.may_leave(RowAction::Delete) || q.may_leave(RowAction::Update)) {
        return None;
    }
    let full = state
        .catalog
        .identity_is_full(q.table.schema.as_deref(), &q.table.name)
        .await
        .ok()
        .flatten()?;
    let table = match &q.table.schema {
        Some(s) => format!("{s}.{}", q.table.name),
        None => q.table.name.clone(),
    };
    (!full).then(|| format!(
        "{table} has no REPLICA IDENTITY FULL: with this query's row filters, a delete reaches the stream only when its key matches them, and an update that moves a row out of the query is not sent; ALTER TABLE {table} REPLICA IDENTITY FULL matches deletes on the whole old row (docs/streams.md)"
    ))
}

/// The warnings a stream's consumer is sent first: what its `query`
/// misses, if anything.
async fn stream_warnings(state: &AppState, query: Option<&crate::query::Query>) -> Vec<String> {
    match query {
        Some(q) => filtered_stream_warning(state, q)
            .await
            .into_iter()
            .collect(),
        None => Vec::new(),
    }
}

/// The parameters of `GET /v1/lr/stream` besides the selection.
struct StreamParams {
    slot: String,
    heartbeats: bool,
    /// The client's last ACK, which may not have reached PostgreSQL.
    acked: Option<walcast_format::Lsn>,
}

/// Reads `slotName`, `heartbeats` and `acked`; the 400 response when one
/// is missing or refused.
fn stream_params(params: &HashMap<String, String>) -> Result<StreamParams, Box<Resp>> {
    let Some(slot) = params.get("slotName").cloned() else {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "slotName is required: /v1/lr/stream?slotName=<slot from /v1/init>",
            None,
        )));
    };
    let heartbeats = match params.get("heartbeats").map(String::as_str) {
        None | Some("false") | Some("0") | Some("off") => false,
        Some("true") | Some("1") | Some("on") => true,
        Some(other) => {
            return Err(Box::new(json_error(
                StatusCode::BAD_REQUEST,
                &format!("heartbeats must be true or false (got {other:?})"),
                None,
            )))
        }
    };
    let acked = match params.get("acked").map(|a| a.parse::<walcast_format::Lsn>()) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => {
            return Err(Box::new(json_error(
                StatusCode::BAD_REQUEST,
                "acked must be an LSN (X/Y in hexadecimal): the end_lsn of the last transaction you ACKed",
                None,
            )))
        }
    };
    Ok(StreamParams {
        slot,
        heartbeats,
        acked,
    })
}

/// The tables named by `snapshot=`, whose rows the stream sends first.
fn snapshot_tables(params: &HashMap<String, String>) -> Vec<String> {
    params
        .get("snapshot")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /v1/lr/stream?slotName=`: the websocket of a stream's consumer.
pub async fn lr_stream(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    mut req: Request,
) -> Resp {
    let params = query_params(req.uri());
    let StreamParams {
        slot,
        heartbeats,
        acked,
    } = match stream_params(&params) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let handshake = match begin(&req, &state) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let Admitted { query, filter } = match selection(&state, &params, &grant).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let warnings = stream_warnings(&state, query.as_ref()).await;
    let tables = snapshot_tables(&params);
    let backfills = match backfill_plans(&state, &grant, &slot, &tables, None).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let upgrade = match accept_upgrade(&mut req, &state, handshake) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    // Start streaming before answering, so a missing or busy slot is an
    // HTTP status rather than a closed socket.
    let opened = match consumer::open(&state.streams, &slot, acked).await {
        Ok(o) => o,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (metrics, shutdown) = (state.metrics.clone(), state.shutdown.clone());
    let access = crate::auth::Access::new(state.auth.clone(), grant);
    let response = switching_protocols(&upgrade.accept);
    state.tasks.clone().spawn(async move {
        // The slot stays held while the consumer runs; the handshake ends
        // with the upgrade (there is no subscription frame).
        if let Some(Opened {
            ws,
            socket,
            places,
            handshake,
        }) = upgrade.open().await
        {
            drop(handshake);
            let opts = consumer::Options {
                query,
                filter,
                heartbeats,
                access,
                backfills,
                backfill_runner: (state.streams.pool.clone(), state.backfills.clone()),
                warnings,
            };
            let watch = crate::liveness::Watch::new(state.liveness, socket);
            consumer::run(ws, watch, opened, opts, metrics, shutdown).await;
            drop(places);
        }
    });
    response
}
