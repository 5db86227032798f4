//! Relay workers: claim due outbound queue entries, choose each domain's protocol
//! ([`RouteChooser`]), hand the entry to that protocol's transport (MMTP, IMMP, XHMTP) with at
//! most `relay.per_domain` deliveries per domain in flight, and record the outcome: delivered,
//! retry with backoff and jitter, or failed with a bounce to the sender's INBOX (permanent
//! errors, and entries older than `relay.max_age_secs`). Also the store's housekeeping
//! (expired tokens and stamps).
//!
//! Delivery is at least once: an entry is marked done only after the far end accepted it, and a
//! lease that runs out (a crash mid-delivery) makes it due again; receiving gateways drop the
//! repeat by origin id and recipient.

use crate::config::RelayConfig;
use crate::routing::RouteChooser;
use bytes::Bytes;
use mailgate_core::address::MAILER_DAEMON;
use mailgate_core::message::now_ms;
use mailgate_core::message::{rfc3339, DELIVERY_STATUS};
use mailgate_core::relay::{Backoff, Route, Transport, TransportError};
use mailgate_core::store::{AccountRef, QueueEntry, RelayOutcome, Submission};
use mailgate_core::Core;
use mailgate_core::{Address, Message, Origin, Part, Submitter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The relay worker pool.
pub struct Relay {
    core: Arc<Core>,
    transports: Vec<Arc<dyn Transport>>,
    routes: RouteChooser,
    config: RelayConfig,
    backoff: Backoff,
    domain: String,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Relay {
    /// A pool over `core` with the given transports (in preference order); bounces come from
    /// `mailer-daemon@<domain>`.
    pub fn new(
        core: Arc<Core>,
        transports: Vec<Arc<dyn Transport>>,
        routes: RouteChooser,
        config: RelayConfig,
        domain: &str,
    ) -> Self {
        let backoff = config.backoff();
        Relay {
            core,
            transports,
            routes,
            config,
            backoff,
            domain: domain.to_owned(),
            per_domain: Mutex::new(HashMap::new()),
        }
    }

    /// Poll the queue until `shutdown` fires.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut workers = tokio::task::JoinSet::new();
        for n in 0..self.config.workers.max(1) {
            workers.spawn(self.clone().worker(n == 0, shutdown.clone()));
        }
        while workers.join_next().await.is_some() {}
    }

    /// One worker: claim a due entry, deliver it, repeat; when nothing is due, wait for a
    /// submission that queues something or the poll interval. The first worker also purges
    /// expired tokens and stamps.
    async fn worker(self: Arc<Self>, housekeeper: bool, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let lease_ms = (self.config.lease_secs.max(1) * 1000) as i64;
        let mut last_purge = 0i64;
        loop {
            let now = now_ms();
            if housekeeper && now - last_purge > 60_000 {
                last_purge = now;
                if let Err(e) = self.core.store.purge_expired(now).await {
                    tracing::warn!(error = %e, "purging expired tokens failed");
                }
            }
            let claimed = match self.core.store.claim_due(now, 1, lease_ms).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming queue entries failed");
                    Vec::new()
                }
            };
            let idle = claimed.is_empty();
            for entry in claimed {
                self.attempt(entry).await;
            }
            if shutdown.is_cancelled() {
                break;
            }
            if idle {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.core.relay_wake.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        }
    }

    /// The route and transport for `entry`'s domain (see [`RouteChooser`]).
    async fn transport_for(
        &self,
        entry: &QueueEntry,
    ) -> Result<(Route, &Arc<dyn Transport>), TransportError> {
        let available: Vec<&str> = self.transports.iter().map(|t| t.protocol()).collect();
        let route = self
            .routes
            .choose(
                &entry.recipient.domain,
                entry.protocol.as_deref(),
                &available,
            )
            .await?;
        let transport = self
            .transports
            .iter()
            .find(|t| t.protocol() == route.protocol)
            .ok_or_else(|| TransportError::Permanent(format!("no {} transport", route.protocol)))?;
        Ok((route, transport))
    }

    /// The per-domain concurrency limit of `domain`.
    fn domain_slots(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self.per_domain.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(domain.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_domain.max(1))))
            .clone()
    }

    async fn attempt(&self, entry: QueueEntry) {
        let slots = self.domain_slots(&entry.recipient.domain);
        let Ok(_slot) = slots.acquire().await else {
            return;
        };
        let now = now_ms();
        let message = self.core.store.message(entry.message).await;
        let transport = match &message {
            Ok(Some(_)) => Some(self.transport_for(&entry).await),
            _ => None,
        };
        let protocol = match &transport {
            Some(Ok((_, t))) => t.protocol(),
            _ => "none",
        };
        let result = match (transport, &message) {
            (_, Err(e)) => Err(TransportError::Temporary(format!("store: {e}"))),
            (_, Ok(None)) => Err(TransportError::Permanent("message no longer stored".into())),
            (Some(Err(e)), Ok(Some(_))) => Err(e),
            (Some(Ok((route, t))), Ok(Some(message))) => t.deliver(&route, &entry, message).await,
            (None, Ok(Some(_))) => Err(TransportError::Temporary("no route chosen".into())),
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
        if !self.core.policy.is_local(&sender.domain) || sender.local == MAILER_DAEMON {
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
        let daemon = Address::new(MAILER_DAEMON, &self.domain).ok()?;
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
        dsn.parts.push(Part {
            name: "delivery-status".into(),
            media_type: DELIVERY_STATUS.into(),
            data: Bytes::from(delivery_status(
                &self.domain,
                message,
                entry,
                protocol,
                error,
            )),
            content: false,
        });
        if let Some(headers) = original_headers(message) {
            dsn.parts.push(Part {
                name: "headers".into(),
                media_type: "text/rfc822-headers".into(),
                data: headers,
                content: false,
            });
        }
        let origin = Origin {
            protocol: "local",
            submitter: Submitter::Gateway,
        };
        match self
            .core
            .local_delivery(dsn, AccountRef::Id(account), &origin)
        {
            Ok(submission) => Some(Box::new(submission)),
            Err(e) => {
                tracing::warn!(error = %e, "bounce: refused");
                None
            }
        }
    }
}

/// The machine-readable part of a bounce (RFC 3464 §2.2, §2.3): who reports, for which
/// recipient, the status code (the remote server's enhanced code when it gave one; `5.0.0`
/// for other permanent failures, `4.4.7` when the message expired), and the diagnostic.
fn delivery_status(
    reporter: &str,
    message: &Message,
    entry: &QueueEntry,
    protocol: &str,
    error: &str,
) -> String {
    let status = enhanced_status(error).unwrap_or(if error.starts_with("gave up after") {
        "4.4.7".to_owned()
    } else {
        "5.0.0".to_owned()
    });
    let diagnostic: String = error
        .chars()
        .filter(|c| !c.is_control())
        .take(900)
        .collect();
    format!(
        "Reporting-MTA: dns; {reporter}\r\n\
         Arrival-Date: {}\r\n\
         \r\n\
         Final-Recipient: rfc822; {}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: {}; {diagnostic}\r\n\
         Last-Attempt-Date: {}\r\n",
        httpdate::fmt_http_date(ms_time(message.received_at)),
        entry.recipient,
        if protocol == "smtp" {
            "smtp"
        } else {
            "x-mailgate"
        },
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    )
}

fn ms_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// The first `class.subject.detail` code (RFC 3463) in `text`, e.g. `5.1.1`.
fn enhanced_status(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && (1..=3).contains(&parts[1].len())
                && (1..=3).contains(&parts[2].len())
        })
        .map(str::to_owned)
}

/// The header section of the original, when it arrived as MIME.
fn original_headers(message: &Message) -> Option<Bytes> {
    let wire = message.wire.as_ref().filter(|w| w.protocol == "smtp")?;
    let end = wire
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(wire.bytes.len(), |i| i + 2);
    Some(wire.bytes.slice(..end))
}

#[cfg(test)]
mod tests {
    #[test]
    fn enhanced_status_codes_are_found_in_replies() {
        assert_eq!(
            super::enhanced_status("RCPT refused: 550 5.1.1 <bob@x>: no such user").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(super::enhanced_status("refused: no user 1.2"), None);
        assert_eq!(
            super::enhanced_status("version 10.0.1 said 4.2.2 full").as_deref(),
            Some("4.2.2")
        );
    }
}
