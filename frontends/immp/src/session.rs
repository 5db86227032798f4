//! One IMMP connection: the state machine of the profile (Unencrypted → Unauthenticated →
//! Local Authenticated), pipelines, DELIVER transactions and mailbox access.

use crate::auth;
use crate::codec::{self, Command, CommandKind, ParseError, Reply, TlsLevel};
use crate::mailbox;
use base64::Engine;
use bytes::Bytes;
use mailgate_core::io::Io;
use mailgate_core::message::now_ms;
use mailgate_core::store::Account;
use mailgate_core::store::AccountId;
use mailgate_core::MessageKind;
use mailgate_core::{
    Address, Core, ImidRef, Importance, Message, Origin, Part, SubmitError, Submitter, TraceHop,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Longest command line (the profile's 8 KiB).
pub const MAX_LINE: usize = 8 * 1024;
/// How long AUTH SECRET nonces stay valid.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// Protocol name in metrics and traces.
pub const PROTOCOL: &str = "immp";
/// Where `SET GLOBAL COMPRESSION` is kept for the account.
pub const COMPRESSION_SETTING: &str = "immp.compression";

/// The IMMP front-end: shared by every connection.
/// The gateway's own OpenPGP key, answered to `KEY REQUEST <domain>`.
#[derive(Debug, Clone)]
pub struct DomainKey {
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// Armored public key.
    pub armored: String,
}

pub struct ImmpServer {
    core: Arc<Core>,
    domain: String,
    domain_key: Option<DomainKey>,
    tls: TlsAcceptor,
    tls13: TlsAcceptor,
    read_timeout: Duration,
    /// Open authenticated sessions per account, for unsolicited `150 PUSH` lines.
    live: Mutex<HashMap<AccountId, broadcast::Sender<Arc<str>>>>,
}

enum Line {
    Text(String),
    TooLong,
    Eof,
}

async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else {
                Line::TooLong
            });
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            buf.extend_from_slice(&chunk[..used]);
            if buf.len() > MAX_LINE + 2 {
                too_long = true;
                buf.clear();
            }
        }
        r.consume(used);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            return Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

/// Where the session is.
enum Phase {
    Unencrypted,
    Unauthenticated,
    Local(Account),
}

/// A transaction on one pipeline, waiting for DATA.
enum Txn {
    /// DELIVER TO …, DATA…, DONE.
    Deliver(Delivery),
    /// PUSH TO / PUBLISH TO: the next DATA block is the push.
    Push(PushTxn),
    /// KEY PUBLISH: the next DATA block is the account's public key.
    KeyPublish,
}

/// A push waiting for its DATA block.
struct PushTxn {
    from: Address,
    to: Vec<Address>,
    importance: Importance,
}

/// A DELIVER transaction on one pipeline.
struct Delivery {
    recipients: Vec<Address>,
    importance: Importance,
    subject: String,
    parts: Vec<Part>,
    size: usize,
}

struct PendingAuth {
    account: Address,
    n1: String,
    n2: String,
    issued: Instant,
}

type Stream = BufReader<Box<dyn Io>>;

/// What the connection loop does after a line.
enum Next {
    Continue,
    Close,
    Upgrade(TlsLevel),
}

struct Session<'a> {
    server: &'a ImmpServer,
    peer: SocketAddr,
    phase: Phase,
    pending: Option<PendingAuth>,
    deliveries: HashMap<Option<String>, Txn>,
    out: String,
    /// Pushes for this session's account, once authenticated.
    pushes: Option<broadcast::Receiver<Arc<str>>>,
    /// `COMPRESSION=GZIP`: base64 payloads in both directions are gzip streams.
    gzip: bool,
}

impl ImmpServer {
    /// A front-end for `domain`: `tls` accepts TLS 1.2 and 1.3 (`UPGRADE TLS`/`TLS2`), `tls13`
    /// only TLS 1.3 (`UPGRADE TLS3`).
    pub fn new(
        core: Arc<Core>,
        domain: String,
        domain_key: Option<DomainKey>,
        tls: TlsAcceptor,
        tls13: TlsAcceptor,
        read_timeout: Duration,
    ) -> Self {
        ImmpServer {
            core,
            domain,
            domain_key,
            tls,
            tls13,
            read_timeout,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// The multi-line greeting.
    pub fn greeting(&self) -> String {
        format!(
            "100- IMMP/1.0 Server at {d}.\n100- Please upgrade the connection to one of the following:\n100 TLS TLS2 TLS3\n101 p=IMMP v=1.0 d={d}\n",
            d = self.domain
        )
    }

    /// Run one session.
    pub async fn handle<S>(&self, stream: S, peer: SocketAddr, shutdown: CancellationToken)
    where
        S: Io + 'static,
    {
        let mut io: Stream = BufReader::new(Box::new(stream));
        if io
            .get_mut()
            .write_all(self.greeting().as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let mut session = Session {
            server: self,
            peer,
            phase: Phase::Unencrypted,
            pending: None,
            deliveries: HashMap::new(),
            out: String::new(),
            pushes: None,
            gzip: false,
        };
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = io.get_mut().write_all(b"702 Server shutting down.\n").await;
                    break;
                }
                push = next_push(&mut session.pushes) => {
                    if let Some(text) = push {
                        let line = Reply::new(150, format!("PUSH {text}")).render(None);
                        if io.get_mut().write_all(line.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                r = tokio::time::timeout(self.read_timeout, read_line(&mut io)) => r,
            };
            let next = match line {
                Err(_) => {
                    let _ = io.get_mut().write_all(b"701 Timeout, closing.\n").await;
                    break;
                }
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => break,
                Ok(Ok(Line::TooLong)) => {
                    session.say(None, Reply::new(700, "Line too long."));
                    Next::Continue
                }
                Ok(Ok(Line::Text(t))) if t.trim().is_empty() => Next::Continue,
                Ok(Ok(Line::Text(t))) => session.line(&t, &mut io).await,
            };
            if session.flush(&mut io).await.is_err() {
                break;
            }
            match next {
                Next::Continue => {}
                Next::Close => break,
                Next::Upgrade(level) => {
                    if !io.buffer().is_empty() {
                        // Plaintext sent before the handshake would be injected into TLS.
                        let _ = io
                            .get_mut()
                            .write_all(b"702 Data after UPGRADE before the handshake.\n")
                            .await;
                        break;
                    }
                    let acceptor = match level {
                        TlsLevel::Tls3 => &self.tls13,
                        TlsLevel::Tls | TlsLevel::Tls2 => &self.tls,
                    };
                    match acceptor.accept(io.into_inner()).await {
                        Ok(tls) => {
                            io = BufReader::new(Box::new(tls));
                            session.phase = Phase::Unauthenticated;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "immp tls handshake failed");
                            return;
                        }
                    }
                }
            }
        }
        let _ = io.get_mut().shutdown().await;
        if let Phase::Local(account) = &session.phase {
            drop(session.pushes.take());
            if let Ok(mut live) = self.live.lock() {
                if live
                    .get(&account.id)
                    .is_some_and(|tx| tx.receiver_count() == 0)
                {
                    live.remove(&account.id);
                }
            }
        }
    }

    /// Register an authenticated session for live pushes.
    fn listen(&self, account: AccountId) -> Option<broadcast::Receiver<Arc<str>>> {
        let mut live = self.live.lock().ok()?;
        Some(
            live.entry(account)
                .or_insert_with(|| broadcast::channel(64).0)
                .subscribe(),
        )
    }

    /// Show a push to the open sessions of these accounts.
    fn notify(&self, accounts: &[AccountId], text: &str) {
        let Ok(live) = self.live.lock() else {
            return;
        };
        let text: Arc<str> = Arc::from(text);
        for a in accounts {
            if let Some(tx) = live.get(a) {
                let _ = tx.send(text.clone());
            }
        }
    }
}

/// The next push for this session (pending forever before authentication). A session that fell
/// behind skips the pushes it missed; they stay listable in /push.
async fn next_push(rx: &mut Option<broadcast::Receiver<Arc<str>>>) -> Option<Arc<str>> {
    match rx {
        None => std::future::pending().await,
        Some(rx) => match rx.recv().await {
            Ok(text) => Some(text),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
    }
}

fn parse_error_reply(e: &ParseError) -> Reply {
    match e {
        ParseError::Usage(u) => Reply::new(401, u.clone()),
        other => Reply::new(400, format!("{other}.")),
    }
}

impl Session<'_> {
    fn say(&mut self, pipeline: Option<&str>, reply: Reply) {
        self.out.push_str(&reply.render(pipeline));
    }

    async fn flush(&mut self, io: &mut Stream) -> std::io::Result<()> {
        if !self.out.is_empty() {
            io.get_mut().write_all(self.out.as_bytes()).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn line(&mut self, text: &str, io: &mut Stream) -> Next {
        let commands = match codec::parse_line(text) {
            Ok(c) => c,
            Err(e) => {
                self.say(None, parse_error_reply(&e));
                return Next::Continue;
            }
        };
        let count = commands.len();
        for (i, cmd) in commands.into_iter().enumerate() {
            let pipeline = cmd.pipeline.clone();
            let p = pipeline.as_deref();
            if let CommandKind::Upgrade(level) = cmd.kind {
                if !matches!(self.phase, Phase::Unencrypted) {
                    self.say(p, Reply::new(403, "Connection is already encrypted."));
                } else if i + 1 != count {
                    self.say(
                        p,
                        Reply::new(401, "UPGRADE must be the last command on its line."),
                    );
                } else {
                    self.say(p, Reply::new(204, "Upgrading to TLS."));
                    return Next::Upgrade(level);
                }
                continue;
            }
            if let Some(next) = self.command(cmd, io).await {
                return next;
            }
        }
        Next::Continue
    }

    /// Run one command; `Some` ends the line's processing.
    async fn command(&mut self, cmd: Command, io: &mut Stream) -> Option<Next> {
        let p = cmd.pipeline.as_deref();
        let allowed = match (&self.phase, &cmd.kind) {
            (_, CommandKind::Noop | CommandKind::Quit) => true,
            // DATA payloads must be read whatever the state, to stay in sync.
            (_, CommandKind::Data { .. }) => true,
            (Phase::Unencrypted, _) => false,
            (Phase::Unauthenticated, k) => matches!(
                k,
                CommandKind::AuthSecret { .. }
                    | CommandKind::AuthResponse(_)
                    | CommandKind::Push { .. }
            ),
            (Phase::Local(_), k) => !matches!(
                k,
                CommandKind::AuthSecret { .. } | CommandKind::AuthResponse(_)
            ),
        };
        if !allowed {
            let why = match self.phase {
                Phase::Unencrypted => "Upgrade the connection first.",
                Phase::Unauthenticated => "Authenticate first.",
                Phase::Local(_) => "Already authenticated.",
            };
            self.say(p, Reply::new(403, why));
            return None;
        }
        match cmd.kind {
            CommandKind::Noop => self.say(p, Reply::new(200, "OK")),
            CommandKind::Quit => {
                self.say(p, Reply::new(201, "Bye."));
                return Some(Next::Close);
            }
            CommandKind::Upgrade(_) => {}
            CommandKind::AuthSecret { account, .. } => self.auth_secret(p, &account).await,
            CommandKind::AuthResponse(hex) => self.auth_response(p, &hex).await,
            CommandKind::DeliverTo {
                recipients,
                important,
                ..
            } => self.deliver_to(p, &recipients, important),
            CommandKind::Data {
                name,
                media_type,
                length,
                base64,
                content,
            } => {
                let part = PartSpec {
                    name,
                    media_type,
                    length,
                    base64,
                    content,
                };
                return self.data(p, part, io).await;
            }
            CommandKind::Done => self.done(p).await,
            CommandKind::KeyRequest(x) => self.key_request(p, &x).await,
            CommandKind::Publish { node, title } => self.publish(p, &node, title).await,
            CommandKind::PublishTo(node) => self.publish_to(p, &node).await,
            CommandKind::Subscribe(node) => self.subscribe(p, &node).await,
            CommandKind::SubscribeList => self.subscribe_list(p).await,
            CommandKind::KeyPublish => {
                self.deliveries
                    .insert(p.map(str::to_owned), Txn::KeyPublish);
                self.say(p, Reply::new(276, "Ready for the key DATA."));
            }
            CommandKind::Set { global, key, value } => self.set(p, global, &key, value).await,
            CommandKind::Unsubscribe(x) => self.unsubscribe(p, &x).await,
            CommandKind::Push {
                to,
                from,
                important,
            } => self.push(p, &to, &from, important).await,
            CommandKind::MboxCheck { .. }
            | CommandKind::MboxIndex { .. }
            | CommandKind::MboxFetch { .. }
            | CommandKind::MboxCreate(_)
            | CommandKind::MboxDelete(_)
            | CommandKind::MboxMove { .. } => {
                if let Phase::Local(account) = &self.phase {
                    let replies =
                        mailbox::run(&self.server.core, account, cmd.kind, self.gzip).await;
                    for r in replies {
                        self.say(p, r);
                    }
                }
            }
        }
        None
    }

    async fn auth_secret(&mut self, p: Option<&str>, account: &str) {
        if !self.server.core.limiter.check(&self.peer.ip()) {
            self.say(p, Reply::new(429, "Too many attempts; slow down."));
            return;
        }
        let address = match Address::parse_imid(account) {
            Ok(a) => a,
            Err(e) => {
                self.say(p, Reply::new(446, format!("Invalid account: {e}.")));
                return;
            }
        };
        // Nonces are issued for unknown accounts too, so replies do not reveal which exist.
        let n1 = uuid::Uuid::now_v7().to_string();
        let n2 = (now_ms() / 1000).to_string();
        self.say(
            p,
            Reply::new(302, "Shared secret authentication request initiated."),
        );
        self.say(p, Reply::new(303, format!("n1={n1} n2={n2}")));
        self.pending = Some(PendingAuth {
            account: address,
            n1,
            n2,
            issued: Instant::now(),
        });
    }

    async fn auth_response(&mut self, p: Option<&str>, given: &str) {
        // Single use: whatever happens, the nonces are gone.
        let Some(pending) = self.pending.take() else {
            self.say(p, Reply::new(410, "No authentication in progress."));
            return;
        };
        if pending.issued.elapsed() > NONCE_LIFETIME {
            self.say(p, Reply::new(410, "Authentication expired; start again."));
            return;
        }
        let store = &self.server.core.store;
        let account = match store.account(&pending.account).await {
            Ok(Some(a)) if self.server.core.policy.is_local(&a.address.domain) => Some(a),
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
        match (ok, account) {
            (true, Some(a)) => {
                tracing::info!(account = %a.address, "immp authenticated");
                self.say(
                    p,
                    Reply::new(210, format!("Authentication accepted for {}", a.address)),
                );
                self.pushes = self.server.listen(a.id);
                self.gzip = matches!(
                    self.server.core.store.secret(a.id, COMPRESSION_SETTING).await,
                    Ok(Some(v)) if v == b"GZIP"
                );
                self.phase = Phase::Local(a);
            }
            _ => self.say(p, Reply::new(410, "Authentication failed.")),
        }
    }

    fn deliver_to(&mut self, p: Option<&str>, recipients: &[String], important: Option<bool>) {
        let mut parsed = Vec::new();
        for r in recipients {
            match ImidRef::parse(r) {
                Ok(i) if i.mailbox.is_none() && i.message_id.is_none() => parsed.push(i.address),
                Ok(_) => {
                    self.say(
                        p,
                        Reply::new(446, format!("{r} is a message reference, not a recipient.")),
                    );
                    return;
                }
                Err(e) => {
                    self.say(p, Reply::new(446, format!("Invalid recipient {r}: {e}.")));
                    return;
                }
            }
        }
        let max = self.server.core.policy.max_recipients;
        if parsed.len() > max {
            self.say(
                p,
                Reply::new(447, format!("Too many recipients; the limit is {max}.")),
            );
            return;
        }
        self.deliveries.insert(
            p.map(str::to_owned),
            Txn::Deliver(Delivery {
                recipients: parsed,
                importance: match important {
                    Some(true) => Importance::High,
                    Some(false) => Importance::Low,
                    None => Importance::Normal,
                },
                subject: String::new(),
                parts: Vec::new(),
                size: 0,
            }),
        );
        self.say(
            p,
            Reply::new(270, "Ok, ready to deliver. Give me your DATA."),
        );
    }

    async fn data(&mut self, p: Option<&str>, spec: PartSpec, io: &mut Stream) -> Option<Next> {
        let label = spec.name.clone().unwrap_or_else(|| "part".into());
        let max = self.server.core.policy.max_message_size;
        let key = p.map(str::to_owned);
        let in_txn = self.deliveries.contains_key(&key);
        let may_send = matches!(self.phase, Phase::Local(_))
            || matches!(self.deliveries.get(&key), Some(Txn::Push(_)));
        if in_txn && may_send {
            self.say(p, Reply::new(271, format!("{label} Saving part")));
            if self.flush(io).await.is_err() {
                return Some(Next::Close);
            }
        }
        let payload = match read_payload(io, spec.length, max).await {
            Ok(p) => p,
            Err(PayloadError::Io) => return Some(Next::Close),
            Err(PayloadError::Unbounded) => {
                self.say(
                    p,
                    Reply::new(702, "Payload far larger than allowed; closing."),
                );
                return Some(Next::Close);
            }
            Err(PayloadError::TooLarge) => {
                self.say(p, Reply::new(443, format!("Part larger than {max} bytes.")));
                return None;
            }
            Err(PayloadError::LengthMismatch) => {
                self.say(
                    p,
                    Reply::new(
                        445,
                        "Length mismatch: the payload does not end where LENGTH says.",
                    ),
                );
                return None;
            }
        };
        if !may_send {
            self.say(p, Reply::new(403, "Authenticate first."));
            return None;
        }
        let data = match decode(payload, spec.base64, self.gzip, max) {
            Ok(d) => d,
            Err(e) => {
                self.say(p, Reply::new(444, format!("Bad base64 payload: {e}.")));
                return None;
            }
        };
        match self.deliveries.get_mut(&key) {
            None => {
                self.say(
                    p,
                    Reply::new(420, "No delivery in progress on this pipeline."),
                );
            }
            Some(Txn::Push(_)) => {
                if let Some(Txn::Push(push)) = self.deliveries.remove(&key) {
                    let reply = self.deliver_push(push, spec, data).await;
                    self.say(p, reply);
                }
            }
            Some(Txn::KeyPublish) => {
                self.deliveries.remove(&key);
                let reply = self.publish_key(data).await;
                self.say(p, reply);
            }
            Some(Txn::Deliver(txn)) => {
                if txn.size + data.len() > max {
                    self.say(
                        p,
                        Reply::new(443, format!("Message larger than {max} bytes.")),
                    );
                    return None;
                }
                txn.size += data.len();
                if label.eq_ignore_ascii_case("subject") && spec.media_type.is_none() {
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
                self.say(p, Reply::new(272, format!("{label} Part saved")));
            }
        }
        None
    }

    async fn done(&mut self, p: Option<&str>) {
        let Phase::Local(account) = &self.phase else {
            return;
        };
        let mut txn = match self.deliveries.remove(&p.map(str::to_owned)) {
            Some(Txn::Deliver(d)) => d,
            Some(other @ (Txn::Push(_) | Txn::KeyPublish)) => {
                self.deliveries.insert(p.map(str::to_owned), other);
                self.say(
                    p,
                    Reply::new(420, "This transaction takes one DATA block and no DONE."),
                );
                return;
            }
            None => {
                self.say(
                    p,
                    Reply::new(420, "No delivery in progress on this pipeline."),
                );
                return;
            }
        };
        if txn.parts.is_empty() {
            self.say(p, Reply::new(421, "No DATA given; nothing to deliver."));
            return;
        }
        if !txn.parts.iter().any(|part| part.content) {
            if let Some(first) = txn.parts.first_mut() {
                first.content = true;
            }
        }
        let mut message = Message::new(account.address.clone(), txn.recipients, txn.subject, "");
        message.parts = txn.parts;
        message.importance = txn.importance;
        message.trace.push(TraceHop {
            protocol: PROTOCOL.into(),
            peer: self.peer.ip().to_string(),
            at: now_ms(),
        });
        let id = message.id;
        let origin = Origin {
            protocol: PROTOCOL,
            submitter: Submitter::Account(account.clone()),
        };
        let reply = match self.server.core.submit(message, &origin, None).await {
            Ok(_) => Reply::new(273, format!("{id} Message accepted")),
            Err(e @ SubmitError::UnknownRecipient(_)) => Reply::new(441, format!("{e}.")),
            Err(e @ SubmitError::RelayDenied(_)) => Reply::new(442, format!("{e}.")),
            Err(e @ SubmitError::TooLarge { .. }) => Reply::new(443, format!("{e}.")),
            Err(e @ SubmitError::TooManyRecipients(..)) => Reply::new(447, format!("{e}.")),
            Err(e @ SubmitError::SenderMismatch(_)) => Reply::new(403, format!("{e}.")),
            Err(e @ (SubmitError::NoRecipients | SubmitError::StampSpent)) => {
                Reply::new(401, format!("{e}."))
            }
            Err(e @ SubmitError::Store(_)) => Reply::new(750, format!("{e}; try again.")),
        };
        self.say(p, reply);
    }

    /// A node named in a command: `name` (own domain), `name@domain`, or the draft's
    /// `name@domain/sub` (= `name/sub@domain`).
    fn node_address(&self, text: &str) -> Result<Address, Reply> {
        let bad = |e: String| Reply::new(446, format!("Invalid node {text}: {e}."));
        if !text.contains('@') {
            return Address::parse_imid(&format!("{text}@{}", self.server.domain))
                .map_err(|e| bad(e.to_string()));
        }
        let r = ImidRef::parse(text).map_err(|e| bad(e.to_string()))?;
        match r.mailbox {
            None => Ok(r.address.account()),
            Some(sub) => {
                let mut a = r.address.account();
                a.node.push(a.local.clone());
                let mut segs: Vec<&str> = sub.split('/').collect();
                a.local = segs.pop().unwrap_or_default().to_owned();
                a.node.extend(segs.into_iter().map(str::to_owned));
                Ok(a)
            }
        }
    }

    async fn publish(&mut self, p: Option<&str>, node: &str, title: Option<String>) {
        let Phase::Local(account) = &self.phase else {
            return;
        };
        if node.contains('@') {
            self.say(
                p,
                Reply::new(
                    401,
                    "PUBLISH takes a node name; it is published on this domain.",
                ),
            );
            return;
        }
        let addr = match self.node_address(node) {
            Ok(a) => a,
            Err(r) => return self.say(p, r),
        };
        let title = title.unwrap_or_else(|| addr.to_string());
        let reply = match self
            .server
            .core
            .store
            .create_node(account.id, &addr, &title)
            .await
        {
            Ok(()) => Reply::new(260, format!("Node {addr} published.")),
            Err(mailgate_core::StoreError::Exists(_)) => {
                Reply::new(460, format!("Node {addr} exists already."))
            }
            Err(e) => Reply::new(750, format!("Temporary failure: {e}.")),
        };
        self.say(p, reply);
    }

    /// A local node this session's account owns, or the reply saying why not.
    async fn owned_node(&self, addr: &Address) -> Result<(), Reply> {
        let owner = match &self.phase {
            Phase::Local(a) => Some(a.id),
            _ => None,
        };
        match self.server.core.store.node(addr).await {
            Ok(Some(n)) if Some(n.owner) == owner => Ok(()),
            Ok(Some(_)) => Err(Reply::new(403, format!("You do not own {addr}."))),
            Ok(None) => Err(Reply::new(405, format!("No node {addr}."))),
            Err(e) => Err(Reply::new(750, format!("Temporary failure: {e}."))),
        }
    }

    async fn publish_to(&mut self, p: Option<&str>, node: &str) {
        let addr = match self.node_address(node) {
            Ok(a) => a,
            Err(r) => return self.say(p, r),
        };
        if let Err(r) = self.owned_node(&addr).await {
            return self.say(p, r);
        }
        let to = match self.server.core.store.subscribers(&addr).await {
            Ok(s) => s,
            Err(e) => return self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
        };
        self.deliveries.insert(
            p.map(str::to_owned),
            Txn::Push(PushTxn {
                from: addr,
                to,
                importance: Importance::Normal,
            }),
        );
        self.say(p, Reply::new(275, "Ready for the push DATA."));
    }

    async fn subscribe(&mut self, p: Option<&str>, node: &str) {
        let Phase::Local(account) = &self.phase else {
            return;
        };
        let account = account.id;
        let addr = match self.node_address(node) {
            Ok(a) => a,
            Err(r) => return self.say(p, r),
        };
        let store = &self.server.core.store;
        let title = if self.server.core.policy.is_local(&addr.domain) {
            match store.node(&addr).await {
                Ok(Some(n)) => n.title,
                Ok(None) => return self.say(p, Reply::new(405, format!("No node {addr}."))),
                Err(e) => return self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
            }
        } else {
            addr.to_string()
        };
        self.say(
            p,
            Reply::new(380, format!("Subscription request for {addr} initiated.")),
        );
        match store.subscribe(account, &addr, &title).await {
            Ok(s) => self.say(p, Reply::new(280, format!("Subscribed to: {}", s.title))),
            Err(e) => self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
        }
    }

    async fn subscribe_list(&mut self, p: Option<&str>) {
        let Phase::Local(account) = &self.phase else {
            return;
        };
        match self.server.core.store.subscriptions(account.id).await {
            Ok(subs) => {
                if !subs.is_empty() {
                    let lines = subs
                        .iter()
                        .map(|s| format!("{} {}", s.id, s.node))
                        .collect();
                    self.say(p, Reply { code: 281, lines });
                }
                self.say(p, Reply::new(282, format!("{} subscriptions.", subs.len())));
            }
            Err(e) => self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
        }
    }

    async fn unsubscribe(&mut self, p: Option<&str>, what: &str) {
        let Phase::Local(account) = &self.phase else {
            return;
        };
        let key = match self.node_address(what) {
            Ok(a) if what.contains('@') => a.account_key(),
            _ => what.to_owned(),
        };
        match self.server.core.store.unsubscribe(account.id, &key).await {
            Ok(true) => self.say(p, Reply::new(283, format!("Unsubscribed from {what}."))),
            Ok(false) => self.say(p, Reply::new(405, format!("No subscription {what}."))),
            Err(e) => self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
        }
    }

    async fn push(&mut self, p: Option<&str>, to: &str, from: &str, important: bool) {
        let to = match Address::parse_imid(to) {
            Ok(a) => a,
            Err(e) => return self.say(p, Reply::new(446, format!("Invalid recipient {to}: {e}."))),
        };
        let from = match self.node_address(from) {
            Ok(a) => a,
            Err(r) => return self.say(p, r),
        };
        if self.server.core.policy.is_local(&from.domain) {
            if let Err(r) = self.owned_node(&from).await {
                return self.say(p, r);
            }
        }
        let store = &self.server.core.store;
        let account = match store.account(&to).await {
            Ok(Some(a)) if self.server.core.policy.is_local(&to.domain) => a,
            Ok(_) => return self.say(p, Reply::new(441, format!("No such user here: {to}."))),
            Err(e) => return self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
        };
        let subscribed = match store.subscriptions(account.id).await {
            Ok(subs) => subs.iter().any(|s| s.node.same_account(&from)),
            Err(e) => return self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
        };
        if !subscribed {
            return self.say(
                p,
                Reply::new(430, format!("{to} is not subscribed to {from}.")),
            );
        }
        self.deliveries.insert(
            p.map(str::to_owned),
            Txn::Push(PushTxn {
                from,
                to: vec![account.address],
                importance: if important {
                    Importance::High
                } else {
                    Importance::Normal
                },
            }),
        );
        self.say(p, Reply::new(275, "Ready for the push DATA."));
    }

    /// Store a push for every recipient (PUSH folder, bypassing the inbox) and show it to their
    /// open sessions.
    async fn deliver_push(&mut self, push: PushTxn, spec: PartSpec, data: Vec<u8>) -> Reply {
        let max = self.server.core.policy.max_recipients.max(1);
        let mut delivered = 0;
        let mut last_id = None;
        for chunk in push.to.chunks(max) {
            let mut m = Message::new(push.from.clone(), chunk.to_vec(), "", "");
            m.kind = MessageKind::Push;
            m.importance = push.importance;
            m.parts = vec![Part {
                name: spec.name.clone().unwrap_or_else(|| "push".into()),
                media_type: spec
                    .media_type
                    .clone()
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
                data: Bytes::from(data.clone()),
                content: true,
            }];
            m.trace.push(TraceHop {
                protocol: PROTOCOL.into(),
                peer: self.peer.ip().to_string(),
                at: now_ms(),
            });
            let live = crate::mailbox::push_json(&m).to_string();
            let origin = Origin {
                protocol: PROTOCOL,
                submitter: Submitter::Peer(self.peer.ip()),
            };
            let id = m.id;
            match self.server.core.submit(m, &origin, None).await {
                Ok(receipt) => {
                    delivered += receipt.local.len();
                    last_id = Some(id);
                    self.server.notify(&receipt.local_accounts, &live);
                }
                Err(e) => return Reply::new(750, format!("Push not stored: {e}.")),
            }
        }
        match last_id {
            Some(id) => Reply::new(
                274,
                format!("{id} Push delivered to {delivered} recipients."),
            ),
            None => Reply::new(274, "- Push delivered to 0 recipients."),
        }
    }

    async fn set(&mut self, p: Option<&str>, global: bool, key: &str, value: Option<String>) {
        if key != "COMPRESSION" {
            return self.say(
                p,
                Reply::new(
                    401,
                    format!("Unknown setting {key}; supported: COMPRESSION."),
                ),
            );
        }
        let Some(value) = value else {
            let now = if self.gzip { "GZIP" } else { "NONE" };
            return self.say(
                p,
                Reply::new(220, format!("COMPRESSION={now} (supported: NONE GZIP)")),
            );
        };
        let gzip = match value.as_str() {
            "GZIP" => true,
            "NONE" => false,
            other => {
                return self.say(
                    p,
                    Reply::new(
                        401,
                        format!("COMPRESSION={other} is not supported: NONE GZIP."),
                    ),
                )
            }
        };
        if global {
            let Phase::Local(account) = &self.phase else {
                return;
            };
            if let Err(e) = self
                .server
                .core
                .store
                .set_secret(account.id, COMPRESSION_SETTING, value.as_bytes())
                .await
            {
                return self.say(p, Reply::new(750, format!("Temporary failure: {e}.")));
            }
        }
        self.gzip = gzip;
        let scope = if global { " (account default)" } else { "" };
        self.say(p, Reply::new(220, format!("COMPRESSION={value}{scope}")));
    }

    /// KEY PUBLISH's DATA: the authenticated account's own public key.
    async fn publish_key(&mut self, data: Vec<u8>) -> Reply {
        let Phase::Local(account) = &self.phase else {
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
            Err(e) => return Reply::new(750, format!("Temporary failure: {e}.")),
        };
        let record = mailgate_core::store::PublicKeyRecord {
            address: account.address.clone(),
            fingerprint: key.fingerprint.clone(),
            armored,
        };
        match self.server.core.store.put_key(record).await {
            Ok(()) => Reply::new(
                232,
                format!(
                    "Key published for {} (fingerprint {}).",
                    account.address, key.fingerprint
                ),
            ),
            Err(e) => Reply::new(750, format!("Temporary failure: {e}.")),
        }
    }

    async fn key_request(&mut self, p: Option<&str>, target: &str) {
        let address = match Address::parse_imid(target) {
            Ok(a) => a,
            Err(_) if !target.contains('@') => {
                let ours = target.eq_ignore_ascii_case(&self.server.domain)
                    || self.server.core.policy.is_local(target);
                match (&self.server.domain_key, ours) {
                    (Some(k), true) => {
                        self.say(
                            p,
                            Reply::new(
                                230,
                                format!("Public key for {target} (fingerprint {}):", k.fingerprint),
                            ),
                        );
                        let lines = k.armored.lines().map(str::to_owned).collect();
                        self.say(p, Reply { code: 231, lines });
                    }
                    _ => self.say(p, Reply::new(405, format!("No domain key for {target}."))),
                }
                return;
            }
            Err(e) => {
                self.say(p, Reply::new(446, format!("Invalid IMID {target}: {e}.")));
                return;
            }
        };
        match self.server.core.store.key(&address).await {
            Ok(Some(k)) => {
                self.say(
                    p,
                    Reply::new(
                        230,
                        format!(
                            "Public key for {} (fingerprint {}):",
                            k.address, k.fingerprint
                        ),
                    ),
                );
                self.say(
                    p,
                    Reply {
                        code: 231,
                        lines: k.armored.lines().map(str::to_owned).collect(),
                    },
                );
            }
            Ok(None) => self.say(p, Reply::new(405, format!("No public key for {address}."))),
            Err(e) => self.say(p, Reply::new(750, format!("Temporary failure: {e}."))),
        }
    }
}

/// Decode a payload: base64 (white space ignored) when asked, then gunzip when the session
/// compresses (at most `max` bytes come out of a gzip stream).
fn decode(payload: Vec<u8>, base64: bool, gzip: bool, max: usize) -> Result<Vec<u8>, String> {
    if !base64 {
        return Ok(payload);
    }
    let compact: Vec<u8> = payload
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| e.to_string())?;
    if !gzip {
        return Ok(raw);
    }
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not a gzip stream ({e})"))?;
    if out.len() > max {
        return Err(format!("decompresses to more than {max} bytes"));
    }
    Ok(out)
}

/// The options of one DATA command.
struct PartSpec {
    name: Option<String>,
    media_type: Option<String>,
    length: Option<u64>,
    base64: bool,
    content: bool,
}

enum PayloadError {
    Io,
    TooLarge,
    Unbounded,
    LengthMismatch,
}

/// Read a DATA payload: exactly `length` octets followed by a line end, or (without LENGTH)
/// lines up to two consecutive blank lines. Oversized payloads are read and discarded to stay in
/// sync, up to twice the limit; beyond that the connection is closed.
async fn read_payload(
    io: &mut Stream,
    length: Option<u64>,
    max: usize,
) -> Result<Vec<u8>, PayloadError> {
    let hard = (max as u64).saturating_mul(2);
    match length {
        Some(n) if n > hard => Err(PayloadError::Unbounded),
        Some(n) => {
            let mut data = Vec::with_capacity(n.min(max as u64) as usize);
            (&mut *io)
                .take(n)
                .read_to_end(&mut data)
                .await
                .map_err(|_| PayloadError::Io)?;
            if (data.len() as u64) < n {
                return Err(PayloadError::Io);
            }
            // The payload must end where LENGTH says: next comes a line end.
            let next = io.fill_buf().await.map_err(|_| PayloadError::Io)?;
            match next.first() {
                Some(b'\n') => io.consume(1),
                Some(b'\r') if next.get(1) == Some(&b'\n') => io.consume(2),
                None => {}
                Some(_) => {
                    // Discard the rest of that line so the session stays in sync.
                    let _ = read_line(io).await;
                    return Err(PayloadError::LengthMismatch);
                }
            }
            if data.len() > max {
                return Err(PayloadError::TooLarge);
            }
            Ok(data)
        }
        None => {
            let mut lines: Vec<Vec<u8>> = Vec::new();
            let mut total = 0usize;
            loop {
                let mut line = Vec::new();
                let n = (&mut *io)
                    .take(MAX_LINE as u64 * 128)
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|_| PayloadError::Io)?;
                if n == 0 {
                    return Err(PayloadError::Io);
                }
                total += n;
                if total as u64 > hard {
                    return Err(PayloadError::Unbounded);
                }
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if line.is_empty() && lines.last().is_some_and(Vec::is_empty) {
                    lines.pop();
                    break;
                }
                lines.push(line);
            }
            let data = lines.join(&b'\n');
            if data.len() > max {
                return Err(PayloadError::TooLarge);
            }
            Ok(data)
        }
    }
}
