//! Where connections become requests: the accept loop of `listener.rs`,
//! the TLS handshake when serving HTTPS, and one hyper HTTP/1.1 connection
//! per client, answered by the router.

use super::{router, AppState, ClientAddr, ClientSocket};
use crate::http::listener::{self, Place};
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves HTTP (HTTPS with `tls`) on the connections `listener.rs` admits
/// until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    tls: Option<Arc<crate::http::tls::Tls>>,
) {
    let conns = state.connections.clone();
    let app = router::router(state.clone());
    let stop = shutdown.clone();
    listener::run(listener, conns, shutdown, move |stream, addr, place| {
        let _ = stream.set_nodelay(true);
        let socket = ClientSocket(crate::liveness::Socket::of(&stream));
        let (state, app, stop) = (state.clone(), app.clone(), stop.clone());
        let tasks = state.tasks.clone();
        match tls.as_ref().map(|t| t.acceptor()) {
            None => {
                tasks.spawn(connection(
                    stream,
                    addr.ip(),
                    socket,
                    place,
                    state,
                    app,
                    stop,
                ));
            }
            Some(acceptor) => {
                tasks.spawn(async move {
                    // The TLS handshake is part of sending the request head.
                    let header = state.timeouts.header;
                    match tokio::time::timeout(header, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            connection(tls, addr.ip(), socket, place, state, app, stop).await
                        }
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

/// One HTTP/1.1 connection, its requests and its upgrade. A client that
/// takes longer than the header timeout to send a request head (the first,
/// or the next on a keep-alive connection) is disconnected. `place` is held
/// until the connection ends (an upgraded websocket takes its own). At
/// shutdown the request in progress is answered, then the connection closes.
async fn connection<S>(
    stream: S,
    addr: IpAddr,
    socket: ClientSocket,
    place: Place,
    state: Arc<AppState>,
    app: Router,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ClientAddr(addr));
        req.extensions_mut().insert(socket);
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.timeouts.header)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // Cancel safe: dropping it only stops waiting (the guard is not held).
    let stopping = async {
        shutdown.cancelled().await;
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            state
                .metrics
                .connections
                .timed_out_header
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(place);
}
