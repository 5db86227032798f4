//! Server-to-server IMMP: cookies, routes to other domains' IMMP servers, and the relay
//! transport that delivers queued mail with AUTH COOKIE.
//!
//! A server that wants to deliver to domain B issues a cookie bound to B (random 128 bits,
//! single-use, 5 minutes), connects to B's IMMP server and says `AUTH COOKIE <cookie> <own
//! domain>`. B finds the issuer's server, connects back and asks `COOKIE CHECK <cookie> <B>`;
//! the issuer answers 211 only for a live cookie it issued for B. Then B treats the connection
//! as Remotely Authenticated for the issuer's domain.

use crate::client::{ClientError, ImmpClient};
use crate::envelope::Envelope;
use async_trait::async_trait;
use mailgate_core::destinations::Destinations;
use mailgate_core::discovery::{Discovery, SrvTarget};
use mailgate_core::message::now_ms;
use mailgate_core::relay::{Route, Transport, TransportError};
use mailgate_core::store::QueueEntry;
use mailgate_core::{Core, Message, MessageKind, StoreError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// Token kind of issued cookies.
pub const COOKIE_KIND: &str = "immp.cookie";
/// How long an issued cookie is valid.
pub const COOKIE_LIFETIME_MS: i64 = 5 * 60 * 1000;

/// `[[immp.routes]]`: where another domain's IMMP server is (until DNS discovery finds it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImmpRoute {
    /// The remote domain.
    pub domain: String,
    /// Its IMMP server, `host:port`.
    pub address: String,
    /// TLS name to verify (default: the domain).
    pub server_name: Option<String>,
}

/// Issue a cookie for delivering to `target` domain.
pub async fn issue_cookie(core: &Core, target: &str) -> Result<String, StoreError> {
    let cookie = hex::encode(rand::random::<[u8; 16]>());
    core.store
        .put_token(
            COOKIE_KIND,
            &cookie,
            target.to_ascii_lowercase().as_bytes(),
            now_ms() + COOKIE_LIFETIME_MS,
        )
        .await?;
    Ok(cookie)
}

/// Take a cookie: true when it is live and was issued for `domain` (it is gone either way).
pub async fn check_cookie(core: &Core, cookie: &str, domain: &str) -> Result<bool, StoreError> {
    if cookie.len() > 128 {
        return Ok(false);
    }
    let issued = core.store.take_token(COOKIE_KIND, cookie, now_ms()).await?;
    Ok(issued.is_some_and(|d| d.eq_ignore_ascii_case(domain.as_bytes())))
}

/// Routes, DNS discovery and TLS trust for talking to other IMMP servers.
#[derive(Clone, Default)]
pub struct Federation {
    routes: Vec<ImmpRoute>,
    tls: Option<Arc<ClientConfig>>,
    discovery: Option<Arc<dyn Discovery>>,
}

impl Federation {
    /// Static routes, and the TLS configuration whose roots verify remote servers (`None`: no
    /// trust anchors configured, so no remote server can be verified).
    pub fn new(routes: Vec<ImmpRoute>, tls: Option<Arc<ClientConfig>>) -> Self {
        Federation {
            routes,
            tls,
            discovery: None,
        }
    }

    /// Find domains without a static route by DNS SRV (`_immp._tcp.<domain>`).
    pub fn with_discovery(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Where `domain`'s IMMP server is: `(address, TLS name)` candidates, best first — the
    /// static route, else the SRV targets (`found`, when the caller has them, else looked up;
    /// certificates are checked for the target host).
    async fn candidates(
        &self,
        domain: &str,
        found: Option<&[SrvTarget]>,
    ) -> Result<Vec<(String, String)>, String> {
        if let Some(route) = self
            .routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(domain))
        {
            let name = route
                .server_name
                .clone()
                .unwrap_or_else(|| domain.to_owned());
            return Ok(vec![(route.address.clone(), name)]);
        }
        let discovery = self
            .discovery
            .as_ref()
            .ok_or_else(|| format!("no IMMP route to {domain}"))?;
        let targets = match found {
            Some(srv) => srv.to_vec(),
            None => discovery.srv("immp", domain).await?,
        };
        let targets = mailgate_core::discovery::order(targets);
        if targets.is_empty() {
            return Err(format!(
                "no IMMP route to {domain} (no _immp._tcp SRV record)"
            ));
        }
        let mut out = Vec::new();
        for t in targets {
            match discovery.addresses(&t.host).await {
                Ok(ips) => out.extend(
                    ips.into_iter()
                        .map(|ip| (SocketAddr::new(ip, t.port).to_string(), t.host.clone())),
                ),
                Err(e) => {
                    tracing::debug!(host = %t.host, error = %e, "SRV target does not resolve")
                }
            }
        }
        if out.is_empty() {
            return Err(format!("no IMMP server of {domain} resolves"));
        }
        Ok(out)
    }

    /// Connect to `domain`'s IMMP server and authenticate there with a cookie of ours.
    pub async fn connect_as(
        &self,
        core: &Core,
        own: &str,
        domain: &str,
    ) -> Result<ImmpClient, String> {
        let mut client = self.connect(domain).await?;
        let server = client.server_domain().unwrap_or(domain).to_owned();
        let cookie = issue_cookie(core, &server)
            .await
            .map_err(|e| e.to_string())?;
        client
            .auth_cookie(&cookie, own)
            .await
            .map_err(|e| format!("{domain}: {e}"))?;
        Ok(client)
    }

    /// Connect (and upgrade to verified TLS) to `domain`'s IMMP server, trying each candidate.
    pub async fn connect(&self, domain: &str) -> Result<ImmpClient, String> {
        self.connect_within(domain, &Destinations::default()).await
    }

    /// [`Federation::connect`] to the servers the relay's route choice found.
    pub async fn connect_routed(&self, domain: &str, route: &Route) -> Result<ImmpClient, String> {
        self.connect_to(domain, &Destinations::default(), route.srv.as_deref())
            .await
    }

    /// [`Federation::connect`] for a connection a stranger triggered (an AUTH COOKIE
    /// call-back): candidates found in DNS at a denied address are skipped.
    pub async fn connect_within(
        &self,
        domain: &str,
        allowed: &Destinations,
    ) -> Result<ImmpClient, String> {
        self.connect_to(domain, allowed, None).await
    }

    async fn connect_to(
        &self,
        domain: &str,
        allowed: &Destinations,
        found: Option<&[SrvTarget]>,
    ) -> Result<ImmpClient, String> {
        let tls = self
            .tls
            .clone()
            .ok_or_else(|| "no TLS trust anchors configured (tls.trust)".to_owned())?;
        let mut last = format!("no allowed address for {domain}");
        for (address, name) in self.candidates(domain, found).await? {
            if let Ok(sa) = address.parse::<SocketAddr>() {
                if !allowed.allowed(sa.ip()) {
                    tracing::info!(%domain, %address, "immp: call-back address is in the outbound deny list");
                    last = format!("{domain} at {address}: address in the outbound deny list");
                    continue;
                }
            }
            let Ok(server_name) = ServerName::try_from(name.clone()) else {
                last = format!("{name:?} is not a valid TLS name");
                continue;
            };
            match ImmpClient::connect(&address, TlsConnector::from(tls.clone()), server_name).await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = format!("{domain} at {address}: {e}"),
            }
        }
        Err(last)
    }
}

/// Relays queued mail over IMMP: cookie, AUTH COOKIE, DELIVER.
pub struct ImmpTransport {
    core: Arc<Core>,
    domain: String,
    federation: Federation,
}

impl ImmpTransport {
    /// A transport for the gateway whose own domain is `domain`.
    pub fn new(core: Arc<Core>, domain: String, federation: Federation) -> Self {
        ImmpTransport {
            core,
            domain,
            federation,
        }
    }
}

#[async_trait]
impl Transport for ImmpTransport {
    fn protocol(&self) -> &'static str {
        "immp"
    }

    async fn deliver(
        &self,
        route: &Route,
        entry: &QueueEntry,
        message: &Message,
    ) -> Result<(), TransportError> {
        let target = &entry.recipient.domain;
        let mut client = self
            .federation
            .connect_routed(target, route)
            .await
            .map_err(TransportError::Temporary)?;
        // The cookie is for the server we talk to: the domain its greeting names (one server
        // may hold several domains), else the recipient's.
        let server = client.server_domain().unwrap_or(target).to_owned();
        let cookie = issue_cookie(&self.core, &server)
            .await
            .map_err(|e| TransportError::Temporary(e.to_string()))?;
        let temporary = |e: ClientError| TransportError::Temporary(e.to_string());
        client
            .auth_cookie(&cookie, &self.domain)
            .await
            .map_err(temporary)?;
        let result = match (message.kind, message.content_part()) {
            // A push published here goes out as a PUSH from its node.
            (MessageKind::Push, Some(part)) => client
                .push(&entry.recipient, &message.sender, part, message.importance)
                .await
                .map(|()| String::new()),
            _ => {
                client
                    .deliver_with(
                        std::slice::from_ref(&entry.recipient),
                        &message.subject,
                        &message.parts,
                        message.importance,
                        Some(&Envelope::of(message)),
                    )
                    .await
            }
        };
        client.quit().await;
        match result {
            Ok(_) => Ok(()),
            // 4xx from the remote server: it will not take this message.
            Err(ClientError::Refused(text)) if text.starts_with('4') => {
                Err(TransportError::Permanent(text))
            }
            Err(e) => Err(temporary(e)),
        }
    }
}
