//! Relay workers: claim due outbound queue entries and hand them to the transport of their
//! protocol; record delivered / retry with backoff / failed. Also the store's housekeeping
//! (expired tokens and stamps).
//!
//! The transports (MMTP, IMMP, XHMTP clients) and route discovery are added by the bridging
//! issue; until a transport is registered, entries wait and are retried with backoff, and fail
//! once they are older than `relay.max_age_secs`.

use crate::config::RelayConfig;
use mailgate_core::message::now_ms;
use mailgate_core::message::rfc3339;
use mailgate_core::relay::{Backoff, Transport, TransportError};
use mailgate_core::store::{LocalDelivery, QueueEntry, RelayOutcome, Submission};
use mailgate_core::Core;
use mailgate_core::{Address, Message};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The local part bounces come from (`mailer-daemon@<first domain>`).
pub const BOUNCE_SENDER: &str = "mailer-daemon";

/// How long a claimed entry stays leased to a worker before another may take it.
const LEASE_MS: i64 = 10 * 60 * 1000;

/// The relay worker pool.
pub struct Relay {
    core: Arc<Core>,
    transports: Vec<Arc<dyn Transport>>,
    config: RelayConfig,
    backoff: Backoff,
    domain: String,
}

impl Relay {
    /// A pool over `core` with the given transports (in preference order); bounces come from
    /// `mailer-daemon@<domain>`.
    pub fn new(
        core: Arc<Core>,
        transports: Vec<Arc<dyn Transport>>,
        config: RelayConfig,
        domain: &str,
    ) -> Self {
        let backoff = config.backoff();
        Relay {
            core,
            transports,
            config,
            backoff,
            domain: domain.to_owned(),
        }
    }

    /// Poll the queue until `shutdown` fires.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let mut last_purge = 0i64;
        loop {
            let now = now_ms();
            if now - last_purge > 60_000 {
                last_purge = now;
                if let Err(e) = self.core.store.purge_expired(now).await {
                    tracing::warn!(error = %e, "purging expired tokens failed");
                }
            }
            match self
                .core
                .store
                .claim_due(now, self.config.workers as u32, LEASE_MS)
                .await
            {
                Ok(entries) => {
                    let attempts = entries.into_iter().map(|e| {
                        let this = self.clone();
                        async move { this.attempt(e).await }
                    });
                    futures_util::future::join_all(attempts).await;
                }
                Err(e) => tracing::warn!(error = %e, "claiming queue entries failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    fn transport_for(&self, entry: &QueueEntry) -> Option<&Arc<dyn Transport>> {
        // The protocol the message arrived in when there is a transport for it; otherwise
        // the first transport (the preference order).
        entry
            .protocol
            .as_deref()
            .and_then(|p| self.transports.iter().find(|t| t.protocol() == p))
            .or_else(|| self.transports.first())
    }

    async fn attempt(&self, entry: QueueEntry) {
        let now = now_ms();
        let transport = self.transport_for(&entry);
        let protocol = transport.map_or("none", |t| t.protocol());
        let message = self.core.store.message(entry.message).await;
        let result = match (transport, &message) {
            (_, Err(e)) => Err(TransportError::Temporary(format!("store: {e}"))),
            (_, Ok(None)) => Err(TransportError::Permanent("message no longer stored".into())),
            (None, Ok(Some(_))) => Err(TransportError::Temporary(format!(
                "no outbound transport available for {}",
                entry.recipient.domain
            ))),
            (Some(t), Ok(Some(message))) => t.deliver(&entry, message).await,
        };
        let too_old = now - entry.created_at > (self.config.max_age_secs * 1000) as i64;
        let give_up = match result {
            Ok(()) => None,
            Err(TransportError::Permanent(error)) => Some(error),
            Err(TransportError::Temporary(error)) if too_old => Some(format!(
                "gave up after {} attempts: {error}",
                entry.attempts + 1
            )),
            Err(TransportError::Temporary(error)) => {
                let next_attempt = now + self.backoff.delay_ms(entry.attempts);
                self.finish(
                    &entry,
                    protocol,
                    RelayOutcome::Retry {
                        next_attempt,
                        error,
                    },
                )
                .await;
                return;
            }
        };
        let outcome = match give_up {
            None => RelayOutcome::Delivered,
            Some(error) => {
                let bounce = match &message {
                    Ok(Some(m)) => self.bounce(m, &entry, protocol, &error).await,
                    _ => None,
                };
                RelayOutcome::Failed { error, bounce }
            }
        };
        self.finish(&entry, protocol, outcome).await;
    }

    async fn finish(&self, entry: &QueueEntry, protocol: &str, outcome: RelayOutcome) {
        let label = match &outcome {
            RelayOutcome::Delivered => "delivered",
            RelayOutcome::Retry { .. } => "retry",
            RelayOutcome::Failed {
                bounce: Some(_), ..
            } => "bounced",
            RelayOutcome::Failed { bounce: None, .. } => "failed",
        };
        self.core.metrics.event(&format!("relay_{protocol}"), label);
        tracing::info!(queue_id = entry.id, recipient = %entry.recipient, protocol, outcome = label, "relay attempt");
        if let Err(e) = self.core.store.finish_relay(entry.id, outcome).await {
            tracing::warn!(queue_id = entry.id, error = %e, "recording relay outcome failed");
        }
    }

    /// The delivery-status message for the sender of `message` (a local account; none for
    /// mail from the gateway itself, so bounces never bounce).
    async fn bounce(
        &self,
        message: &Message,
        entry: &QueueEntry,
        protocol: &str,
        error: &str,
    ) -> Option<Box<Submission>> {
        let sender = &message.sender;
        if !self.core.policy.is_local(&sender.domain) || sender.local == BOUNCE_SENDER {
            return None;
        }
        let account = match self.core.store.account(sender).await {
            Ok(Some(a)) => a.id,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "bounce: cannot look up the sender");
                return None;
            }
        };
        let daemon = Address::new(BOUNCE_SENDER, &self.domain).ok()?;
        let body = format!(
            "Your message could not be delivered.\n\n\
             Recipient: {}\n\
             Protocol: {protocol}\n\
             Attempts: {}\n\
             Last error: {error}\n\
             Message id: {}\n\
             Subject: {}\n\
             Accepted: {}\n",
            entry.recipient,
            entry.attempts + 1,
            message.id,
            message.subject,
            rfc3339(message.received_at),
        );
        let mut dsn = Message::new(
            daemon,
            vec![sender.account()],
            format!("Undeliverable: {}", message.subject),
            body,
        );
        dsn.tags.status.push("delivery-status".into());
        Some(Box::new(Submission {
            message: dsn,
            deliveries: vec![LocalDelivery {
                account,
                folder: "INBOX".into(),
            }],
            relays: Vec::new(),
            stamp: None,
        }))
    }
}
