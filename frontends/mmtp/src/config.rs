//! MMTP listener settings (`[mmtp]` in mailgate.toml).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[mmtp]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmtpConfig {
    /// Run the MMTP front-end.
    pub enabled: bool,
    /// Plain TCP listener.
    pub listen: SocketAddr,
    /// TLS listener (`None`: no TLS port).
    pub tls_listen: Option<SocketAddr>,
    /// Required HashCash difficulty in leading hex zeros (the original client mints at 5).
    pub hashcash_difficulty: u32,
    /// A stamp's timestamp may be this many seconds in the past or the future.
    pub hashcash_window_secs: u64,
    /// Allow the AUTH extension over plain TCP (passwords in clear text).
    pub allow_plain_auth: bool,
    /// INSECURE: let unauthenticated connections RECEIVE / CHECK any mailbox, as the original
    /// server does (for original clients, which have no AUTH).
    pub legacy_open_mailboxes: bool,
    /// Requests per second per peer IP (0: unlimited).
    pub requests_per_sec: f64,
    /// Burst allowance of the request limiter.
    pub request_burst: u32,
    /// Most messages one RECEIVE returns when the request sets no `limit`.
    pub max_receive: u32,
    /// Use TLS when relaying to MMTP peers found through DNS (SRV carries no scheme).
    pub outbound_tls: bool,
    /// Trust on first use: let an unauthenticated REGISTER_KEY set the key of a local account
    /// that has none (for the original client, which has no AUTH). Signatures checked against
    /// such a key are still reported `signatureVerified: false`, `keySource: "first-use"`.
    pub trust_on_first_use: bool,
    /// How long a key fetched from a remote sender's own domain is used before it is fetched
    /// again (a domain with no key for the address is asked again after a tenth of this).
    pub remote_key_ttl_secs: u64,
}

impl Default for MmtpConfig {
    fn default() -> Self {
        MmtpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8026))),
            hashcash_difficulty: 4,
            hashcash_window_secs: 2 * 24 * 3600,
            allow_plain_auth: false,
            legacy_open_mailboxes: false,
            requests_per_sec: 100.0,
            request_burst: 200,
            max_receive: 1000,
            outbound_tls: false,
            trust_on_first_use: false,
            remote_key_ttl_secs: 3600,
        }
    }
}

impl MmtpConfig {
    /// Check values a listener cannot fix at run time.
    pub fn validate(&self) -> Result<(), String> {
        if self.hashcash_difficulty > 5 {
            return Err(format!(
                "mmtp.hashcash_difficulty = {}: the original client mints at 5 and never reads \
                 the server's difficulty, so anything above 5 refuses it",
                self.hashcash_difficulty
            ));
        }
        if self.hashcash_window_secs == 0 {
            return Err("mmtp.hashcash_window_secs must be greater than 0".into());
        }
        if self.remote_key_ttl_secs == 0 {
            return Err("mmtp.remote_key_ttl_secs must be greater than 0".into());
        }
        if self.max_receive == 0 {
            return Err("mmtp.max_receive must be greater than 0".into());
        }
        if !(self.requests_per_sec >= 0.0 && self.requests_per_sec.is_finite()) {
            return Err("mmtp.requests_per_sec must be 0 (unlimited) or a positive number".into());
        }
        Ok(())
    }
}
