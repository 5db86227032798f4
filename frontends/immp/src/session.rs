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
use mailgate_core::{
    Address, Core, ImidRef, Importance, Message, Origin, Part, SubmitError, Submitter, TraceHop,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Longest command line (the profile's 8 KiB).
pub const MAX_LINE: usize = 8 * 1024;
/// How long AUTH SECRET nonces stay valid.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// Protocol name in metrics and traces.
pub const PROTOCOL: &str = "immp";

/// The IMMP front-end: shared by every connection.
pub struct ImmpServer {
    core: Arc<Core>,
    domain: String,
    tls: TlsAcceptor,
    tls13: TlsAcceptor,
    read_timeout: Duration,
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
    deliveries: HashMap<Option<String>, Delivery>,
    out: String,
}

impl ImmpServer {
    /// A front-end for `domain`: `tls` accepts TLS 1.2 and 1.3 (`UPGRADE TLS`/`TLS2`), `tls13`
    /// only TLS 1.3 (`UPGRADE TLS3`).
    pub fn new(
        core: Arc<Core>,
        domain: String,
        tls: TlsAcceptor,
        tls13: TlsAcceptor,
        read_timeout: Duration,
    ) -> Self {
        ImmpServer {
            core,
            domain,
            tls,
            tls13,
            read_timeout,
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
        };
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = io.get_mut().write_all(b"702 Server shutting down.\n").await;
                    break;
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
            (Phase::Unauthenticated, k) => {
                matches!(
                    k,
                    CommandKind::AuthSecret { .. } | CommandKind::AuthResponse(_)
                )
            }
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
            CommandKind::MboxCheck { .. }
            | CommandKind::MboxIndex { .. }
            | CommandKind::MboxFetch { .. }
            | CommandKind::MboxCreate(_)
            | CommandKind::MboxDelete(_)
            | CommandKind::MboxMove { .. } => {
                if let Phase::Local(account) = &self.phase {
                    let replies = mailbox::run(&self.server.core, account, cmd.kind).await;
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
            Delivery {
                recipients: parsed,
                importance: match important {
                    Some(true) => Importance::High,
                    Some(false) => Importance::Low,
                    None => Importance::Normal,
                },
                subject: String::new(),
                parts: Vec::new(),
                size: 0,
            },
        );
        self.say(
            p,
            Reply::new(270, "Ok, ready to deliver. Give me your DATA."),
        );
    }

    async fn data(&mut self, p: Option<&str>, spec: PartSpec, io: &mut Stream) -> Option<Next> {
        let label = spec.name.clone().unwrap_or_else(|| "part".into());
        let max = self.server.core.policy.max_message_size;
        let in_txn = self.deliveries.contains_key(&p.map(str::to_owned));
        if in_txn && matches!(self.phase, Phase::Local(_)) {
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
        if !matches!(self.phase, Phase::Local(_)) {
            self.say(p, Reply::new(403, "Authenticate first."));
            return None;
        }
        let Some(txn) = self.deliveries.get_mut(&p.map(str::to_owned)) else {
            self.say(
                p,
                Reply::new(420, "No delivery in progress on this pipeline."),
            );
            return None;
        };
        let data = if spec.base64 {
            let compact: Vec<u8> = payload
                .into_iter()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            match base64::engine::general_purpose::STANDARD.decode(compact) {
                Ok(d) => d,
                Err(e) => {
                    self.say(p, Reply::new(444, format!("Bad base64: {e}.")));
                    return None;
                }
            }
        } else {
            payload
        };
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
        None
    }

    async fn done(&mut self, p: Option<&str>) {
        let Phase::Local(account) = &self.phase else {
            return;
        };
        let Some(mut txn) = self.deliveries.remove(&p.map(str::to_owned)) else {
            self.say(
                p,
                Reply::new(420, "No delivery in progress on this pipeline."),
            );
            return;
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

    async fn key_request(&mut self, p: Option<&str>, target: &str) {
        let address = match Address::parse_imid(target) {
            Ok(a) => a,
            Err(_) if !target.contains('@') => {
                self.say(
                    p,
                    Reply::new(405, format!("No domain key published for {target}.")),
                );
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
