//! mailgate-immp: the IMMP front-end (pipelined line protocol over TLS).
//!
//! `codec` parses command lines into typed commands and renders replies; `session` runs one
//! connection (plaintext phase, TLS upgrade, reader and writer) and hands each pipeline's
//! commands to its worker in `pipeline`; `payload` reads bounded lines and DATA payloads;
//! `mailbox` serves MBOX from the shared store; `pubsub` handles nodes, subscriptions and pushes;
//! `auth` is the draft's shared-secret scheme; `envelope` carries what DELIVER cannot say
//! between servers; `federation` issues and checks cookies, finds
//! other domains' servers and relays mail to them; `client` speaks IMMP to any server.

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod envelope;
pub mod federation;
pub mod mailbox;
mod payload;
mod pipeline;
mod pubsub;
pub mod session;

pub use config::ImmpConfig;
pub use payload::fuzz_payloads;
pub use session::ImmpServer;
