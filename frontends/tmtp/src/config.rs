//! TMTP listener settings (`[tmtp]` in mailgate.toml).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Who may register over TMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone who reaches the listener may register (a new account in the first local domain),
    /// within `registrations_per_hour` per address.
    Open,
    /// Only accounts the operator creates (`mailgate user node add ADDRESS LABEL`).
    Closed,
}

/// `[tmtp]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TmtpConfig {
    /// Run the TMTP front-end.
    pub enabled: bool,
    /// The TLS listener (mnm listens on 443; 5443 in the embedded defaults).
    pub listen: SocketAddr,
    /// `open` or `closed` (the default: a members-only site decides who joins).
    pub registration: Registration,
    /// Registrations one IP address may make per hour when registration is open.
    pub registrations_per_hour: u32,
    /// Seconds a connection has to complete TmtpRev and Login or Register (mnm: 5).
    pub login_timeout_secs: u64,
    /// Seconds a logged-in link may stay silent before it is closed (mnm: 120; clients Pulse).
    pub idle_timeout_secs: u64,
    /// Seconds to wait for a node's Ack before sending the message again (mnm: 30).
    pub ack_timeout_secs: u64,
}

impl Default for TmtpConfig {
    fn default() -> Self {
        TmtpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 5443)),
            registration: Registration::Closed,
            registrations_per_hour: 10,
            login_timeout_secs: 5,
            idle_timeout_secs: 120,
            ack_timeout_secs: 30,
        }
    }
}
