//! HTTP routes on hyper: `GET /ws` (websocket upgrade), the durable
//! stream endpoints under `/v1/` (handled in `streams/http.rs`),
//! `/healthz`, `/metrics`, `/` (live demo page); bearer tokens; graceful
//! shutdown. Each connection admitted by `listener.rs` is served here with
//! the header timeout; bodies are read with the body timeout, websocket
//! upgrades with the handshake timeout.

use crate::auth::{self, Auth, Denied, Grant, UploadDenied};
use crate::catalog::Catalog;
use crate::filter::{FilterInstance, Filters};
use crate::health::Health;
use crate::hub::{Hub, SubscribeError};
use crate::listener::{self, Connections, Handshake, Slot};
use crate::metrics::Metrics;
use crate::origin;
use crate::query::{self, Query, QueryErrorKind};
use crate::session;
use crate::streams::Streams;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use walcast_format::{Position, TablePattern};

const DEMO_PAGE: &str = include_str!("demo.html");

/// Everything a request handler needs.
pub struct AppState {
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub catalog: Catalog,
    /// Tokens and what they grant.
    pub auth: Arc<Auth>,
    /// Web origins allowed to call `/ws` and `/v1/*` from a browser.
    pub origins: crate::origin::Origins,
    pub max_clients: usize,
    /// Pings and stall timeout of live clients.
    pub liveness: session::Liveness,
    pub tables: Option<Arc<Vec<TablePattern>>>,
    pub streams: Arc<Streams>,
    pub filters: Arc<Filters>,
    pub shutdown: watch::Receiver<bool>,
    /// Open connections and their caps.
    pub connections: Arc<Connections>,
    pub timeouts: Timeouts,
    /// Why the descriptor limit cannot serve `--max-clients`, if so.
    pub descriptor_warning: Option<String>,
}

/// How long a client may take over each step of a request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Sending a request head; also idle between keep-alive requests.
    pub header: Duration,
    /// Sending a request body.
    pub body: Duration,
    /// From a websocket upgrade request to an open websocket (and, for a
    /// first-frame subscription, to that frame).
    pub handshake: Duration,
}

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn json_error(status: StatusCode, message: &str, position: Option<usize>) -> Resp {
    let body = match position {
        Some(p) => serde_json::json!({"error": message, "position": p}),
        None => serde_json::json!({"error": message}),
    };
    respond(status, "application/json", body.to_string())
}

pub(crate) fn query_params(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// What the request's credential grants, or the 401 answer.
fn grant(
    state: &AppState,
    req: &Request<Incoming>,
    params: &HashMap<String, String>,
) -> Result<Grant, Box<Resp>> {
    state
        .auth
        .check(Auth::credential(req.headers(), params))
        .map_err(|e| Box::new(unauthorized(&e)))
}

/// Serves HTTP (HTTPS with `tls`) on the connections `listener.rs` admits
/// until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    tls: Option<Arc<crate::https::Tls>>,
) {
    let conns = state.connections.clone();
    listener::run(listener, conns, shutdown, move |stream, addr, slot| {
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        match tls.as_ref().and_then(|t| t.acceptor()) {
            None => {
                tokio::spawn(connection(stream, addr.ip(), slot, state));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // The TLS handshake is part of sending the request head.
                    let header = state.timeouts.header;
                    match tokio::time::timeout(header, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection(tls, addr.ip(), slot, state).await,
                        Ok(Err(e)) => {
                            crate::limited!(debug, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            state
                                .metrics
                                .connections
                                .timed_out_header
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    })
    .await;
}

/// The client's address, on every request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub IpAddr);

/// One HTTP/1.1 connection, its requests and its upgrade. A client that
/// takes longer than the header timeout to send a request head (the first,
/// or the next on a keep-alive connection) is disconnected. `slot` is held
/// until the connection ends (an upgraded websocket takes its own).
async fn connection<S>(stream: S, addr: IpAddr, slot: Slot, state: Arc<AppState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let metrics = state.metrics.clone();
    let header_timeout = state.timeouts.header;
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ClientAddr(addr));
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(front(req, state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        if e.is_timeout() {
            metrics
                .connections
                .timed_out_header
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(slot);
}

/// Checks a browser's origin on `/ws` and `/v1/*` (preflights included),
/// then routes.
async fn front(req: Request<Incoming>, state: Arc<AppState>) -> Resp {
    let path = req.uri().path();
    if !(path == "/ws" || path.starts_with("/v1/")) {
        return route(req, state).await;
    }
    match state.origins.judge(req.headers()) {
        origin::Verdict::NoOrigin => route(req, state).await,
        origin::Verdict::Refused(why) => json_error(StatusCode::FORBIDDEN, &why, None),
        origin::Verdict::Allowed(o) => {
            let is_preflight = req.method() == Method::OPTIONS
                && req.headers().contains_key("access-control-request-method");
            if is_preflight {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                origin::preflight(r.headers_mut(), o);
                return r;
            }
            let mut r = route(req, state).await;
            origin::decorate(r.headers_mut(), o);
            r
        }
    }
}

async fn route(req: Request<Incoming>, state: Arc<AppState>) -> Resp {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", DEMO_PAGE),
        (&Method::GET, "/healthz") => {
            let (ok, mut body) = state.health.report(state.hub.len());
            let log = state.hub.report();
            body["buffer"] = serde_json::json!({
                "bytes": log.stats.bytes,
                "max_bytes": log.stats.max_bytes,
                "changes": log.stats.changes,
                "oldest": log.stats.oldest.map(|p| p.to_string()),
                "newest": log.stats.newest.map(|p| p.to_string()),
            });
            body["slowest_client_changes_waiting"] =
                serde_json::json!(log.waiting.iter().copied().max().unwrap_or(0));
            let c = &state.metrics.connections;
            body["connections"] = serde_json::json!({
                "open": c.open.load(Ordering::Relaxed),
                "max": state.connections.limits.max_connections,
                "descriptor_limit": c.descriptor_limit.load(Ordering::Relaxed),
                "descriptor_warning": state.descriptor_warning,
            });
            if let Ok(lags) = state.metrics.stream_lag.lock() {
                let over: Vec<&String> = lags
                    .iter()
                    .filter(|(_, (_, over))| *over)
                    .map(|(slot, _)| slot)
                    .collect();
                body["streams_over_max_lag"] = serde_json::json!(over);
            }
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body.to_string())
        }
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(&state.hub.report()),
        ),
        (&Method::GET, "/ws") => websocket(req, state).await,
        (_, "/ws" | "/" | "/healthz" | "/metrics") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET", None)
        }
        (&Method::POST, "/v1/filters") => {
            let params = query_params(&req);
            match state.auth.check_upload(Auth::credential(req.headers(), &params)) {
                Ok(()) => crate::filter::upload::handle(req, state).await,
                Err(UploadDenied::NoUploadToken) => unauthorized(&Denied::Invalid(
                    "uploading filters needs a bearer token allowed to upload (--filter-upload-token, or --token when that is not set, or a JWT whose walcast claim has \"filters\": true)".into(),
                )),
                Err(UploadDenied::Invalid(why)) => unauthorized(&Denied::Invalid(why)),
                Err(UploadDenied::NotAllowed) => json_error(
                    StatusCode::FORBIDDEN,
                    "this token does not allow uploading filters (its walcast claim has no \"filters\": true)",
                    None,
                ),
            }
        }
        (_, "/v1/filters") => json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None),
        (_, path) if path.starts_with("/v1/") => {
            let params = query_params(&req);
            let grant = match grant(&state, &req, &params) {
                Ok(g) => g,
                Err(r) => return *r,
            };
            crate::streams::http::route(req, params, state, grant).await
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "no such endpoint (try /ws, /v1/streams, /healthz, /metrics or /)",
            None,
        ),
    }
}

/// The answer when a subscription's filter cannot be used.
fn filter_refused(code: &str, message: &str) -> Resp {
    let status = match code {
        "FILTER_NOT_FOUND" => StatusCode::NOT_FOUND,
        "INSTANTIATE_FAILED" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    respond(
        status,
        "application/json",
        serde_json::json!({"error": message, "code": code}).to_string(),
    )
}

fn unauthorized(why: &Denied) -> Resp {
    let mut r = json_error(StatusCode::UNAUTHORIZED, &why.to_string(), None);
    r.headers_mut()
        .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    r
}

async fn websocket(mut req: Request<Incoming>, state: Arc<AppState>) -> Resp {
    if req.uri().query().map(str::len).unwrap_or(0) > query::MAX_QUERY_LEN + 1024 {
        return json_error(
            StatusCode::URI_TOO_LONG,
            "the query string is over 4 KiB",
            None,
        );
    }
    let params = query_params(&req);
    let grant = match grant(&state, &req, &params) {
        Ok(g) => g,
        Err(r) => return *r,
    };
    let Some(handshake) = state.connections.begin_handshake() else {
        return too_many_handshakes();
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
    };
    let access = auth::Session {
        auth: state.auth.clone(),
        grant,
    };
    let response = switching_protocols(&upgrade.accept);
    tokio::spawn(async move {
        if let Some(open) = upgrade.open().await {
            session::run(open, start, ctx, access).await;
        }
    });
    response
}

/// HTTP 503 with a JSON error and `Retry-After: <seconds>`.
fn unavailable(message: &str, retry_after: &'static str) -> Resp {
    let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, message, None);
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static(retry_after));
    r
}

/// The answer when `--max-handshakes` upgrades are in flight.
pub(crate) fn too_many_handshakes() -> Resp {
    unavailable(
        "too many websocket handshakes in progress; retry in a moment",
        "1",
    )
}

/// The answer when the hub refuses a subscription.
fn subscribe_refused(e: SubscribeError) -> Resp {
    match e {
        SubscribeError::Gone { oldest } => respond(
            StatusCode::GONE,
            "application/json",
            session::gone_body(oldest),
        ),
        SubscribeError::NotReady => unavailable(session::NOT_READY, "1"),
        SubscribeError::Closed(reason) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, &reason, None)
        }
    }
}

/// What a websocket client chose in its URL.
pub(crate) struct Selection {
    /// `query=`: parsed, its table known and allowed.
    pub query: Option<Query>,
    /// `filter=` (and `config=`): instantiated for this client.
    pub filter: Option<FilterInstance>,
}

/// Reads `query`, `filter` and `config` from a websocket URL (`/ws`,
/// `/v1/lr/stream`); the error response when one is refused.
pub(crate) async fn selection(
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
        Some(q) => Some(
            auth::admit_query(
                &state.catalog,
                state.tables.as_deref().map(|t| t.as_slice()),
                grant,
                q,
            )
            .await
            .map_err(|e| Box::new(json_error(e.status(), &e.to_string(), None)))?,
        ),
    };
    let filter = match params.get("filter") {
        None => None,
        Some(id) => {
            let config = params
                .get("config")
                .map(|c| c.as_bytes().to_vec())
                .unwrap_or_default();
            match session::open_filter(&state.filters, id, config) {
                Ok(f) => Some(f),
                Err((code, message)) => return Err(Box::new(filter_refused(code, &message))),
            }
        }
    };
    Ok(Selection { query, filter })
}

/// An accepted websocket upgrade, until the connection is handed over.
pub(crate) struct Upgrade {
    /// The `Sec-WebSocket-Accept` value of the 101 answer.
    pub accept: String,
    on_upgrade: hyper::upgrade::OnUpgrade,
    slot: Option<Slot>,
    handshake: Handshake,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// An open websocket and what it holds: its connection's slot, and the
/// handshake until its subscription is made.
pub(crate) struct Opened {
    pub ws: session::Ws,
    pub slot: Option<Slot>,
    pub handshake: Handshake,
}

impl Upgrade {
    /// The websocket, once the 101 answer is out; `None` when the client
    /// left or took longer than the handshake timeout.
    pub async fn open(self) -> Option<Opened> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.on_upgrade).await {
            Ok(Ok(upgraded)) => Some(Opened {
                ws: server_socket(upgraded).await,
                slot: self.slot,
                handshake: self.handshake,
            }),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                None
            }
            Err(_) => {
                self.metrics
                    .connections
                    .timed_out_handshake
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Checks that `req` is a websocket upgrade the server can take; returns
/// the pending upgrade, or the error response.
pub(crate) fn accept_upgrade(
    req: &mut Request<Incoming>,
    state: &AppState,
    handshake: Handshake,
) -> Result<Upgrade, Box<Resp>> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = key.filter(|_| is_upgrade) else {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks websocket: connect with a websocket client (e.g. new WebSocket('ws://host/ws?query=insert:users'))",
            None,
        )));
    };
    let clients = state.metrics.clients.load(Ordering::Relaxed)
        + state.metrics.stream_consumers.load(Ordering::Relaxed);
    if clients as usize >= state.max_clients {
        state
            .metrics
            .connections
            .refused_clients
            .fetch_add(1, Ordering::Relaxed);
        return Err(Box::new(unavailable(
            "too many clients; try again later",
            "5",
        )));
    }
    Ok(Upgrade {
        accept: derive_accept_key(key.as_bytes()),
        on_upgrade: hyper::upgrade::on(&mut *req),
        slot: req
            .extensions()
            .get::<ClientAddr>()
            .map(|a| state.connections.hold(a.0)),
        handshake,
        timeout: state.timeouts.handshake,
        metrics: state.metrics.clone(),
    })
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
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
pub(crate) async fn read_body(
    req: Request<Incoming>,
    cap: usize,
    state: &AppState,
) -> Result<Bytes, BodyError> {
    let timeout = state.timeouts.body;
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), cap));
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

/// The websocket over an upgraded connection. Clients only send small
/// frames (pongs, ACKs, a subscription): a 1 KiB read buffer (it grows for
/// a larger frame) and a message cap keep memory per client low and
/// bounded; 4 KiB cost 3 KB more per idle client, and left the heap
/// fragmented (docs/benchmarks.md).
async fn server_socket(upgraded: hyper::upgrade::Upgraded) -> session::Ws {
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(32 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await
}

/// The `101 Switching Protocols` answer.
pub(crate) fn switching_protocols(accept: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}
