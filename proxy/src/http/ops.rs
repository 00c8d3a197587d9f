//! What operators and first-time users look at: `/healthz`, `/metrics`,
//! the live demo page `/` and the JavaScript client it imports,
//! `/client/*.js`. No credential needed.

use super::{json_error, respond, AppState, Resp};
use axum::extract::{Path, State};
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL};
use hyper::StatusCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const DEMO_PAGE: &str = include_str!("../demo.html");

/// `GET /`: the live demo page.
pub async fn demo() -> Resp {
    respond(StatusCode::OK, "text/html; charset=utf-8", DEMO_PAGE)
}

/// The pairs of `name` and the file `clients/js/dist/<name>`.
macro_rules! client_modules {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../clients/js/dist/", $name)))),*]
    };
}

/// The TypeScript client (`clients/js`) as built into `clients/js/dist`
/// (a test checks that the committed build is the build of its sources).
const CLIENT_MODULES: &[(&str, &str)] = client_modules!(
    "index.js",
    "live.js",
    "durable.js",
    "connection.js",
    "errors.js",
    "view.js",
    "index.d.ts",
    "live.d.ts",
    "durable.d.ts",
    "connection.d.ts",
    "errors.d.ts",
    "view.d.ts",
);

/// `GET /client/{file}`: the JavaScript client's modules, for the demo page
/// and any page that imports them (`import { subscribe } from
/// "http://proxy:8080/client/index.js"`). Modules are fetched with CORS, and
/// they are public code, so every origin may read them.
pub async fn client_module(Path(name): Path<String>) -> Resp {
    let Some((_, text)) = CLIENT_MODULES.iter().find(|(n, _)| *n == name) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no such client module (try /client/index.js)",
            None,
        );
    };
    let kind = if name.ends_with(".d.ts") {
        "application/typescript; charset=utf-8"
    } else {
        "text/javascript; charset=utf-8"
    };
    let mut r = respond(StatusCode::OK, kind, *text);
    let headers = r.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    // The modules change with the proxy's version: revalidate each time.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /healthz`: 200 while streaming, 503 otherwise, with the details.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Resp {
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
    {
        let lags = crate::locks::lock(&state.metrics.stream_lag);
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

/// `GET /metrics`: the Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Resp {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        state.metrics.render(&state.hub.report()),
    )
}

/// What `walcast-proxy relay` serves: `/healthz` (200 while relaying) and
/// `/metrics`; every other path is 404. No credential needed.
pub fn relay_routes(
    health: Arc<crate::health::Health>,
    metrics: Arc<crate::metrics::Metrics>,
) -> axum::Router {
    use axum::routing::get;
    let healthz = {
        let health = health.clone();
        move || {
            let health = health.clone();
            async move {
                let (ok, body) = health.report(0);
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                respond(status, "application/json", body.to_string())
            }
        }
    };
    let render = move || {
        let metrics = metrics.clone();
        async move {
            let none = crate::metrics::LogReport {
                stats: crate::log::LogStats::default(),
                waiting: Vec::new(),
                groups: 0,
                match_deferred: 0,
                match_throttled: 0,
            };
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(&none),
            )
        }
    };
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render))
        .fallback(|| async {
            super::json_error(
                StatusCode::NOT_FOUND,
                "a relay serves only /healthz and /metrics",
                None,
            )
        })
}
