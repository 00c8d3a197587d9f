//! The routes, and the layers every browser-facing route passes first:
//!
//! ```text
//! request -> query string length (414) -> origin (403, CORS preflight, CORS headers)
//!         -> credential: a Grant for /ws and /v1/* (401), upload rights for /v1/filters
//!         -> the route's handler
//! ```
//!
//! `/`, `/healthz` and `/metrics` need none of them. Every answer of the
//! proxy's own, 404 and 405 included, is a JSON `{"error": ...}`.

use super::{durable, json_error, live, ops, query_params, unauthorized, AppState, Resp};
use crate::auth::{self, UploadDenied};
use crate::http::origin;
use crate::query::MAX_QUERY_LEN;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::routing::{any, delete, get, post, MethodRouter};
use axum::Router;
use hyper::{Method, StatusCode};
use std::sync::Arc;

/// Longest URL query string taken: a query of [`MAX_QUERY_LEN`] bytes, an
/// `access_token` and the other parameters.
pub const MAX_QUERY_STRING: usize = MAX_QUERY_LEN + 8 * 1024;

/// A method router whose other methods get 405 with `message`.
fn only(route: MethodRouter<Arc<AppState>>, message: &'static str) -> MethodRouter<Arc<AppState>> {
    route.fallback(move || async move { json_error(StatusCode::METHOD_NOT_ALLOWED, message, None) })
}

/// The proxy's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let granted = Router::new()
        .route("/ws", only(get(live::websocket), "use GET"))
        .route("/v1/init", only(get(durable::init), "use GET"))
        .route(
            "/v1/streams",
            only(
                get(durable::list).post(durable::create),
                "use GET to list or POST to create",
            ),
        )
        .route(
            "/v1/streams/{slot}",
            only(delete(durable::drop_stream), "use DELETE"),
        )
        .route(
            "/v1/streams/{slot}/snapshot",
            only(post(durable::backfill), "use POST"),
        )
        .route(
            "/v1/snapshot/data",
            only(post(durable::snapshot_data), "use POST"),
        )
        .route("/v1/lr/stream", only(get(durable::lr_stream), "use GET"))
        .route("/v1/{*rest}", any(v1_not_found))
        .layer(from_fn_with_state(state.clone(), require_grant));
    let uploads = Router::new()
        .route(
            "/v1/filters",
            only(post(super::filters::upload), "use POST"),
        )
        .layer(from_fn_with_state(state.clone(), require_upload));
    let browsers = granted
        .merge(uploads)
        .layer(from_fn_with_state(state.clone(), check_origin))
        .layer(from_fn(limit_query_string));
    Router::new()
        .route("/", only(get(ops::demo), "use GET"))
        .route("/client/{name}", only(get(ops::client_module), "use GET"))
        .route("/healthz", only(get(ops::healthz), "use GET"))
        .route("/metrics", only(get(ops::metrics), "use GET"))
        .merge(browsers)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Resp {
    json_error(
        StatusCode::NOT_FOUND,
        "no such endpoint (try /ws, /v1/streams, /healthz, /metrics or /)",
        None,
    )
}

async fn v1_not_found() -> Resp {
    json_error(
        StatusCode::NOT_FOUND,
        "no such endpoint (try /v1/init, /v1/streams, /v1/snapshot/data or /v1/lr/stream)",
        None,
    )
}

/// 414 for a URL whose query string is over [`MAX_QUERY_STRING`] bytes.
async fn limit_query_string(req: Request, next: Next) -> Resp {
    if req.uri().query().map(str::len).unwrap_or(0) > MAX_QUERY_STRING {
        return json_error(
            StatusCode::URI_TOO_LONG,
            &format!(
                "the URL's query string is over {} KiB",
                MAX_QUERY_STRING / 1024
            ),
            None,
        );
    }
    next.run(req).await
}

/// A browser's origin: refused (403), a preflight answered, or CORS
/// headers added to the answer.
async fn check_origin(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Resp {
    match state.origins.judge(req.headers()) {
        origin::OriginCheck::NoOrigin => next.run(req).await,
        origin::OriginCheck::Refused(why) => json_error(StatusCode::FORBIDDEN, &why, None),
        origin::OriginCheck::Allowed(o) => {
            let is_preflight = req.method() == Method::OPTIONS
                && req.headers().contains_key("access-control-request-method");
            if is_preflight {
                let mut r = Resp::new(Body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                origin::preflight(r.headers_mut(), o);
                return r;
            }
            let mut r = next.run(req).await;
            origin::decorate(r.headers_mut(), o);
            r
        }
    }
}

/// What the credential grants, as a request extension (`Extension<Grant>`);
/// 401 without a valid one.
async fn require_grant(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Resp {
    let params = query_params(req.uri());
    match state.auth.check(auth::credential(req.headers(), &params)) {
        Ok(grant) => {
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
        Err(e) => unauthorized(&e.to_string()),
    }
}

/// Whether the credential may upload filters: 401 or 403 when not.
async fn require_upload(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Resp {
    let params = query_params(req.uri());
    match state.auth.check_upload(auth::credential(req.headers(), &params)) {
        Ok(()) => next.run(req).await,
        Err(UploadDenied::NoUploadToken) => unauthorized(
            "uploading filters needs a bearer token allowed to upload (--filter-upload-token, or --token when that is not set, or a JWT whose walcast claim has \"filters\": true)",
        ),
        Err(UploadDenied::Invalid(why)) => unauthorized(&why),
        Err(UploadDenied::NotAllowed) => json_error(
            StatusCode::FORBIDDEN,
            "this token does not allow uploading filters (its walcast claim has no \"filters\": true)",
            None,
        ),
    }
}
