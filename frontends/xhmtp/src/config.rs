//! XHMTP settings (`[xhmtp]` in mailgate.toml).

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// `[xhmtp]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XhmtpConfig {
    /// Run the XHMTP front-end.
    pub enabled: bool,
    /// HTTP listener.
    pub listen: SocketAddr,
    /// Optional HTTPS listener (the `[tls]` certificate).
    pub tls_listen: Option<SocketAddr>,
    /// URL path prefix (published as TXT `_prefix._xhmtp.<domain>`).
    pub prefix: String,
    /// This server's public base URL (`scheme://host[:port]`), used in the message URLs it
    /// sends; its host must resolve to the address the notifications leave from. Default:
    /// `http://<first domain>:<listen port>`.
    pub public_url: Option<String>,
    /// Source address of outgoing notifications and fetches (the address peers will find in
    /// DNS for `public_url`'s host). Default: chosen by the operating system.
    pub outbound_ip: Option<IpAddr>,
    /// Use HTTPS for peers found through DNS (SRV carries no scheme).
    pub outbound_https: bool,
    /// Static peers, tried before DNS (`[[xhmtp.routes]]`).
    pub routes: Vec<XhmtpRoute>,
    /// Leave the subject out of outgoing notifications.
    pub withhold_subject: bool,
    /// Largest request body accepted (submissions: the message limit applies on top), bytes.
    pub max_body_bytes: usize,
    /// Largest notification body, bytes.
    pub max_notification_bytes: usize,
    /// Time allowed to receive a whole request body, seconds (after it the answer is `408`).
    pub body_timeout_secs: u64,
    /// Notifications accepted per second per peer address (0: unlimited).
    pub notify_rate_per_sec: f64,
    /// Burst allowance of that limit.
    pub notify_burst: u32,
    /// Days a hosted message is kept after its last recipient fetched it.
    pub retention_days: u64,
    /// Time limit of one outgoing HTTP exchange, seconds.
    pub http_timeout_secs: u64,
    /// Items in a feed.
    pub feed_items: u32,
}

/// A static XHMTP peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XhmtpRoute {
    /// The remote domain.
    pub domain: String,
    /// Its server's host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Speak HTTPS to it.
    #[serde(default)]
    pub https: bool,
    /// Its path prefix (default `xhmtp`).
    #[serde(default)]
    pub prefix: Option<String>,
}

impl Default for XhmtpConfig {
    fn default() -> Self {
        XhmtpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_listen: None,
            prefix: "xhmtp".into(),
            public_url: None,
            outbound_ip: None,
            outbound_https: false,
            routes: Vec::new(),
            withhold_subject: false,
            max_body_bytes: 16 * 1024 * 1024,
            max_notification_bytes: 16 * 1024,
            body_timeout_secs: 60,
            notify_rate_per_sec: 20.0,
            notify_burst: 200,
            retention_days: 30,
            http_timeout_secs: 30,
            feed_items: 50,
        }
    }
}

/// Is `s` usable as one path segment prefix?
pub fn valid_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl XhmtpConfig {
    /// Check the values that cannot be checked by their types.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_prefix(&self.prefix) {
            return Err(format!(
                "xhmtp.prefix = {:?}: use one path segment of A-Z a-z 0-9 - _ .",
                self.prefix
            ));
        }
        if let Some(u) = &self.public_url {
            let parsed = url::Url::parse(u).map_err(|e| format!("xhmtp.public_url: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!(
                    "xhmtp.public_url = {u:?}: use http(s)://host[:port]"
                ));
            }
        }
        for r in &self.routes {
            if let Some(p) = &r.prefix {
                if !valid_prefix(p) {
                    return Err(format!(
                        "xhmtp.routes: prefix {p:?} of {} is invalid",
                        r.domain
                    ));
                }
            }
        }
        if self.max_notification_bytes == 0 || self.max_body_bytes == 0 || self.feed_items == 0 {
            return Err(
                "xhmtp: max_body_bytes, max_notification_bytes and feed_items must be > 0".into(),
            );
        }
        Ok(())
    }

    /// The public base URL without a trailing slash.
    pub fn base_url(&self, primary_domain: &str) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{primary_domain}:{}", self.listen.port()),
        }
    }
}
