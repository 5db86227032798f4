//! The admin HTTP endpoint: `GET /healthz` and `GET /metrics`; and the HTTP serving glue that
//! runs an axum router on connections from the shared accept loop.

use crate::listener::Accepted;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mailgate_core::Core;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// The admin router.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(core)
}

/// `200 ok` while the store can commit; `503` with the reason otherwise (a full disk, an I/O
/// error), so a load balancer or the container's HEALTHCHECK stops sending mail here.
async fn healthz(State(core): State<Arc<Core>>) -> impl IntoResponse {
    match core.store.health().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(e) => {
            tracing::error!(error = %e, "health check: the store cannot commit");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store cannot commit: {e}\n"),
            )
        }
    }
}

async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    if let Ok(stats) = core.store.stats().await {
        core.metrics.set_queue_depth(stats.queue_depth);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.metrics.render(),
    )
}

/// Serve HTTP/1.1 with `app` on one accepted connection; on shutdown, finish the request in
/// flight and close.
/// Handlers find the peer's address as axum's `ConnectInfo<SocketAddr>`.
pub async fn serve_http(app: Router, mut conn: Accepted, header_timeout: Duration) {
    use tokio::io::AsyncReadExt;
    // Until its first byte a connection gets no HTTP machinery (hyper's buffers are 8 KiB
    // and more): an idle one costs only this small wait, under the same header time limit.
    let mut first = [0u8; 1];
    let waiting = std::time::Instant::now();
    let read = tokio::select! {
        r = tokio::time::timeout(header_timeout, conn.stream.read(&mut first)) => r,
        // Shutting down, or closed to make room for another connection.
        _ = conn.shutdown.cancelled() => return,
    };
    let stream = match read {
        Ok(Ok(1)) => mailgate_core::io::Prefixed::new(first[0], conn.stream),
        _ => return,
    };
    let peer = conn.peer;
    let state = conn.state.clone();
    let service = TowerToHyperService::new(app.map_request(
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            state.touch();
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        },
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The wait for the first byte counts against the same limit.
        .header_read_timeout(
            header_timeout
                .saturating_sub(waiting.elapsed())
                .max(Duration::from_millis(1)),
        )
        .max_buf_size(64 * 1024);
    let http = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    tokio::select! {
        r = http.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection error");
            }
        }
        _ = conn.shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = http.await;
        }
    }
}
