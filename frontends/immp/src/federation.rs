//! Server-to-server IMMP: cookies, routes to other domains' IMMP servers, and the relay
//! transport that delivers queued mail with AUTH COOKIE.
//!
//! A server that wants to deliver to domain B issues a cookie bound to B (random 128 bits,
//! single-use, 5 minutes), connects to B's IMMP server and says `AUTH COOKIE <cookie> <own
//! domain>`. B finds the issuer's server, connects back and asks `COOKIE CHECK <cookie> <B>`;
//! the issuer answers 211 only for a live cookie it issued for B. Then B treats the connection
//! as Remotely Authenticated for the issuer's domain.

use crate::client::{ClientError, ImmpClient};
use async_trait::async_trait;
use mailgate_core::message::now_ms;
use mailgate_core::relay::{Transport, TransportError};
use mailgate_core::store::QueueEntry;
use mailgate_core::{Core, Message, StoreError};
use serde::{Deserialize, Serialize};
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

/// Routes and TLS trust for talking to other IMMP servers.
#[derive(Clone, Default)]
pub struct Federation {
    routes: Vec<ImmpRoute>,
    tls: Option<Arc<ClientConfig>>,
}

impl Federation {
    /// Static routes, and the TLS configuration whose roots verify remote servers (`None`: no
    /// trust anchors configured, so no remote server can be verified).
    pub fn new(routes: Vec<ImmpRoute>, tls: Option<Arc<ClientConfig>>) -> Self {
        Federation { routes, tls }
    }

    /// Connect (and upgrade to verified TLS) to `domain`'s IMMP server.
    pub async fn connect(&self, domain: &str) -> Result<ImmpClient, String> {
        let route = self
            .routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(domain))
            .ok_or_else(|| format!("no IMMP route to {domain}"))?;
        let tls = self
            .tls
            .clone()
            .ok_or_else(|| "no TLS trust anchors configured (tls.trust)".to_owned())?;
        let name = route
            .server_name
            .clone()
            .unwrap_or_else(|| domain.to_owned());
        let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
        ImmpClient::connect(&route.address, TlsConnector::from(tls), name)
            .await
            .map_err(|e| format!("{domain}: {e}"))
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

    async fn deliver(&self, entry: &QueueEntry, message: &Message) -> Result<(), TransportError> {
        let target = &entry.recipient.domain;
        let mut client = self
            .federation
            .connect(target)
            .await
            .map_err(TransportError::Temporary)?;
        let cookie = issue_cookie(&self.core, target)
            .await
            .map_err(|e| TransportError::Temporary(e.to_string()))?;
        let temporary = |e: ClientError| TransportError::Temporary(e.to_string());
        client
            .auth_cookie(&cookie, &self.domain)
            .await
            .map_err(temporary)?;
        let result = client
            .deliver(
                std::slice::from_ref(&entry.recipient),
                &message.subject,
                &message.parts,
                message.importance,
            )
            .await;
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
