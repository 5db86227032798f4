//! The SMTP relay transport: delivers a queued message to another domain's mail exchangers.
//!
//! Where: a static `[[route]] protocol = "smtp"` (its host and port; `tls = true` requires
//! verified STARTTLS), else the MX hosts the route choice found (in preference order, every
//! address of every host tried; no MX: the domain itself), on port 25 unless configured.
//! How: EHLO, STARTTLS whenever offered — verified against `[tls] trust` when `[smtp]
//! require_tls` or the route asks for it, otherwise opportunistic (RFC 7435: encrypted, the
//! certificate not checked; a failed handshake falls back to plain text) — then one pipelined
//! transaction. What: mail that arrived over SMTP goes out as the bytes it arrived as
//! (with the `Received` field this gateway added); anything else is rendered with
//! [`crate::render`]. Mail from a local domain is DKIM-signed with that domain's key.
//! Outcome: `5xx` from a server is final (bounce); `4xx`, time-outs and connection failures
//! move on to the next server and, when all fail, retry later with the relay's backoff.

use crate::client::{ClientError, SmtpClient};
use crate::dkim::DkimKeys;
use crate::mime::WIRE_PROTOCOL;
use async_trait::async_trait;
use mailgate_core::address::MAILER_DAEMON;
use mailgate_core::discovery::{host_addresses, Discovery};
use mailgate_core::relay::{Route, Transport, TransportError};
use mailgate_core::store::QueueEntry;
use mailgate_core::{Address, Message};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// A static SMTP route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpRoute {
    /// The remote domain.
    pub domain: String,
    /// Host name or address of its server.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Require STARTTLS with a certificate verified for `host`.
    pub tls: bool,
}

/// How the transport connects.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The name said in EHLO (this gateway's host name).
    pub hostname: String,
    /// The port of MX targets (25).
    pub mx_port: u16,
    /// Require verified STARTTLS for every delivery.
    pub require_tls: bool,
    /// Longest wait for a connection and for each reply.
    pub timeout: Duration,
    /// The local domains: mail from them is DKIM-signed.
    pub local_domains: Vec<String>,
}

/// The SMTP relay transport.
pub struct SmtpTransport {
    routes: Vec<SmtpRoute>,
    dns: Option<Arc<dyn Discovery>>,
    verified: Option<TlsConnector>,
    opportunistic: TlsConnector,
    dkim: Arc<DkimKeys>,
    settings: RelaySettings,
}

/// One server to try.
struct Target {
    host: String,
    port: u16,
    require_tls: bool,
}

impl SmtpTransport {
    /// A transport with static `routes`, resolving MX hosts through `dns`, verifying TLS
    /// against `trust` where required, signing with `dkim`.
    pub fn new(
        routes: Vec<SmtpRoute>,
        dns: Option<Arc<dyn Discovery>>,
        trust: Option<Arc<rustls::ClientConfig>>,
        dkim: Arc<DkimKeys>,
        settings: RelaySettings,
    ) -> Self {
        SmtpTransport {
            routes,
            dns,
            verified: trust.map(TlsConnector::from),
            opportunistic: TlsConnector::from(opportunistic_config()),
            dkim,
            settings,
        }
    }

    fn targets(&self, route: &Route, domain: &str) -> Result<Vec<Target>, TransportError> {
        let statics: Vec<Target> = self
            .routes
            .iter()
            .filter(|r| r.domain.eq_ignore_ascii_case(domain))
            .map(|r| Target {
                host: r.host.clone(),
                port: r.port,
                require_tls: r.tls || self.settings.require_tls,
            })
            .collect();
        if !statics.is_empty() {
            return Ok(statics);
        }
        let mx = route.srv.as_deref().unwrap_or_default();
        if mx.is_empty() {
            return Err(TransportError::Permanent(format!(
                "no SMTP server for {domain}"
            )));
        }
        Ok(mx
            .iter()
            .map(|t| Target {
                host: t.host.clone(),
                port: self.settings.mx_port,
                require_tls: self.settings.require_tls,
            })
            .collect())
    }

    /// The data to send: the original bytes of SMTP mail, else the rendering; DKIM-signed
    /// when the sender's domain is local.
    async fn data(
        &self,
        message: &Message,
        recipient: &Address,
    ) -> Result<Vec<u8>, TransportError> {
        let raw = match message
            .wire
            .as_ref()
            .filter(|w| w.protocol == WIRE_PROTOCOL)
        {
            Some(wire) => wire.bytes.to_vec(),
            None => crate::render::to_mime(message, recipient),
        };
        let domain = &message.sender.domain;
        if !self
            .settings
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
        {
            return Ok(raw);
        }
        self.dkim
            .sign(domain, raw)
            .await
            .map_err(|e| TransportError::Temporary(e.to_string()))
    }

    /// One session with the server at `address`: EHLO, STARTTLS, the transaction.
    async fn session(
        &self,
        target: &Target,
        address: SocketAddr,
        plain_only: bool,
        envelope: (&str, &str),
        data: &[u8],
    ) -> Result<(), Attempt> {
        let timeout = self.settings.timeout;
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| Attempt::Failed(format!("{address}: no connection within {timeout:?}")))?
            .map_err(|e| Attempt::Failed(format!("{address}: {e}")))?;
        let at = |e: ClientError| Attempt::from_client(address, e);
        let mut client = SmtpClient::start(Box::new(tcp), &self.settings.hostname, timeout)
            .await
            .map_err(at)?;
        if target.require_tls || (!plain_only && client.offers("STARTTLS")) {
            if !client.offers("STARTTLS") {
                return Err(Attempt::Failed(format!(
                    "{address}: STARTTLS is required and not offered"
                )));
            }
            let connector = if target.require_tls {
                self.verified
                    .as_ref()
                    .ok_or_else(|| Attempt::Failed("verified TLS needs [tls] trust".to_owned()))?
            } else {
                &self.opportunistic
            };
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| Attempt::Failed(format!("TLS name {}: {e}", target.host)))?;
            client = match client.starttls(connector, name).await {
                Ok(c) => c,
                Err(ClientError::Tls(e)) if !target.require_tls => {
                    return Err(Attempt::TlsFailed(format!("{address}: TLS: {e}")))
                }
                Err(e) => return Err(at(e)),
            };
        }
        let (from, to) = envelope;
        let mut params = String::new();
        if client.offers("SIZE") {
            params.push_str(&format!(" SIZE={}", data.len()));
        }
        if client.offers("8BITMIME") && data.iter().any(|b| *b >= 0x80) {
            params.push_str(" BODY=8BITMIME");
        }
        if let Some(limit) = client.size_limit() {
            if data.len() as u64 > limit {
                return Err(Attempt::Refused(format!(
                    "{address}: the message ({} bytes) is larger than the server takes ({limit})",
                    data.len()
                )));
            }
        }
        client
            .send_with(from, &params, &[to], data)
            .await
            .map_err(at)?;
        client.quit().await;
        Ok(())
    }
}

/// How one session ended, when it did not deliver.
enum Attempt {
    /// A `5xx`: final.
    Refused(String),
    /// Anything else: the next server may do.
    Failed(String),
    /// The opportunistic TLS handshake failed: the same server, in plain text, may do.
    TlsFailed(String),
}

impl Attempt {
    fn from_client(address: SocketAddr, e: ClientError) -> Attempt {
        if e.is_permanent() {
            Attempt::Refused(format!("{address}: {e}"))
        } else {
            Attempt::Failed(format!("{address}: {e}"))
        }
    }
}

#[async_trait]
impl Transport for SmtpTransport {
    fn protocol(&self) -> &'static str {
        "smtp"
    }

    async fn deliver(
        &self,
        route: &Route,
        entry: &QueueEntry,
        message: &Message,
    ) -> Result<(), TransportError> {
        let targets = self.targets(route, &entry.recipient.domain)?;
        let data = self.data(message, &entry.recipient).await?;
        // A report from the gateway goes with the null reverse-path, so it never bounces.
        let from = if message.sender.local == MAILER_DAEMON {
            String::new()
        } else {
            message.sender.to_string()
        };
        let to = entry.recipient.to_string();
        let mut last = format!("no SMTP server of {} answered", entry.recipient.domain);
        for target in &targets {
            let addresses = match host_addresses(self.dns.as_ref(), &target.host).await {
                Ok(a) if a.is_empty() => {
                    last = format!("{} has no address", target.host);
                    continue;
                }
                Ok(a) => a,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            for ip in addresses {
                let address = SocketAddr::new(ip, target.port);
                let mut outcome = self
                    .session(target, address, false, (&from, &to), &data)
                    .await;
                if let Err(Attempt::TlsFailed(e)) = &outcome {
                    tracing::info!(%address, error = %e, "opportunistic TLS failed; delivering in plain text");
                    outcome = self
                        .session(target, address, true, (&from, &to), &data)
                        .await;
                }
                match outcome {
                    Ok(()) => return Ok(()),
                    Err(Attempt::Refused(e)) => return Err(TransportError::Permanent(e)),
                    Err(Attempt::Failed(e) | Attempt::TlsFailed(e)) => last = e,
                }
            }
        }
        Err(TransportError::Temporary(last))
    }
}

/// A client configuration for opportunistic TLS: any certificate is taken (the point is
/// encryption against passive eavesdroppers; RFC 7435), the handshake signatures are still
/// checked.
fn opportunistic_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(c) => Arc::new(c),
        // The ring provider supports the default versions; this cannot fail.
        Err(_) => Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
}

/// Takes any server certificate (opportunistic TLS only).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
