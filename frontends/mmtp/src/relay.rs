//! The MMTP relay transport: delivers a queued message to another domain's MMTP server with
//! SEND, as an unauthenticated peer with a HashCash stamp at that server's difficulty.
//!
//! A message that arrived over MMTP for this very recipient goes out as the exact packet it
//! arrived as (its stamp, content hash and signature unchanged, so a sender's signature still
//! verifies at the far end); if the far end wants a harder stamp than the packet carries, the
//! packet is rebuilt from the stored fields with a new stamp (the signature travels along).
//! Anything else is built from the model by [`PacketBuilder::from_message`].

use crate::client::{ClientError, MmtpClient, PacketBuilder};
use async_trait::async_trait;
use mailgate_core::discovery::{host_addresses, Discovery};
use mailgate_core::relay::{Transport, TransportError};
use mailgate_core::store::QueueEntry;
use mailgate_core::{Address, Message};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// A static MMTP peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmtpRoute {
    /// The remote domain.
    pub domain: String,
    /// Host name or address of its server.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Connect with TLS (verified for `host`).
    pub tls: bool,
}

/// The MMTP relay transport.
pub struct MmtpTransport {
    routes: Vec<MmtpRoute>,
    dns: Option<Arc<dyn Discovery>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    dns_tls: bool,
}

/// One place to connect to.
struct Target {
    address: SocketAddr,
    host: String,
    tls: bool,
}

impl MmtpTransport {
    /// Static `routes` first, then SRV `_mmtp._tcp.<domain>` through `dns` (TLS when
    /// `dns_tls`); TLS peers are verified against `tls`.
    pub fn new(
        routes: Vec<MmtpRoute>,
        dns: Option<Arc<dyn Discovery>>,
        tls: Option<Arc<rustls::ClientConfig>>,
        dns_tls: bool,
    ) -> Self {
        MmtpTransport {
            routes,
            dns,
            tls,
            dns_tls,
        }
    }

    async fn resolve(&self, host: &str) -> Result<Vec<std::net::IpAddr>, TransportError> {
        host_addresses(self.dns.as_ref(), host)
            .await
            .map_err(TransportError::Temporary)
    }

    async fn targets(&self, domain: &str) -> Result<Vec<Target>, TransportError> {
        let mut hosts: Vec<(String, u16, bool)> = self
            .routes
            .iter()
            .filter(|r| r.domain.eq_ignore_ascii_case(domain))
            .map(|r| (r.host.clone(), r.port, r.tls))
            .collect();
        if hosts.is_empty() {
            let dns = self
                .dns
                .as_ref()
                .ok_or_else(|| TransportError::Permanent(format!("no MMTP route to {domain}")))?;
            let srv = dns
                .srv("mmtp", domain)
                .await
                .map_err(TransportError::Temporary)?;
            if srv.is_empty() {
                return Err(TransportError::Permanent(format!(
                    "no MMTP server for {domain} (no route, no _mmtp._tcp SRV record)"
                )));
            }
            hosts = srv
                .into_iter()
                .map(|t| (t.host, t.port, self.dns_tls))
                .collect();
        }
        let mut out = Vec::new();
        for (host, port, tls) in hosts {
            for ip in self.resolve(&host).await? {
                out.push(Target {
                    address: SocketAddr::new(ip, port),
                    host: host.clone(),
                    tls,
                });
            }
        }
        Ok(out)
    }

    async fn connect(&self, t: &Target) -> Result<MmtpClient, TransportError> {
        let tls = if t.tls {
            let config = self.tls.clone().ok_or_else(|| {
                TransportError::Temporary("TLS to MMTP peers needs [tls] trust".into())
            })?;
            let name = ServerName::try_from(t.host.clone())
                .map_err(|e| TransportError::Permanent(format!("TLS name {}: {e}", t.host)))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        MmtpClient::connect(&t.address.to_string(), tls)
            .await
            .map_err(|e| TransportError::Temporary(format!("{}: {e}", t.address)))
    }
}

/// The packet as it arrived, when it arrived over MMTP for `recipient`.
fn original_packet(message: &Message, recipient: &Address) -> Option<String> {
    let wire = message.wire.as_ref().filter(|w| w.protocol == "mmtp")?;
    let same = message.recipients.len() == 1 && message.recipients[0].same_account(recipient);
    same.then(|| String::from_utf8_lossy(&wire.bytes).into_owned())
}

async fn build(
    message: &Message,
    recipient: &Address,
    difficulty: u32,
) -> Result<String, TransportError> {
    let builder = PacketBuilder::from_message(message, recipient.clone());
    tokio::task::spawn_blocking(move || builder.build(difficulty))
        .await
        .map_err(|e| TransportError::Temporary(format!("minting: {e}")))?
        .map(|b| b.text)
        .map_err(|e| TransportError::Permanent(format!("building the packet: {e}")))
}

fn classify(e: ClientError) -> TransportError {
    match e {
        ClientError::Refused(text) => {
            let lower = text.to_ascii_lowercase();
            if lower.contains("temporary") || lower.contains("rate limit") {
                TransportError::Temporary(text)
            } else {
                TransportError::Permanent(format!("refused: {text}"))
            }
        }
        other => TransportError::Temporary(other.to_string()),
    }
}

#[async_trait]
impl Transport for MmtpTransport {
    fn protocol(&self) -> &'static str {
        "mmtp"
    }

    async fn deliver(&self, entry: &QueueEntry, message: &Message) -> Result<(), TransportError> {
        let mut last = TransportError::Temporary("no MMTP server answered".into());
        for target in self.targets(&entry.recipient.domain).await? {
            let mut client = match self.connect(&target).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let difficulty = client.difficulty();
            let packet = match original_packet(message, &entry.recipient) {
                Some(p) => p,
                None => build(message, &entry.recipient, difficulty).await?,
            };
            return match client.send(&packet).await {
                Ok(_) => Ok(()),
                // The original stamp is not enough there: mint one it accepts.
                Err(ClientError::Refused(text))
                    if text.to_ascii_lowercase().contains("hashcash")
                        && original_packet(message, &entry.recipient).is_some() =>
                {
                    let packet = build(message, &entry.recipient, difficulty).await?;
                    client.send(&packet).await.map(|_| ()).map_err(classify)
                }
                Err(e) => Err(classify(e)),
            };
        }
        Err(last)
    }
}
