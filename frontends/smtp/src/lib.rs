//! mailgate's SMTP front-end: the inbound MX listener (RFC 5321 ESMTP with PIPELINING, SIZE,
//! 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8, STARTTLS). Mail for local accounts only (relaying
//! refused), unknown recipients refused at `RCPT`, SPF/DKIM/DMARC checked, `250` after the
//! final dot only once the message is stored durably through [`Core::submit`]. The
//! submission listeners (RFC 6409, RFC 8314) take mail from authenticated accounts to
//! anywhere; the relay transport delivers to other domains' mail exchangers.

pub mod auth;
mod chunking;
pub mod client;
pub mod command;
pub mod config;
pub mod dkim;
pub mod mime;
pub mod relay;
pub mod render;
pub mod reply;
pub mod sasl;
mod session;

use mail_auth::MessageAuthenticator;
use mailgate_core::io::{BoxedIo, ConnState};
use mailgate_core::Core;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::SmtpConfig;

/// The SMTP server: shared by every connection of its listeners.
pub struct SmtpServer {
    core: Arc<Core>,
    hostname: String,
    tls: Option<TlsAcceptor>,
    read_timeout: Duration,
    data_timeout: Duration,
    submission: bool,
    /// Where mail for a local domain's `postmaster` goes when the domain has no such account.
    postmaster: Option<mailgate_core::Address>,
    /// SPF/DKIM/DMARC for arriving mail, and the longest the checks of one message may take.
    authenticator: Option<(Arc<MessageAuthenticator>, Duration)>,
}

impl SmtpServer {
    /// A server greeting as `hostname` (the first local domain), offering STARTTLS with `tls`.
    pub fn new(
        core: Arc<Core>,
        hostname: impl Into<String>,
        tls: Option<TlsAcceptor>,
        config: &SmtpConfig,
        read_timeout: Duration,
    ) -> Self {
        SmtpServer {
            core,
            hostname: hostname.into(),
            tls,
            read_timeout,
            data_timeout: Duration::from_secs(config.data_timeout_secs.max(1)),
            submission: false,
            postmaster: config
                .postmaster
                .as_deref()
                .and_then(|a| mailgate_core::Address::parse_any(a).ok())
                .map(|a| a.account()),
            authenticator: None,
        }
    }

    /// Check SPF, DKIM and DMARC of mail from strangers with `authenticator`, each message's
    /// checks bounded by `timeout` (past it they count as `temperror`).
    pub fn with_authenticator(
        mut self,
        authenticator: Arc<MessageAuthenticator>,
        timeout: Duration,
    ) -> Self {
        self.authenticator = Some((authenticator, timeout));
        self
    }

    /// The same server for the submission ports (RFC 6409): `AUTH PLAIN`/`LOGIN` once the
    /// connection is encrypted, then mail from the account's own address to anywhere.
    pub fn for_submission(mut self) -> Self {
        self.submission = true;
        self
    }

    /// Run one session on an accepted connection (`tls`: the listener did a TLS handshake).
    pub async fn handle(
        &self,
        stream: BoxedIo,
        peer: SocketAddr,
        tls: bool,
        shutdown: CancellationToken,
        state: Arc<ConnState>,
    ) {
        session::Session::new(self, peer, tls)
            .run(stream, shutdown, state)
            .await
    }
}
