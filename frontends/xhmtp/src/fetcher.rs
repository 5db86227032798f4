//! The inbound side: fetch each accepted notification's message from the sender's server (HTTP
//! Basic with the access code from the URL) and store it in the recipient's INBOX, where every
//! front-end reads it. A failed fetch is retried with backoff; the notification stays in the
//! feed meanwhile. The fetched copy and the notification's new state commit together, so a
//! crash can neither lose nor duplicate it.
//!
//! The same loop expires hosted messages whose recipients all fetched them longer than the
//! retention ago.

use crate::http::Call;
use crate::service::Xhmtp;
use crate::wire::MessageJson;
use hyper::{Method, StatusCode};
use mailgate_core::message::now_ms;
use mailgate_core::relay::{Backoff, TransportError};
use mailgate_core::store::{AccountRef, FetchOutcome, Notification, Submission};
use mailgate_core::{Address, Origin, SenderCheck, Submitter, TraceHop};
use percent_encoding::percent_decode_str;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a claimed fetch stays leased before another attempt may take it.
const LEASE_MS: i64 = 5 * 60 * 1000;
/// Fetches run at once.
const BATCH: u32 = 8;
/// How often hosted messages are expired.
const HOUSEKEEPING_MS: i64 = 3600 * 1000;

/// The fetch worker.
pub struct Fetcher {
    x: Arc<Xhmtp>,
    backoff: Backoff,
    max_age_ms: i64,
    poll: Duration,
}

impl Fetcher {
    /// A worker retrying with `backoff`, giving up after `max_age_ms`, polling every `poll`.
    pub fn new(x: Arc<Xhmtp>, backoff: Backoff, max_age_ms: i64, poll: Duration) -> Self {
        Fetcher {
            x,
            backoff,
            max_age_ms,
            poll,
        }
    }

    /// Work until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_housekeeping = 0;
        loop {
            let now = now_ms();
            if now - last_housekeeping > HOUSEKEEPING_MS {
                last_housekeeping = now;
                let retention = (self.x.config.retention_days as i64).saturating_mul(86_400_000);
                match self.x.core.store.expire_hosted(now, retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(messages = n, "expired fetched hosted messages"),
                    Err(e) => tracing::warn!(error = %e, "expiring hosted messages failed"),
                }
            }
            let claimed = match self.x.core.store.claim_fetches(now, BATCH, LEASE_MS).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming fetches failed");
                    Vec::new()
                }
            };
            let full = claimed.len() as u32 == BATCH;
            futures_util::future::join_all(claimed.into_iter().map(|n| self.clone().attempt(n)))
                .await;
            if full {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.x.fetch_wake.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    async fn attempt(self: Arc<Self>, n: Notification) {
        let now = now_ms();
        let outcome = match self.fetch(&n).await {
            Ok(submission) => FetchOutcome::Fetched(Box::new(submission)),
            Err(TransportError::Permanent(error)) => FetchOutcome::Failed { error },
            Err(TransportError::Temporary(error)) if now - n.received_at > self.max_age_ms => {
                FetchOutcome::Failed {
                    error: format!("gave up after {} attempts: {error}", n.attempts + 1),
                }
            }
            Err(TransportError::Temporary(error)) => FetchOutcome::Retry {
                next_attempt: now + self.backoff.delay_ms(n.attempts),
                error,
            },
        };
        let label = match &outcome {
            FetchOutcome::Fetched(_) => "ok",
            FetchOutcome::Retry { .. } => "retry",
            FetchOutcome::Failed { .. } => "failed",
        };
        tracing::info!(notification = n.id, url_host = %host_of(&n.notice.url), outcome = label, "fetch");
        self.x.core.metrics.event("xhmtp_fetch", label);
        if let Err(e) = self.x.core.store.finish_fetch(n.id, outcome).await {
            tracing::warn!(notification = n.id, error = %e, "recording the fetch failed");
        }
    }

    async fn fetch(&self, n: &Notification) -> Result<Submission, TransportError> {
        let perm = |m: String| TransportError::Permanent(m);
        let url = url::Url::parse(&n.notice.url).map_err(|e| perm(format!("message URL: {e}")))?;
        let user = percent_decode_str(url.username())
            .decode_utf8_lossy()
            .into_owned();
        let code = percent_decode_str(url.password().unwrap_or(""))
            .decode_utf8_lossy()
            .into_owned();
        let recipient = Address::parse_xhmtp(&user).map_err(|e| perm(format!("user: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let https = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(80);
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        // Only the address that was verified when the notification came in: the notifier's,
        // which the URL host's A/AAAA records named. Never another record of that host, and
        // never a denied (internal) address.
        let ip: IpAddr = n
            .notice
            .peer
            .parse()
            .map_err(|_| perm(format!("no verified address for {host}")))?;
        if !self.x.core.destinations.allowed(ip) {
            self.x.core.metrics.event("xhmtp_fetch", "denied_address");
            return Err(perm(format!(
                "{ip} (the notifier's address) is in the outbound deny list"
            )));
        }
        let call = Call {
            method: Method::GET,
            connect: SocketAddr::new(ip, port),
            https,
            host: &host,
            path: &target,
            basic: Some((&user, &code)),
            headers: vec![("accept", "application/json".into())],
            json: None,
        };
        let resp = self
            .x
            .http
            .send(call)
            .await
            .map_err(|e| TransportError::Temporary(format!("{host} at {ip}: {e}")))?;
        match resp.status {
            StatusCode::OK => self.local_copy(n, &recipient, &resp.body, &host),
            s @ (StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::GONE) => Err(perm(format!("the sender's server answered {s}"))),
            s => Err(TransportError::Temporary(format!(
                "the sender's server answered {s}"
            ))),
        }
    }

    fn local_copy(
        &self,
        n: &Notification,
        recipient: &Address,
        body: &[u8],
        host: &str,
    ) -> Result<Submission, TransportError> {
        let perm = |m: String| TransportError::Permanent(m);
        let json: MessageJson =
            serde_json::from_slice(body).map_err(|e| perm(format!("message body: {e}")))?;
        let mut message = json
            .into_message(recipient.clone())
            .map_err(|e| perm(format!("message: {e}")))?;
        if let Some(announced) = &n.notice.sender {
            if !announced.same_account(&message.sender) {
                return Err(perm(format!(
                    "the message is from {}, the notification said {announced}",
                    message.sender
                )));
            }
        }
        let max = self.x.core.policy.max_message_size;
        if message.size() > max {
            return Err(perm(format!(
                "message of {} bytes exceeds the limit of {max}",
                message.size()
            )));
        }
        // An announced sender's domain was found to host the message when the notification
        // came in; an anonymous notification's sender is only what the host says.
        message.security.sender_check = Some(if n.notice.sender.is_some() {
            SenderCheck::Domain
        } else {
            SenderCheck::Unverified
        });
        message.trace.push(TraceHop {
            protocol: "xhmtp".into(),
            peer: host.to_owned(),
            at: now_ms(),
        });
        let origin = Origin {
            protocol: "xhmtp",
            submitter: Submitter::Fetched,
        };
        self.x
            .core
            .local_delivery(message, AccountRef::Id(n.notice.account), &origin)
            .map_err(|e| perm(e.to_string()))
    }
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}
