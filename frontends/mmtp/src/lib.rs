//! mailgate-mmtp: the MMTP front-end (JSON over TCP).
//!
//! This foundation holds the configuration, the stream codec (concatenated JSON values, as the
//! original client sends them) and the session skeleton: welcome object, framing, per-request
//! error replies. The actions of spec §6 arrive with the MMTP issue.

pub mod codec;
pub mod config;
pub mod session;

pub use config::MmtpConfig;
pub use session::MmtpServer;
