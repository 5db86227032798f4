//! mailgate-immp: the IMMP front-end (pipelined line protocol over TLS).
//!
//! `codec` parses command lines into typed commands and renders replies; `auth` is the draft's
//! shared-secret scheme; `session` runs the state machine of one connection; `mailbox` serves the
//! MBOX commands from the shared store.

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod federation;
pub mod mailbox;
mod payload;
mod pipeline;
mod pubsub;
pub mod session;

pub use config::ImmpConfig;
pub use session::ImmpServer;
