//! mailgate-xhmtp: the XHMTP front-end (HTTP notifications, sender-hosted messages, RSS).
//!
//! This foundation holds the configuration and the axum router skeleton: a service document at
//! `GET /<prefix>` and JSON 404s elsewhere. Submission, notification, serving and feeds arrive
//! with the XHMTP issue.

pub mod config;
pub mod routes;

pub use config::XhmtpConfig;
pub use routes::router;
