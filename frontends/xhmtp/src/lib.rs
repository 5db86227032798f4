//! mailgate-xhmtp: the XHMTP front-end — sender-hosted messages, HTTP notifications checked
//! against DNS, RSS feeds. The profile is docs/protocols/xhmtp.md.
//!
//! - [`routes`]: the axum routes (submit, notify, feed, filters, serve a message).
//! - [`notifier`]: the relay transport that notifies other domains' servers.
//! - [`fetcher`]: fetches notified messages from senders' servers into INBOXes.
//! - [`discovery`]: SRV/TXT/A look-ups and the notifier check.
//! - [`feed`], [`filters`], [`access`], [`wire`]: RSS, per-account filters, access codes, JSON.
//! - [`client`]: submit, read a feed, fetch a message (`mailgate send/receive --protocol xhmtp`).

pub mod access;
pub mod auth;
pub mod client;
pub mod config;
pub mod discovery;
pub mod error;
pub mod feed;
pub mod fetcher;
pub mod filters;
pub mod http;
pub mod notifier;
pub mod routes;
pub mod service;
pub mod wire;

pub use config::XhmtpConfig;
pub use routes::router;
pub use service::Xhmtp;
