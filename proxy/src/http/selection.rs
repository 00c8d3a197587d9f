//! What a websocket URL asks for (`/ws`, `/v1/lr/stream`): a query, checked
//! against the catalog, `--tables` and the user's rules, and a WASM filter
//! instantiated for the client.

use super::{json_error, AppState, Resp};
use crate::auth::{self, Grant};
use crate::delivery;
use crate::filter::FilterInstance;
use crate::query::{self, Query, QueryErrorKind};
use axum::response::IntoResponse;
use hyper::StatusCode;
use std::collections::HashMap;

/// What a websocket client chose in its URL.
pub struct Selection {
    /// `query=`: parsed, its table known and allowed, narrowed by the
    /// user's rules.
    pub query: Option<Query>,
    /// `filter=` (and `config=`): instantiated for this client.
    pub filter: Option<FilterInstance>,
}

/// Reads `query`, `filter` and `config` from a websocket URL; the error
/// response when one is refused.
pub async fn selection(
    state: &AppState,
    params: &HashMap<String, String>,
    grant: &Grant,
) -> Result<Selection, Box<Resp>> {
    let query = match params.get("query").map(|q| query::parse(q)) {
        None => None,
        Some(Ok(q)) => Some(q),
        Some(Err(e)) => {
            let status = if e.kind == QueryErrorKind::TooLong {
                StatusCode::URI_TOO_LONG
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(Box::new(json_error(status, &e.message, Some(e.position))));
        }
    };
    let query = match query {
        None => None,
        Some(q) => {
            let tables = state.tables.as_deref().map(|t| t.as_slice());
            Some(
                auth::admit_query(&state.catalog, tables, grant, q)
                    .await
                    .map_err(|e| {
                        let status = super::ApiError::from(auth::refusal(&e)).status;
                        Box::new(json_error(status, &e.to_string(), None))
                    })?,
            )
        }
    };
    let filter = match params.get("filter") {
        None => None,
        Some(id) => {
            let config = params
                .get("config")
                .map(|c| c.as_bytes().to_vec())
                .unwrap_or_default();
            match delivery::open_filter(&state.filters, id, config) {
                Ok(f) => Some(f),
                Err(e) => return Err(Box::new(super::ApiError::from(e).into_response())),
            }
        }
    };
    Ok(Selection { query, filter })
}
