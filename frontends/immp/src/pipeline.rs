//! One pipeline of an IMMP session: its commands run in order, concurrently with the other
//! pipelines of the same connection. The session's reader hands each pipeline its commands and
//! the DATA payloads it read from the stream; replies go to the session's writer.

use crate::auth;
use crate::codec::{CommandKind, Reply};
use crate::envelope::{Envelope, ENVELOPE_PART, ENVELOPE_TYPE};
use crate::mailbox::{self, temporary};
use crate::payload::{decode, PartSpec, Payload, PayloadError};
use crate::session::{ImmpServer, COMPRESSION_SETTING, NONCE_LIFETIME, PROTOCOL};
use bytes::Bytes;
use mailgate_core::login::FAILURES_PER_CONNECTION;
use mailgate_core::message::now_ms;
use mailgate_core::store::{Account, AccountId};
use mailgate_core::{
    Address, ImidRef, Importance, Message, Origin, Part, SenderCheck, SubmitError, Submitter,
    TraceHop,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Where the session is.
#[derive(Clone)]
pub(crate) enum Phase {
    Unauthenticated,
    Local(Account),
    /// Remotely Authenticated: a server proved (by cookie) it speaks for this domain.
    Remote(String),
}

/// A transaction on one pipeline, waiting for DATA.
pub(crate) enum Txn {
    /// DELIVER TO …, DATA…, DONE.
    Deliver(Delivery),
    /// PUSH TO / PUBLISH TO: the next DATA block is the push.
    Push(PushTxn),
    /// KEY PUBLISH: the next DATA block is the account's public key.
    KeyPublish,
}

/// A push waiting for its DATA block.
pub(crate) struct PushTxn {
    pub from: Address,
    pub to: Vec<Address>,
    pub importance: Importance,
    /// Published by the node's owner (PUBLISH TO): may go to other domains too.
    pub published: bool,
}

/// A DELIVER transaction on one pipeline.
pub(crate) struct Delivery {
    recipients: Vec<Address>,
    importance: Importance,
    subject: String,
    parts: Vec<Part>,
    size: usize,
    /// The relay envelope of a Remotely Authenticated sender, with its checked sender.
    envelope: Option<Box<(Envelope, Address)>>,
    /// Budget reservations covering the parts held so far.
    budget: Vec<mailgate_core::Reservation>,
}

pub(crate) struct PendingAuth {
    account: Address,
    n1: String,
    n2: String,
    issued: Instant,
}

/// What every pipeline of one connection shares.
pub(crate) struct Shared {
    pub server: Arc<ImmpServer>,
    pub peer: SocketAddr,
    phase: Mutex<Phase>,
    pending: Mutex<Option<PendingAuth>>,
    /// `COMPRESSION=GZIP`.
    pub gzip: AtomicBool,
    /// The live-push receiver, handed to the reader once authenticated.
    pub pushes: Mutex<Option<broadcast::Receiver<Arc<str>>>>,
    /// Wakes the reader when `pushes` is filled.
    pub authed: Notify,
    /// Failed logins on this connection.
    failed_logins: AtomicU32,
    /// Fired to close the connection (too many failed logins).
    pub close: CancellationToken,
}

impl Shared {
    /// State after the TLS upgrade.
    pub fn new(server: Arc<ImmpServer>, peer: SocketAddr) -> Self {
        Shared {
            server,
            peer,
            phase: Mutex::new(Phase::Unauthenticated),
            pending: Mutex::new(None),
            gzip: AtomicBool::new(false),
            pushes: Mutex::new(None),
            authed: Notify::new(),
            failed_logins: AtomicU32::new(0),
            close: CancellationToken::new(),
        }
    }

    /// The current state.
    pub fn phase(&self) -> Phase {
        self.phase
            .lock()
            .map(|p| p.clone())
            .unwrap_or(Phase::Unauthenticated)
    }

    /// Whether the session logged in (as a local account or a remote server).
    pub fn is_authenticated(&self) -> bool {
        !matches!(self.phase(), Phase::Unauthenticated)
    }

    /// The authenticated account, if any.
    pub fn account(&self) -> Option<AccountId> {
        match self.phase() {
            Phase::Local(a) => Some(a.id),
            _ => None,
        }
    }

    /// Replace the pending AUTH SECRET nonces, returning the previous ones.
    fn set_pending(&self, next: Option<PendingAuth>) -> Option<PendingAuth> {
        self.pending
            .lock()
            .ok()
            .and_then(|mut p| std::mem::replace(&mut *p, next))
    }

    fn remote(&self, domain: String) {
        if let Ok(mut p) = self.phase.lock() {
            *p = Phase::Remote(domain);
        }
    }

    fn authenticated(&self, account: Account) {
        let rx = self.server.listen(account.id);
        if let Ok(mut p) = self.phase.lock() {
            *p = Phase::Local(account);
        }
        if let Ok(mut slot) = self.pushes.lock() {
            *slot = rx;
        }
        self.authed.notify_one();
    }
}

/// Work for a pipeline.
pub(crate) enum Work {
    /// A command (not DATA).
    Command(CommandKind),
    /// A DATA command was read; its payload follows (announce `271`, in pipeline order).
    DataStart(String),
    /// A DATA command with the payload the reader took from the stream.
    Data(PartSpec, Result<Payload, PayloadError>),
}

/// One pipeline's worker.
pub(crate) struct Pipeline {
    pub(crate) shared: Arc<Shared>,
    id: Option<String>,
    pub(crate) txn: Option<Txn>,
    out: mpsc::Sender<String>,
}

impl Pipeline {
    /// Run the pipeline until its sender is dropped.
    pub async fn run(
        shared: Arc<Shared>,
        id: Option<String>,
        mut work: mpsc::Receiver<Work>,
        out: mpsc::Sender<String>,
    ) {
        let mut p = Pipeline {
            shared,
            id,
            txn: None,
            out,
        };
        while let Some(w) = work.recv().await {
            match w {
                Work::Command(kind) => p.command(kind).await,
                Work::DataStart(label) => {
                    p.say(Reply::new(271, format!("{label} Saving part"))).await
                }
                Work::Data(spec, payload) => p.data(spec, payload).await,
            }
        }
    }

    pub(crate) async fn say(&mut self, reply: Reply) {
        let _ = self.out.send(reply.render(self.id.as_deref())).await;
    }

    async fn command(&mut self, kind: CommandKind) {
        let phase = self.shared.phase();
        let allowed = match (&phase, &kind) {
            (_, CommandKind::Noop) => true,
            (_, CommandKind::CookieCheck { .. }) => true,
            (Phase::Unauthenticated, k) => matches!(
                k,
                CommandKind::AuthSecret { .. }
                    | CommandKind::AuthResponse(_)
                    | CommandKind::AuthCookie { .. }
                    | CommandKind::Push { .. }
            ),
            (Phase::Remote(_), k) => matches!(
                k,
                CommandKind::DeliverTo { .. }
                    | CommandKind::Done
                    | CommandKind::Push { .. }
                    | CommandKind::Subscribe { .. }
                    | CommandKind::KeyRequest(_)
            ),
            (Phase::Local(_), k) => !matches!(
                k,
                CommandKind::AuthSecret { .. }
                    | CommandKind::AuthResponse(_)
                    | CommandKind::AuthCookie { .. }
            ),
        };
        if !allowed {
            let why = match phase {
                Phase::Unauthenticated => "Authenticate first.",
                Phase::Local(_) => "Already authenticated.",
                Phase::Remote(_) => "Not available to a remote server.",
            };
            return self.say(Reply::new(403, why)).await;
        }
        match kind {
            CommandKind::Noop => self.say(Reply::new(200, "OK")).await,
            CommandKind::AuthSecret { account, .. } => self.auth_secret(&account).await,
            CommandKind::AuthResponse(hex) => self.auth_response(&hex).await,
            CommandKind::AuthCookie { cookie, domain } => self.auth_cookie(&cookie, &domain).await,
            CommandKind::CookieCheck { cookie, domain } => {
                let own = self.shared.server.domain.clone();
                let reply = match crate::federation::check_cookie(
                    &self.shared.server.core,
                    &cookie,
                    &domain,
                )
                .await
                {
                    Ok(true) => Reply::new(211, format!("Cookie valid for {own}")),
                    Ok(false) => Reply::new(411, "Cookie invalid."),
                    Err(e) => temporary(e),
                };
                self.say(reply).await;
            }
            CommandKind::DeliverTo {
                recipients,
                important,
                ..
            } => self.deliver_to(&recipients, important).await,
            CommandKind::Done => self.done().await,
            CommandKind::KeyRequest(x) => self.key_request(&x).await,
            CommandKind::KeyPublish => {
                self.txn = Some(Txn::KeyPublish);
                self.say(Reply::new(276, "Ready for the key DATA.")).await;
            }
            CommandKind::Publish { node, title } => self.publish(&node, title).await,
            CommandKind::PublishTo(node) => self.publish_to(&node).await,
            CommandKind::Subscribe { node, on_behalf } => match on_behalf {
                None => self.subscribe(&node).await,
                Some(who) => self.subscribe_for(&node, &who).await,
            },
            CommandKind::SubscribeList => self.subscribe_list().await,
            CommandKind::Unsubscribe(x) => self.unsubscribe(&x).await,
            CommandKind::Set { global, key, value } => self.set(global, &key, value).await,
            CommandKind::Push {
                to,
                from,
                important,
            } => self.push(&to, &from, important).await,
            CommandKind::MboxCheck { .. }
            | CommandKind::MboxIndex { .. }
            | CommandKind::MboxFetch { .. }
            | CommandKind::MboxCreate(_)
            | CommandKind::MboxDelete(_)
            | CommandKind::MboxMove { .. } => {
                if let Phase::Local(account) = &phase {
                    let gzip = self.shared.gzip.load(Ordering::Relaxed);
                    let replies = mailbox::run(
                        &self.shared.server.core,
                        account,
                        kind,
                        gzip,
                        self.shared.server.index_page,
                    )
                    .await;
                    for r in replies {
                        self.say(r).await;
                    }
                }
            }
            // Handled by the session's reader.
            CommandKind::Quit | CommandKind::Upgrade(_) | CommandKind::Data { .. } => {}
        }
    }

    /// A DATA block: the payload was read (271 already said); now the verdict.
    async fn data(&mut self, spec: PartSpec, payload: Result<Payload, PayloadError>) {
        let label = spec.name.clone().unwrap_or_else(|| "part".into());
        let max = self.shared.server.core.policy.max_message_size;
        let Payload {
            data: payload,
            budget,
        } = match payload {
            Ok(p) => p,
            Err(PayloadError::TooLarge) if !self.shared.is_authenticated() => {
                return self
                    .say(Reply::new(
                        443,
                        format!(
                            "Part larger than {} bytes before authentication.",
                            crate::session::PRE_AUTH_PAYLOAD
                        ),
                    ))
                    .await
            }
            Err(PayloadError::TooLarge) => {
                return self
                    .say(Reply::new(443, format!("Part larger than {max} bytes.")))
                    .await
            }
            Err(PayloadError::Busy) => {
                return self
                    .say(Reply::new(
                        750,
                        "Server busy: no memory for this part now; try again later.",
                    ))
                    .await
            }
            // The reader closes the connection for these.
            Err(PayloadError::Io | PayloadError::Unbounded) => return,
        };
        let may_send = matches!(self.shared.phase(), Phase::Local(_) | Phase::Remote(_))
            || matches!(self.txn, Some(Txn::Push(_)));
        if !may_send {
            return self.say(Reply::new(403, "Authenticate first.")).await;
        }
        let gzip = self.shared.gzip.load(Ordering::Relaxed);
        let data = match decode(payload, spec.base64, gzip, max) {
            Ok(d) => d,
            Err(e) => {
                return self
                    .say(Reply::new(444, format!("Bad base64 payload: {e}.")))
                    .await
            }
        };
        match self.txn.take() {
            None => {
                self.say(Reply::new(420, "No delivery in progress on this pipeline."))
                    .await
            }
            Some(Txn::Push(push)) => {
                let reply = self.deliver_push(push, spec, data).await;
                self.say(reply).await;
            }
            Some(Txn::KeyPublish) => {
                let reply = self.publish_key(data).await;
                self.say(reply).await;
            }
            Some(Txn::Deliver(mut txn)) => {
                if txn.size + data.len() > max {
                    self.txn = Some(Txn::Deliver(txn));
                    return self
                        .say(Reply::new(443, format!("Message larger than {max} bytes.")))
                        .await;
                }
                txn.size += data.len();
                txn.budget.push(budget);
                let remote = match self.shared.phase() {
                    Phase::Remote(domain) => Some(domain),
                    _ => None,
                };
                let is_envelope =
                    label == ENVELOPE_PART && spec.media_type.as_deref() == Some(ENVELOPE_TYPE);
                if let (true, Some(domain)) = (is_envelope, remote) {
                    match Envelope::parse(&data, &domain) {
                        Ok(env) => txn.envelope = Some(Box::new(env)),
                        Err(e) => {
                            self.txn = Some(Txn::Deliver(txn));
                            return self.say(Reply::new(444, format!("{e}."))).await;
                        }
                    }
                } else if label.eq_ignore_ascii_case("subject") && spec.media_type.is_none() {
                    txn.subject = String::from_utf8_lossy(&data).trim().to_owned();
                } else {
                    txn.parts.push(Part {
                        name: label.clone(),
                        media_type: spec
                            .media_type
                            .clone()
                            .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
                        data: Bytes::from(data),
                        content: spec.content,
                    });
                }
                self.txn = Some(Txn::Deliver(txn));
                self.say(Reply::new(272, format!("{label} Part saved")))
                    .await;
            }
        }
    }

    async fn auth_secret(&mut self, account: &str) {
        let core = &self.shared.server.core;
        if let Err(e) = core.login_allowed(PROTOCOL, self.shared.peer.ip(), account) {
            self.say(Reply::new(429, format!("{e}."))).await;
            return;
        }
        let address = match Address::parse_imid(account) {
            Ok(a) => a,
            Err(e) => {
                self.say(Reply::new(446, format!("Invalid account: {e}.")))
                    .await;
                return;
            }
        };
        // Nonces are issued for unknown accounts too, so replies do not reveal which exist.
        let n1 = uuid::Uuid::now_v7().to_string();
        let n2 = (now_ms() / 1000).to_string();
        self.say(Reply::new(
            302,
            "Shared secret authentication request initiated.",
        ))
        .await;
        self.say(Reply::new(303, format!("n1={n1} n2={n2}"))).await;
        self.shared.set_pending(Some(PendingAuth {
            account: address,
            n1,
            n2,
            issued: Instant::now(),
        }));
    }

    async fn auth_response(&mut self, given: &str) {
        // Single use: whatever happens, the nonces are gone.
        let Some(pending) = self.shared.set_pending(None) else {
            self.say(Reply::new(410, "No authentication in progress."))
                .await;
            return;
        };
        if pending.issued.elapsed() > NONCE_LIFETIME {
            self.say(Reply::new(410, "Authentication expired; start again."))
                .await;
            return;
        }
        let store = self.shared.server.core.store.clone();
        let account = match store.account(&pending.account).await {
            Ok(Some(a)) if self.shared.server.core.policy.is_local(&a.address.domain) => Some(a),
            _ => None,
        };
        let ok = match &account {
            Some(a) => match store.secret(a.id, auth::SECRET_KIND).await {
                Ok(Some(h)) => {
                    let h = String::from_utf8_lossy(&h).into_owned();
                    auth::check(&auth::response(&h, &pending.n1, &pending.n2), given)
                }
                _ => false,
            },
            None => false,
        };
        let (core, ip) = (&self.shared.server.core, self.shared.peer.ip());
        let name = pending.account.account_key();
        match (ok, account) {
            (true, Some(a)) => {
                core.login_succeeded(PROTOCOL, ip, &name);
                tracing::info!(account = %a.address, "immp authenticated");
                // The state changes before the reply: the client's next command sees it.
                let gzip = matches!(
                    self.shared.server.core.store.setting(a.id, COMPRESSION_SETTING).await,
                    Ok(Some(v)) if v == "GZIP"
                );
                self.shared.gzip.store(gzip, Ordering::Relaxed);
                let reply = Reply::new(210, format!("Authentication accepted for {}", a.address));
                self.shared.authenticated(a);
                self.say(reply).await;
            }
            _ => {
                core.login_failed(PROTOCOL, ip, &name);
                self.say(Reply::new(410, "Authentication failed.")).await;
                let failures = self.shared.failed_logins.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= FAILURES_PER_CONNECTION {
                    self.shared.close.cancel();
                }
            }
        }
    }

    /// AUTH COOKIE: ask the issuer's server whether it issued this cookie for us. The call-back
    /// is a connection a stranger triggers: limited per peer, never to a denied address, and
    /// the reply says only whether verification succeeded (the details go to the log).
    async fn auth_cookie(&mut self, cookie: &str, issuer: &str) {
        let server = self.shared.server.clone();
        let core = &server.core;
        let ip = self.shared.peer.ip();
        if !server.cookie_checks.check(&ip) {
            core.metrics.event("immp_cookie_check", "rate_limited");
            return self
                .say(Reply::new(429, "Too many cookie checks; slow down."))
                .await;
        }
        self.say(Reply::new(301, "Cookie authentication request initiated."))
            .await;
        let own = server.domain.clone();
        let verdict = match server
            .federation
            .connect_within(issuer, &core.destinations)
            .await
        {
            Ok(mut client) => {
                let ok = client.cookie_check(cookie, &own).await;
                client.quit().await;
                ok.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        match verdict {
            Ok(true) => {
                let domain = issuer.to_ascii_lowercase();
                tracing::info!(%domain, "immp remote server authenticated by cookie");
                core.metrics.event("immp_cookie_check", "ok");
                self.shared.remote(domain.clone());
                self.say(Reply::new(
                    210,
                    format!("Authentication accepted for mailer-daemon@{domain}"),
                ))
                .await;
            }
            Ok(false) => {
                tracing::info!(peer = %ip, issuer, "immp cookie rejected by its issuer");
                core.metrics.event("immp_cookie_check", "rejected");
                self.say(Reply::new(411, "Cookie verification failed."))
                    .await
            }
            Err(e) => {
                tracing::info!(peer = %ip, issuer, error = %e, "immp cookie could not be verified");
                core.metrics.event("immp_cookie_check", "unverifiable");
                self.say(Reply::new(411, "Cookie verification failed."))
                    .await
            }
        }
    }

    async fn deliver_to(&mut self, recipients: &[String], important: Option<bool>) {
        let mut parsed = Vec::new();
        for r in recipients {
            match ImidRef::parse(r) {
                Ok(i) if i.mailbox.is_none() && i.message_id.is_none() => parsed.push(i.address),
                Ok(_) => {
                    self.say(Reply::new(
                        446,
                        format!("{r} is a message reference, not a recipient."),
                    ))
                    .await;
                    return;
                }
                Err(e) => {
                    self.say(Reply::new(446, format!("Invalid recipient {r}: {e}.")))
                        .await;
                    return;
                }
            }
        }
        let max = self.shared.server.core.policy.max_recipients;
        if parsed.len() > max {
            self.say(Reply::new(
                447,
                format!("Too many recipients; the limit is {max}."),
            ))
            .await;
            return;
        }
        self.txn = Some(Txn::Deliver(Delivery {
            recipients: parsed,
            importance: match important {
                Some(true) => Importance::High,
                Some(false) => Importance::Low,
                None => Importance::Normal,
            },
            subject: String::new(),
            parts: Vec::new(),
            size: 0,
            envelope: None,
            budget: Vec::new(),
        }));
        self.say(Reply::new(270, "Ok, ready to deliver. Give me your DATA."))
            .await;
    }

    async fn done(&mut self) {
        // A local user sends as itself; a remote server for its domain's mailer-daemon.
        let (sender, submitter) = match self.shared.phase() {
            Phase::Local(a) => (a.address.clone(), Submitter::Account(a)),
            Phase::Remote(domain) => {
                match Address::new(mailgate_core::address::MAILER_DAEMON, &domain) {
                    Ok(a) => (a, Submitter::Peer(self.shared.peer.ip())),
                    Err(_) => return,
                }
            }
            Phase::Unauthenticated => return,
        };
        let mut txn = match self.txn.take() {
            Some(Txn::Deliver(d)) => d,
            Some(other @ (Txn::Push(_) | Txn::KeyPublish)) => {
                self.txn = Some(other);
                self.say(Reply::new(
                    420,
                    "This transaction takes one DATA block and no DONE.",
                ))
                .await;
                return;
            }
            None => {
                self.say(Reply::new(420, "No delivery in progress on this pipeline."))
                    .await;
                return;
            }
        };
        // An encrypted message relayed between servers has no parts: its payload is in the
        // envelope.
        let sealed = txn
            .envelope
            .as_ref()
            .is_some_and(|e| e.0.security.encrypted.is_some());
        if txn.parts.is_empty() && !sealed {
            self.say(Reply::new(421, "No DATA given; nothing to deliver."))
                .await;
            return;
        }
        if !txn.parts.iter().any(|part| part.content) {
            if let Some(first) = txn.parts.first_mut() {
                first.content = true;
            }
        }
        let (sender, envelope) = match txn.envelope.map(|b| *b) {
            Some((env, from)) => (from, Some(env)),
            None => (sender, None),
        };
        let mut message = Message::new(sender, txn.recipients, txn.subject, "");
        message.parts = txn.parts;
        message.importance = txn.importance;
        message.trace.push(TraceHop {
            protocol: PROTOCOL.into(),
            peer: self.shared.peer.ip().to_string(),
            at: now_ms(),
        });
        if let Some(env) = envelope {
            if let Err(e) = env.apply(&mut message) {
                return self.say(Reply::new(444, format!("{e}."))).await;
            }
        }
        if matches!(submitter, Submitter::Peer(_)) {
            // A server authenticated for the sender's domain (AUTH COOKIE) hands it over.
            message.security.sender_check = Some(SenderCheck::Domain);
        }
        let id = message.id;
        let origin = Origin {
            protocol: PROTOCOL,
            submitter,
        };
        let reply = match self.shared.server.core.submit(message, &origin, None).await {
            Ok(_) => Reply::new(273, format!("{id} Message accepted")),
            Err(e @ SubmitError::UnknownRecipient(_)) => Reply::new(441, format!("{e}.")),
            Err(e @ SubmitError::RelayDenied(_)) => Reply::new(442, format!("{e}.")),
            Err(e @ SubmitError::TooLarge { .. }) => Reply::new(443, format!("{e}.")),
            Err(e @ SubmitError::TooManyRecipients(..)) => Reply::new(447, format!("{e}.")),
            Err(
                e @ (SubmitError::SenderMismatch(_) | SubmitError::LocalSenderUnauthenticated(_)),
            ) => Reply::new(403, format!("{e}.")),
            Err(e @ (SubmitError::NoRecipients | SubmitError::StampSpent)) => {
                Reply::new(401, format!("{e}."))
            }
            Err(e @ SubmitError::Store(_)) => Reply::new(750, format!("{e}; try again.")),
        };
        self.say(reply).await;
    }

    async fn set(&mut self, global: bool, key: &str, value: Option<String>) {
        if key != "COMPRESSION" {
            return self
                .say(Reply::new(
                    401,
                    format!("Unknown setting {key}; supported: COMPRESSION."),
                ))
                .await;
        }
        let Some(value) = value else {
            let now = if self.shared.gzip.load(Ordering::Relaxed) {
                "GZIP"
            } else {
                "NONE"
            };
            return self
                .say(Reply::new(
                    220,
                    format!("COMPRESSION={now} (supported: NONE GZIP)"),
                ))
                .await;
        };
        let gzip = match value.as_str() {
            "GZIP" => true,
            "NONE" => false,
            other => {
                return self
                    .say(Reply::new(
                        401,
                        format!("COMPRESSION={other} is not supported: NONE GZIP."),
                    ))
                    .await
            }
        };
        if global {
            let Phase::Local(account) = &self.shared.phase() else {
                return;
            };
            if let Err(e) = self
                .shared
                .server
                .core
                .store
                .set_setting(account.id, COMPRESSION_SETTING, &value)
                .await
            {
                return self.say(temporary(e)).await;
            }
        }
        self.shared.gzip.store(gzip, Ordering::Relaxed);
        let scope = if global { " (account default)" } else { "" };
        self.say(Reply::new(220, format!("COMPRESSION={value}{scope}")))
            .await;
    }

    /// KEY PUBLISH's DATA: the authenticated account's own public key.
    async fn publish_key(&mut self, data: Vec<u8>) -> Reply {
        let Phase::Local(account) = &self.shared.phase() else {
            return Reply::new(403, "Authenticate first.");
        };
        let armored = String::from_utf8_lossy(&data).into_owned();
        let who = account.address.clone();
        let checked = tokio::task::spawn_blocking(move || {
            mailgate_core::pgp::check_public_key(&armored, &who).map(|k| (k, armored))
        })
        .await;
        let (key, armored) = match checked {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => return Reply::new(448, format!("Invalid key: {e}.")),
            Err(e) => return temporary(e),
        };
        let record = mailgate_core::store::PublicKeyRecord {
            address: account.address.clone(),
            fingerprint: key.fingerprint.clone(),
            armored,
            owner_verified: true,
        };
        match self.shared.server.core.store.put_key(record).await {
            Ok(()) => Reply::new(
                232,
                format!(
                    "Key published for {} (fingerprint {}).",
                    account.address, key.fingerprint
                ),
            ),
            Err(e) => temporary(e),
        }
    }

    async fn key_request(&mut self, target: &str) {
        let address = match Address::parse_imid(target) {
            Ok(a) => a,
            Err(_) if !target.contains('@') => {
                let ours = target.eq_ignore_ascii_case(&self.shared.server.domain)
                    || self.shared.server.core.policy.is_local(target);
                match (self.shared.server.domain_key.clone(), ours) {
                    (Some(k), true) => {
                        self.say(Reply::new(
                            230,
                            format!("Public key for {target} (fingerprint {}):", k.fingerprint),
                        ))
                        .await;
                        let lines = k.armored.lines().map(str::to_owned).collect();
                        self.say(Reply { code: 231, lines }).await;
                    }
                    _ => {
                        self.say(Reply::new(405, format!("No domain key for {target}.")))
                            .await
                    }
                }
                return;
            }
            Err(e) => {
                self.say(Reply::new(446, format!("Invalid IMID {target}: {e}.")))
                    .await;
                return;
            }
        };
        match self.shared.server.core.store.key(&address).await {
            Ok(Some(k)) => {
                self.say(Reply::new(
                    230,
                    format!(
                        "Public key for {} (fingerprint {}):",
                        k.address, k.fingerprint
                    ),
                ))
                .await;
                self.say(Reply {
                    code: 231,
                    lines: k.armored.lines().map(str::to_owned).collect(),
                })
                .await;
            }
            Ok(None) => {
                self.say(Reply::new(405, format!("No public key for {address}.")))
                    .await
            }
            Err(e) => self.say(temporary(e)).await,
        }
    }
}
