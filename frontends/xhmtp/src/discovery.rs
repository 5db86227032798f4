//! Where a domain's XHMTP server is: static routes first, then DNS — SRV `_xhmtp._tcp.<domain>`
//! for host and port, TXT `_prefix._xhmtp.<domain>` for the path prefix (default `xhmtp`) —
//! and the notifier check: does a host name resolve to the connecting peer's address?
//!
//! The resolver behind [`Discovery`] caches answers for their TTL.

use crate::config::{valid_prefix, XhmtpRoute};
use mailgate_core::discovery::{host_addresses, Discovery, SrvTarget};
use std::net::IpAddr;
use std::sync::Arc;

/// The prefix a domain without a TXT record uses.
pub const DEFAULT_PREFIX: &str = "xhmtp";

/// One place to send a domain's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Speak HTTPS.
    pub https: bool,
    /// Path prefix.
    pub prefix: String,
}

impl Endpoint {
    /// `scheme://host:port`.
    pub fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// Why no endpoint was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// DNS says the domain has no XHMTP server: a permanent failure.
    #[error("no XHMTP server for {0} (no route, no _xhmtp._tcp SRV record)")]
    NoRoute(String),
    /// DNS failed; try again later.
    #[error("DNS lookup failed: {0}")]
    Dns(String),
}

/// Finds peers and checks notifiers.
#[derive(Clone)]
pub struct Locator {
    routes: Vec<XhmtpRoute>,
    dns: Option<Arc<dyn Discovery>>,
    https: bool,
}

impl Locator {
    /// Static `routes`, then `dns` (when present); DNS-found peers use HTTPS when `https`.
    pub fn new(routes: Vec<XhmtpRoute>, dns: Option<Arc<dyn Discovery>>, https: bool) -> Self {
        Locator { routes, dns, https }
    }

    /// The endpoints of `domain`, best first.
    pub async fn endpoints(&self, domain: &str) -> Result<Vec<Endpoint>, LookupError> {
        self.endpoints_via(domain, None).await
    }

    /// [`Locator::endpoints`], with `domain`'s SRV answer when the caller has it already (the
    /// prefix TXT record is still looked up: it is XHMTP's own).
    pub async fn endpoints_via(
        &self,
        domain: &str,
        found: Option<&[SrvTarget]>,
    ) -> Result<Vec<Endpoint>, LookupError> {
        let routes: Vec<Endpoint> = self
            .routes
            .iter()
            .filter(|r| r.domain.eq_ignore_ascii_case(domain))
            .map(|r| Endpoint {
                host: r.host.clone(),
                port: r.port,
                https: r.https,
                prefix: r.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into()),
            })
            .collect();
        if !routes.is_empty() {
            return Ok(routes);
        }
        let Some(dns) = &self.dns else {
            return Err(LookupError::NoRoute(domain.to_owned()));
        };
        let targets = match found {
            Some(srv) => mailgate_core::discovery::order(srv.to_vec()),
            None => dns.srv("xhmtp", domain).await.map_err(LookupError::Dns)?,
        };
        if targets.is_empty() {
            return Err(LookupError::NoRoute(domain.to_owned()));
        }
        let prefix = dns
            .txt(&format!("_prefix._xhmtp.{domain}"))
            .await
            .map_err(LookupError::Dns)?
            .into_iter()
            .map(|t| t.trim().trim_matches('/').to_owned())
            .find(|t| valid_prefix(t))
            .unwrap_or_else(|| DEFAULT_PREFIX.into());
        Ok(targets
            .into_iter()
            .map(|t| Endpoint {
                host: t.host,
                port: t.port,
                https: self.https,
                prefix: prefix.clone(),
            })
            .collect())
    }

    /// May a message hosted on `host` be from `domain`? Yes when `host` is the domain itself
    /// or one of its XHMTP servers (a static route, or a target of its `_xhmtp._tcp` SRV
    /// records). `Err` when the SRV look-up failed (try again later).
    pub async fn hosts_domain(&self, host: &str, domain: &str) -> Result<bool, String> {
        let host = host.trim_end_matches('.');
        if host.eq_ignore_ascii_case(domain) {
            return Ok(true);
        }
        match self.endpoints(domain).await {
            Ok(eps) => Ok(eps.iter().any(|e| e.host.eq_ignore_ascii_case(host))),
            Err(LookupError::NoRoute(_)) => Ok(false),
            Err(LookupError::Dns(e)) => Err(e),
        }
    }

    /// The addresses of `host` (itself when it is an address literal).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        host_addresses(self.dns.as_ref(), host).await
    }

    /// The notifier check: is `peer` among the A/AAAA addresses of `host`?
    pub async fn host_has(&self, host: &str, peer: IpAddr) -> Result<bool, String> {
        let peer = canonical(peer);
        Ok(self
            .addresses(host)
            .await?
            .into_iter()
            .any(|a| canonical(a) == peer))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
