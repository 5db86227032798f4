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
}

impl Default for MmtpConfig {
    fn default() -> Self {
        MmtpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8026))),
            hashcash_difficulty: 4,
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
        Ok(())
    }
}
