//! mailgate-immp: the IMMP front-end (pipelined line protocol).
//!
//! This foundation holds the configuration and the session skeleton: the greeting, bounded line
//! reading, `UPGRADE` to TLS in place, `NOOP`, `QUIT`, and `403` for commands the state does not
//! allow. Authentication, mailboxes, delivery, push and publish/subscribe arrive with the IMMP
//! issue.

pub mod codec;
pub mod config;
pub mod session;

pub use config::ImmpConfig;
pub use session::ImmpServer;
