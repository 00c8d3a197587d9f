//! The HTTP layer, on axum over hyper 1: where requests enter and how they
//! are answered.
//!
//! ```text
//! listener.rs   accept loop: connection and handshake caps (the descriptor
//!               limit: crate::descriptors)
//! serve.rs      one hyper connection each, TLS (tls.rs) when configured
//! router.rs     the routes, and the layers in front of them: query string
//!               length, browser origin (origin.rs), credential (auth/)
//! live.rs       GET /ws: a live subscription
//! durable.rs    /v1/init, /v1/streams, /v1/snapshot/data, /v1/lr/stream:
//!               durable streams
//! ops.rs        GET /, /healthz, /metrics
//! filters.rs    POST /v1/filters: a WASM filter's upload (crate::filter
//!               compiles and caches it)
//! selection.rs  a websocket URL's subscription read and admitted, or its
//!               HTTP answer when refused
//! upgrade.rs    the websocket upgrade: checks, 101, the socket, its close
//! ```

pub mod durable;
pub mod error;
pub mod filters;
pub mod listener;
pub mod live;
pub mod ops;
pub mod origin;
pub mod router;
pub mod selection;
pub mod serve;
pub mod tls;
pub mod upgrade;

pub use error::ApiError;
pub use serve::serve;

use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::durable::Streams;
use crate::filter::Filters;
use crate::health::Health;
use crate::http::listener::Connections;
use crate::live::hub::Hub;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{StatusCode, Uri};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use walcast_format::TablePattern;

/// Everything a request handler needs.
pub struct AppState {
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub catalog: Catalog,
    /// Tokens and what they grant.
    pub auth: Arc<Auth>,
    /// Web origins allowed to call `/ws` and `/v1/*` from a browser.
    pub origins: crate::http::origin::Origins,
    /// `--max-clients` places: a websocket holds one for its life.
    pub clients: Arc<tokio::sync::Semaphore>,
    /// Every connection's and websocket's task, waited for at shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    /// Pings and stall timeout of websocket clients.
    pub liveness: crate::liveness::Liveness,
    pub tables: Option<Arc<Vec<TablePattern>>>,
    pub streams: Arc<Streams>,
    pub filters: Arc<Filters>,
    pub shutdown: CancellationToken,
    /// Open connections and their caps.
    pub connections: Arc<Connections>,
    pub timeouts: Timeouts,
    /// Why the descriptor limit cannot serve `--max-clients`, if so.
    pub descriptor_warning: Option<String>,
    /// `snapshot=1` subscriptions' turns and rate.
    pub backfills: Arc<crate::backfill::driver::Shared>,
    /// Rows one live client's view may hold (`--view-max-rows`).
    pub view_max_rows: usize,
}

/// How long a client may take over each step of a request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Sending a request head (and the TLS handshake); also idle between
    /// keep-alive requests.
    pub header: Duration,
    /// Sending a request body.
    pub body: Duration,
    /// From a websocket upgrade request to an open websocket (and, for a
    /// first-frame subscription, to that frame).
    pub handshake: Duration,
}

/// An answer.
pub type Resp = axum::response::Response;

/// The client's address, on every request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The client's TCP socket, on every request: how much it has read.
#[derive(Debug, Clone, Copy)]
pub struct ClientSocket(pub crate::liveness::Socket);

/// An answer with a body and its content type.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Resp::new(Body::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Shorthand for handlers that answer a [`Resp`]: an [`ApiError`] with
/// this status, message and position.
pub fn json_error(status: StatusCode, message: &str, position: Option<usize>) -> Resp {
    ApiError::new(status, message).at(position).into_response()
}

/// Shorthand: 503 with `Retry-After: <seconds>`.
pub fn unavailable(message: &str, retry_after: &'static str) -> Resp {
    ApiError::unavailable(message)
        .retry_after(retry_after)
        .into_response()
}

/// Shorthand: 401 saying why, with `WWW-Authenticate: Bearer`.
pub fn unauthorized(why: &str) -> Resp {
    ApiError::unauthorized(why).into_response()
}

/// The URL's query parameters.
pub fn query_params(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Why a request body could not be read.
pub enum BodyError {
    /// Over `cap` bytes.
    TooLarge(usize),
    /// Not all sent within the body timeout.
    TimedOut(Duration),
    /// The connection failed or the framing was invalid.
    Broken(String),
}

impl BodyError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(cap) => write!(f, "the request body is over {cap} bytes"),
            BodyError::TimedOut(t) => write!(
                f,
                "the request body did not arrive within {} s",
                t.as_secs_f64()
            ),
            BodyError::Broken(e) => write!(f, "could not read the request body: {e}"),
        }
    }
}

/// Reads a request body of at most `cap` bytes within the body timeout.
pub async fn read_body(body: Body, cap: usize, state: &AppState) -> Result<Bytes, BodyError> {
    let timeout = state.timeouts.body;
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, cap));
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(cap)),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Err(_) => {
            state
                .metrics
                .connections
                .timed_out_body
                .fetch_add(1, Ordering::Relaxed);
            Err(BodyError::TimedOut(timeout))
        }
    }
}
