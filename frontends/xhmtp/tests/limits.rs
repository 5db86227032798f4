//! Limits of the notification route that the conformance suite cannot reach without
//! configuring the server: the per-peer rate limit (429 with Retry-After) and its place after
//! the recipient and notifier checks.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use mailgate_core::{Core, Metrics, Policy, SqliteOptions, SqliteStore};
use mailgate_xhmtp::access::AccessCodes;
use mailgate_xhmtp::discovery::Locator;
use mailgate_xhmtp::http::HttpClient;
use mailgate_xhmtp::{router, Xhmtp, XhmtpConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

async fn notify(
    app: &axum::Router,
    peer: &str,
    user: &str,
    url: &str,
) -> (StatusCode, Option<String>) {
    let body = serde_json::json!({ "url": url }).to_string();
    let mut req = Request::post(format!("/xhmtp/{user}"))
        .body(Body::from(body))
        .unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let resp = app.clone().oneshot(req).await.unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.status(), retry)
}

#[tokio::test]
async fn notifications_over_the_per_peer_rate_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let store =
        SqliteStore::open(SqliteOptions::new(dir.path().join("db")), metrics.clone()).unwrap();
    let core = Arc::new(Core::new(Arc::new(store), Policy::new(["b.test"]), metrics));
    core.add_account(
        &mailgate_core::Address::parse_xhmtp("bob@b.test").unwrap(),
        "pw",
    )
    .await
    .unwrap();
    let config = XhmtpConfig {
        notify_rate_per_sec: 0.001,
        notify_burst: 2,
        ..XhmtpConfig::default()
    };
    let x = Xhmtp::new(
        core,
        config,
        AccessCodes::new([1; 32]),
        Locator::new(Vec::new(), None, false),
        HttpClient::new(None, None, Duration::from_secs(1), 1024),
        "b.test",
    );
    let app = router(x);
    let url = |n: u32| {
        format!(
            "http://bob%40b.test:c{n}@127.0.0.1:1/xhmtp/a/0190d4c0-0000-7000-8000-00000000000{n}"
        )
    };
    assert_eq!(
        notify(&app, "127.0.0.1:5000", "bob@b.test", &url(1))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        notify(&app, "127.0.0.1:5001", "bob@b.test", &url(2))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let (status, retry) = notify(&app, "127.0.0.1:5002", "bob@b.test", &url(3)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("1"));
    // Checks that come first still answer for themselves: unknown recipient 404, wrong
    // notifier 403 — they do not use up the peer's allowance.
    assert_eq!(
        notify(&app, "127.0.0.1:5003", "nobody@b.test", &url(4))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        notify(&app, "127.0.0.2:5004", "bob@b.test", &url(5))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Another peer has its own allowance (its URL names its own address).
    let other = "http://bob%40b.test:c6@127.0.0.3:1/xhmtp/a/0190d4c0-0000-7000-8000-000000000006";
    assert_eq!(
        notify(&app, "127.0.0.3:5005", "bob@b.test", other).await.0,
        StatusCode::ACCEPTED
    );
}
