//! `GET /ws`: a live subscription. The query (or filter) in the URL is
//! checked and subscribed before the upgrade is answered, so every change
//! committed after the client sees the 101 reaches it; without one, the
//! client's first frame names it (`live/session.rs`).

use super::selection::{refused, unparsed};
use super::upgrade::{accept_upgrade, begin, switching_protocols};
use super::{json_error, query_params, respond, unavailable, AppState, Resp};
use crate::auth::{self, Grant};
use crate::live::hub::SubscribeError;
use crate::live::{session, subscription};
use axum::extract::{Request, State};
use axum::Extension;
use hyper::StatusCode;
use std::sync::Arc;
use walcast_core::requests::Subscription;

/// The answer when the hub refuses a subscription.
fn subscribe_refused(e: SubscribeError) -> Resp {
    match e {
        SubscribeError::Gone { oldest, reason } => respond(
            StatusCode::GONE,
            "application/json",
            crate::frames::position_gone(oldest, reason.as_deref()),
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
    let sub = match Subscription::from_url(&params) {
        Ok(sub) => sub,
        Err(e) => return *unparsed(e),
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
    let admitted = match sub {
        None => None,
        Some(sub) => match subscription::admit(ctx.admission(), &grant, sub).await {
            Ok(s) => Some(s),
            Err(e) => return *refused(e),
        },
    };
    let upgrade = match accept_upgrade(&mut req, &state, handshake) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    // Subscribe before answering, so every change committed after the client
    // sees the upgrade reaches it.
    let (start, plan) = match admitted {
        None => (session::Start::FirstFrame, None),
        Some(s) => match state.hub.subscribe(s.query, s.after) {
            Ok(cursor) => (
                session::Start::Ready(Box::new(cursor), s.filter.map(Box::new)),
                s.plan,
            ),
            Err(e) => return subscribe_refused(e),
        },
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
