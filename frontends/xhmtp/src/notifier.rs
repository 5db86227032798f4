//! The outbound side: a relay [`Transport`] that notifies the recipient's server.
//!
//! For a queued recipient `bob@B` it finds B's endpoints (static route, or SRV + TXT), derives
//! bob's access code, records the code's hash (so the fetch can be checked), and `POST`s the
//! notification to `/<prefixB>/bob@B`. `2xx` is done; `4xx` (but `408`/`429`) is permanent and
//! bounces; `5xx`, `408`, `429` and network errors are retried by the relay workers with their
//! backoff. The queue entry stays until then, so a crash never loses a notification.

use crate::access::code_hash;
use crate::discovery::{Endpoint, LookupError};
use crate::http::Call;
use crate::service::{path, Xhmtp};
use crate::wire::{format_address, NotifyRequest};
use async_trait::async_trait;
use hyper::Method;
use mailgate_core::message::rfc3339;
use mailgate_core::relay::{Route, Transport, TransportError};
use mailgate_core::store::QueueEntry;
use mailgate_core::{Address, Message};
use std::net::SocketAddr;
use std::sync::Arc;

/// The XHMTP relay transport.
pub struct XhmtpTransport {
    x: Arc<Xhmtp>,
}

impl XhmtpTransport {
    /// A transport over the front-end's state.
    pub fn new(x: Arc<Xhmtp>) -> Self {
        XhmtpTransport { x }
    }
}

/// The URL at which `recipient` fetches `message` from this server with `code`.
pub fn message_url(x: &Xhmtp, message: &Message, recipient: &str, code: &str) -> String {
    let mut u = match url::Url::parse(&x.base_url) {
        Ok(u) => u,
        // Validated at start-up; an unparsable base cannot produce a usable URL anyway.
        Err(_) => return String::new(),
    };
    let _ = u.set_username(recipient);
    let _ = u.set_password(Some(code));
    u.set_path(&path(
        &x.config.prefix,
        &[&message.sender.local, &message.id.to_string()],
    ));
    u.to_string()
}

fn classify(status: hyper::StatusCode, body: &[u8]) -> TransportError {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let text = format!("notification refused: HTTP {status} {detail}");
    if status.is_client_error() && status != 408 && status != 429 {
        TransportError::Permanent(text)
    } else {
        TransportError::Temporary(text)
    }
}

impl XhmtpTransport {
    async fn notify_endpoint(
        &self,
        ep: &Endpoint,
        recipient: &str,
        body: &[u8],
    ) -> Result<(), TransportError> {
        let addrs = self
            .x
            .locator
            .addresses(&ep.host)
            .await
            .map_err(TransportError::Temporary)?;
        let target = path(&ep.prefix, &[recipient]);
        let mut last = TransportError::Temporary(format!("{} has no addresses", ep.host));
        for ip in addrs {
            let call = Call {
                method: Method::POST,
                connect: SocketAddr::new(ip, ep.port),
                https: ep.https,
                host: &ep.host,
                path: &target,
                basic: None,
                headers: Vec::new(),
                json: Some(body.to_vec()),
            };
            match self.x.http.send(call).await {
                Ok(resp) if resp.status.is_success() => return Ok(()),
                Ok(resp) => {
                    let e = classify(resp.status, &resp.body);
                    if matches!(e, TransportError::Permanent(_)) {
                        return Err(e);
                    }
                    last = e;
                }
                Err(e) => last = TransportError::Temporary(format!("{}: {e}", ep.base())),
            }
        }
        Err(last)
    }
}

#[async_trait]
impl Transport for XhmtpTransport {
    fn protocol(&self) -> &'static str {
        "xhmtp"
    }

    async fn deliver(
        &self,
        route: &Route,
        entry: &QueueEntry,
        message: &Message,
    ) -> Result<(), TransportError> {
        let result = self.notify(route, &entry.recipient, message).await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(TransportError::Temporary(_)) => "retry",
            Err(TransportError::Permanent(_)) => "failed",
        };
        self.x.core.metrics.event("xhmtp_notify_out", outcome);
        result
    }
}

impl XhmtpTransport {
    async fn notify(
        &self,
        route: &Route,
        rcpt: &Address,
        message: &Message,
    ) -> Result<(), TransportError> {
        let recipient = rcpt
            .account()
            .to_xhmtp()
            .map_err(|e| TransportError::Permanent(format!("{rcpt} has no XHMTP form: {e}")))?;
        let endpoints = match self
            .x
            .locator
            .endpoints_via(&rcpt.domain, route.srv.as_deref())
            .await
        {
            Ok(e) => e,
            Err(e @ LookupError::NoRoute(_)) => {
                return Err(TransportError::Permanent(e.to_string()))
            }
            Err(e) => return Err(TransportError::Temporary(e.to_string())),
        };
        let code = self.x.codes.code(message.id, rcpt);
        self.x
            .core
            .store
            .grant_access(message.id, rcpt, code_hash(&code))
            .await
            .map_err(|e| TransportError::Temporary(format!("store: {e}")))?;
        let body = NotifyRequest {
            url: message_url(&self.x, message, &recipient, &code),
            from: Some(format_address(&message.sender)),
            date: Some(rfc3339(message.received_at)),
            size: Some(message.size() as u64),
            subject: (!self.x.config.withhold_subject).then(|| message.subject.clone()),
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| TransportError::Permanent(format!("notification: {e}")))?;
        let mut last = TransportError::Temporary("no endpoint answered".into());
        for ep in &endpoints {
            match self.notify_endpoint(ep, &recipient, &body).await {
                Ok(()) => return Ok(()),
                Err(e @ TransportError::Permanent(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
