//! `GET /ws`: a live subscription. The query (or filter) in the URL is
//! checked and subscribed before the upgrade is answered, so every change
//! committed after the client sees the 101 reaches it; without one, the
//! client's first frame names it (`live/session.rs`).

use super::selection::{selection, Selection};
use super::upgrade::{accept_upgrade, begin, switching_protocols};
use super::{json_error, query_params, respond, unavailable, AppState, Resp};
use crate::auth::{self, Grant};
use crate::backfill;
use crate::live::hub::SubscribeError;
use crate::live::session;
use axum::extract::{Request, State};
use axum::Extension;
use hyper::StatusCode;
use std::sync::Arc;
use walcast_format::Position;

/// The answer when the hub refuses a subscription.
fn subscribe_refused(e: SubscribeError) -> Resp {
    match e {
        SubscribeError::Gone { oldest } => respond(
            StatusCode::GONE,
            "application/json",
            crate::frames::position_gone(oldest),
        ),
        SubscribeError::NotReady => unavailable(session::NOT_READY, "1"),
        SubscribeError::Closed(reason) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, &reason, None)
        }
    }
}

/// Handles `GET /ws` (the credential was checked by the router's layer).
pub async fn websocket(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    mut req: Request,
) -> Resp {
    let params = query_params(req.uri());
    let handshake = match begin(&req, &state) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let Selection { query, filter } = match selection(&state, &params, &grant).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let after = match params.get("after").map(|a| a.parse::<Position>()) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return json_error(StatusCode::BAD_REQUEST, &format!("after: {e}"), None),
    };
    let snapshot = match params.get("snapshot").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("snapshot must be 1 or 0 (got {other:?})"),
                None,
            )
        }
    };
    let plan = match (&query, snapshot) {
        (_, false) => None,
        (None, true) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "snapshot=1 needs query= naming the table to read (or send it in the subscription frame)",
                None,
            )
        }
        (Some(q), true) => match backfill::driver::plan_for(&state.catalog, q).await {
            Ok(p) => Some(p),
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string(), None),
        },
    };
    if after.is_some() && query.is_none() && filter.is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "after needs query= or filter= in the URL (or send it in the subscription frame)",
            None,
        );
    }
    let upgrade = match accept_upgrade(&mut req, &state, handshake) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    // Subscribe before answering, so every change committed after the client
    // sees the upgrade reaches it.
    let start = if query.is_none() && filter.is_none() {
        session::Start::FirstFrame
    } else {
        match state.hub.subscribe(query, after) {
            Ok(cursor) => session::Start::Ready(Box::new(cursor), filter.map(Box::new)),
            Err(e) => return subscribe_refused(e),
        }
    };
    let ctx = session::Context {
        hub: state.hub.clone(),
        filters: state.filters.clone(),
        metrics: state.metrics.clone(),
        liveness: state.liveness,
        shutdown: state.shutdown.clone(),
        catalog: state.catalog.clone(),
        tables: state.tables.clone(),
        backfills: state.backfills.clone(),
        view_max_rows: state.view_max_rows,
    };
    let access = auth::Access::new(state.auth.clone(), grant);
    let response = switching_protocols(&upgrade.accept);
    state.tasks.clone().spawn(async move {
        if let Some(open) = upgrade.open().await {
            session::run(open, start, ctx, access, plan).await;
        }
    });
    response
}
