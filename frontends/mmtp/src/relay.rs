//! The MMTP relay transport: delivers a queued message to another domain's MMTP server with
//! SEND, as an unauthenticated peer with a HashCash stamp at that server's difficulty.
//!
//! A message that arrived over MMTP for this very recipient goes out as the exact packet it
//! arrived as (its stamp, content hash and signature unchanged, so a sender's signature still
//! verifies at the far end); if the far end wants a harder stamp than the packet carries, the
//! packet is rebuilt from the stored fields with a new stamp (the signature travels along).
//! Anything else is built from the model by [`PacketBuilder::from_message`].

use crate::client::{ClientError, PacketBuilder};
use crate::peers::{MmtpPeers, PeerError};
use async_trait::async_trait;
use mailgate_core::relay::{Route, Transport, TransportError};
use mailgate_core::store::QueueEntry;
use mailgate_core::{Address, Message};
use std::sync::Arc;

/// The MMTP relay transport.
pub struct MmtpTransport {
    peers: Arc<MmtpPeers>,
}

impl MmtpTransport {
    /// Deliver to the servers `peers` finds.
    pub fn new(peers: Arc<MmtpPeers>) -> Self {
        MmtpTransport { peers }
    }
}

fn transport_error(e: PeerError) -> TransportError {
    match e {
        PeerError::NoServer(m) => TransportError::Permanent(m),
        PeerError::Temporary(m) => TransportError::Temporary(m),
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

    async fn deliver(
        &self,
        route: &Route,
        entry: &QueueEntry,
        message: &Message,
    ) -> Result<(), TransportError> {
        let mut last = TransportError::Temporary("no MMTP server answered".into());
        let targets = self
            .peers
            .targets_via(&entry.recipient.domain, route.srv.as_deref())
            .await
            .map_err(transport_error)?;
        for target in targets {
            let mut client = match self.peers.connect(&target).await {
                Ok(c) => c,
                Err(e) => {
                    last = transport_error(e);
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
