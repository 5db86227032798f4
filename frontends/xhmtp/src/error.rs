//! JSON error answers: every refusal is `{"error": <code>, "message": <text>}` with its status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// `WWW-Authenticate` challenge (401s) or `Retry-After` (429s, 503s).
    pub extra: Option<(header::HeaderName, HeaderValue)>,
    /// Answer with `Connection: close` (after a wrong password).
    pub close: bool,
}

impl ApiError {
    /// An error without extra headers.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            close: false,
        }
    }

    /// The same answer, closing the connection after it.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// `429` with `Retry-After` set to `wait` (failed-login bans).
    pub fn rate_limited_for(wait: std::time::Duration, message: &str) -> Self {
        ApiError {
            extra: Some((
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            )),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).closing()
        }
    }

    /// `503` with `Retry-After: 1` when a resource is exhausted (memory budget, verifiers).
    pub fn busy(message: &str) -> Self {
        ApiError {
            extra: Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        }
    }

    /// `400` with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `401` with a Basic challenge.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            extra: Some((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mailgate\", charset=\"UTF-8\""),
            )),
            ..Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    /// `404`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `429` with `Retry-After: 1`.
    pub fn rate_limited() -> Self {
        ApiError {
            extra: Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address; retry later",
            )
        }
    }

    /// `503` for a store failure (nothing was accepted).
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "xhmtp: store failure");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporary storage failure; nothing was accepted, retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response();
        if let Some((k, v)) = self.extra {
            resp.headers_mut().insert(k, v);
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<mailgate_core::StoreError> for ApiError {
    fn from(e: mailgate_core::StoreError) -> Self {
        Self::unavailable(e)
    }
}
