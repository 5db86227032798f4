//! mailgate-mmtp: the MMTP front-end (JSON over TCP, HashCash, SHA-256 integrity, OpenPGP).
//!
//! `codec` cuts the request stream into JSON values; `packet` validates SEND packets and renders
//! stored messages; `jsjson` serialises as JavaScript's `JSON.stringify` (OpenPGP lives in
//! `mailgate_core::pgp`); `session` runs one connection; `client` speaks MMTP to any server; `relay` delivers
//! queued mail to other domains' MMTP servers.

pub mod client;
pub mod codec;
pub mod config;
pub mod jsjson;
pub mod packet;
pub mod peers;
pub mod relay;
pub mod session;

pub use config::MmtpConfig;
pub use session::MmtpServer;
