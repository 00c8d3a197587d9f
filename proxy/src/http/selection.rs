//! What a websocket URL asks for (`/ws`, `/v1/lr/stream`): read by
//! `walcast_core::requests` (the same reader as a first frame's), admitted
//! by `delivery::admit`; here only the HTTP answer when it is refused.

use super::{ApiError, AppState, Resp};
use crate::auth::Grant;
use crate::delivery::{self, Admitted};
use crate::refusal::Refusal;
use axum::response::IntoResponse;
use hyper::StatusCode;
use std::collections::HashMap;
use walcast_core::query::QueryErrorKind;
use walcast_core::requests::{Choice, SubscriptionError};

/// The answer to a URL whose subscription does not parse: 414 for a query
/// over the length limit, else 400 (with the query's position).
pub fn unparsed(e: SubscriptionError) -> Box<Resp> {
    let too_long = matches!(&e, SubscriptionError::Query(q) if q.kind == QueryErrorKind::TooLong);
    let mut err = ApiError::from(Refusal::from(e));
    if too_long {
        err.status = StatusCode::URI_TOO_LONG;
    }
    Box::new(err.into_response())
}

/// The answer to a refused subscription.
pub fn refused(e: Refusal) -> Box<Resp> {
    Box::new(ApiError::from(e).into_response())
}

/// Reads `query`, `filter` and `config` from a durable stream's websocket
/// URL and admits them for the user; the error response when refused.
pub async fn selection(
    state: &AppState,
    params: &HashMap<String, String>,
    grant: &Grant,
) -> Result<Admitted, Box<Resp>> {
    let choice = Choice::from_url(params).map_err(unparsed)?;
    let tables = state.tables.as_deref().map(|t| t.as_slice());
    delivery::admit(&state.catalog, tables, grant, &state.filters, choice)
        .await
        .map_err(refused)
}
