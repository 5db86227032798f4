//! XHMTP listener settings (`[xhmtp]` in mailgate.toml).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[xhmtp]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XhmtpConfig {
    /// Run the XHMTP front-end.
    pub enabled: bool,
    /// HTTP listener.
    pub listen: SocketAddr,
    /// URL path prefix (published as TXT `_prefix._xhmtp.<domain>`).
    pub prefix: String,
}

impl Default for XhmtpConfig {
    fn default() -> Self {
        XhmtpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            prefix: "xhmtp".into(),
        }
    }
}

impl XhmtpConfig {
    /// The prefix must be one non-empty path segment.
    pub fn validate(&self) -> Result<(), String> {
        let ok = !self.prefix.is_empty()
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "xhmtp.prefix = {:?}: use one path segment of A-Z a-z 0-9 - _ .",
                self.prefix
            ))
        }
    }
}
