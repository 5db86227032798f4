//! The axum routes of the XHMTP front-end.

use crate::config::XhmtpConfig;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use mailgate_core::Core;
use serde_json::{json, Value};
use std::sync::Arc;

struct AppState {
    core: Arc<Core>,
    prefix: String,
}

/// The router for the XHMTP listener.
pub fn router(core: Arc<Core>, config: &XhmtpConfig) -> Router {
    let state = Arc::new(AppState {
        core,
        prefix: config.prefix.clone(),
    });
    Router::new()
        .route(&format!("/{}", config.prefix), get(service))
        .fallback(not_found)
        .with_state(state)
}

async fn service(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut domains: Vec<&String> = state.core.policy.local_domains.iter().collect();
    domains.sort();
    Json(json!({
        "service": "xhmtp",
        "server": "mailgate",
        "prefix": state.prefix,
        "domains": domains,
    }))
}

async fn not_found() -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not_found", "message": "no such resource" })),
    )
}
