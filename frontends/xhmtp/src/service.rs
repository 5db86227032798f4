//! What the XHMTP routes, the notifier and the fetcher share.

use crate::access::AccessCodes;
use crate::auth::LoginCache;
use crate::config::XhmtpConfig;
use crate::discovery::Locator;
use crate::http::HttpClient;
use mailgate_core::ratelimit::RateLimiter;
use mailgate_core::Core;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::Notify;

/// Protocol name in metrics, traces and origins.
pub const PROTOCOL: &str = "xhmtp";

/// The XHMTP front-end's state.
pub struct Xhmtp {
    /// Store, policy, metrics.
    pub core: Arc<Core>,
    /// `[xhmtp]`.
    pub config: XhmtpConfig,
    /// Access-code derivation.
    pub codes: AccessCodes,
    /// Peer discovery and the notifier check.
    pub locator: Locator,
    /// Outbound HTTP.
    pub http: HttpClient,
    /// This server's public base URL (no trailing slash).
    pub base_url: String,
    pub(crate) logins: LoginCache,
    pub(crate) notify_limit: RateLimiter<IpAddr>,
    /// Wakes the fetcher when a notification arrives.
    pub(crate) fetch_wake: Notify,
}

impl Xhmtp {
    /// Assemble the front-end for `core`; `primary_domain` names this server in default URLs.
    pub fn new(
        core: Arc<Core>,
        config: XhmtpConfig,
        codes: AccessCodes,
        locator: Locator,
        http: HttpClient,
        primary_domain: &str,
    ) -> Arc<Self> {
        let base_url = config.base_url(primary_domain);
        let notify_limit = RateLimiter::new(config.notify_rate_per_sec, config.notify_burst);
        Arc::new(Xhmtp {
            core,
            codes,
            locator,
            http,
            base_url,
            logins: LoginCache::default(),
            notify_limit,
            fetch_wake: Notify::new(),
            config,
        })
    }

    /// The URL path of `segments` under this server's prefix (each segment percent-encoded).
    pub fn path(&self, segments: &[&str]) -> String {
        path(&self.config.prefix, segments)
    }
}

/// `/<prefix>/<segment>/…` with each segment percent-encoded.
pub fn path(prefix: &str, segments: &[&str]) -> String {
    let mut u = url::Url::parse("http://x/").expect("static URL");
    if let Ok(mut p) = u.path_segments_mut() {
        p.pop_if_empty().push(prefix);
        for s in segments {
            p.push(s);
        }
    }
    u.path().to_owned()
}
