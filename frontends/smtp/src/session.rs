//! One inbound SMTP session (RFC 5321 with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES,
//! SMTPUTF8, STARTTLS and CHUNKING): commands read with a length limit and a timeout, replies
//! batched while the client has pipelined more commands, `250` after the final dot (or the
//! last chunk) only once the message is durably stored.

use crate::auth::{self, Findings, Transaction};
use crate::chunking::{self, Chunks};
use crate::command::{self, Command, CommandError, MailParams, Mechanism, MAX_COMMAND_LINE};
use crate::mime;
use crate::reply::Reply;
use crate::sasl;
use crate::SmtpServer;
use bytes::Bytes;
use mailgate_core::budget::{MemoryBudget, Reservation};
use mailgate_core::io::{BoxedIo, ConnState};
use mailgate_core::login::FAILURES_PER_CONNECTION;
use mailgate_core::message::{SenderCheck, TraceHop};
use mailgate_core::store::Account;
use mailgate_core::{Address, LoginError, Origin, SubmitError, Submitter};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Refusals after which the session is closed (RFC 5321 §4.3.2 lets a server give up);
/// Postfix's `smtpd_hard_error_limit` is the same.
const MAX_ERRORS: u32 = 20;

/// A transaction under way: after `MAIL`, collecting `RCPT`s.
struct Envelope {
    from: Option<Address>,
    params: MailParams,
    recipients: Vec<Address>,
}

/// How a line read ended.
enum Line {
    /// A whole line (its CRLF or LF stripped).
    Text(Vec<u8>),
    /// Longer than the limit; the rest of it was read and dropped.
    TooLong,
    /// The peer closed the connection.
    Closed,
}

pub(crate) struct Session<'a> {
    server: &'a SmtpServer,
    peer: SocketAddr,
    tls: bool,
    helo: Option<String>,
    envelope: Option<Envelope>,
    /// The `BDAT` chunks of the transaction's message, once the first one came.
    chunks: Option<Chunks>,
    errors: u32,
    out: Vec<u8>,
    /// The account that authenticated (submission only).
    account: Option<Account>,
    failed_logins: u32,
}

impl<'a> Session<'a> {
    pub(crate) fn new(server: &'a SmtpServer, peer: SocketAddr, tls: bool) -> Self {
        Session {
            server,
            peer,
            tls,
            helo: None,
            envelope: None,
            chunks: None,
            errors: 0,
            out: Vec::new(),
            account: None,
            failed_logins: 0,
        }
    }

    /// Run until the peer quits, times out, errs too often, or `shutdown` fires.
    pub(crate) async fn run(
        mut self,
        stream: BoxedIo,
        shutdown: CancellationToken,
        state: Arc<ConnState>,
    ) {
        let mut io = BufReader::new(stream);
        self.push(Reply::new(
            220,
            None,
            format!("{} ESMTP mailgate", self.server.hostname),
        ));
        loop {
            // Replies wait while the client has pipelined more commands (RFC 2920).
            if io.buffer().is_empty() && !self.flush(&mut io).await {
                return;
            }
            let line = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.push(Reply::new(421, Some("4.3.2"), "shutting down, try again later"));
                    break;
                }
                r = tokio::time::timeout(self.server.read_timeout, read_line(&mut io, MAX_COMMAND_LINE)) => r,
            };
            let line = match line {
                Err(_) => {
                    self.push(Reply::new(421, Some("4.4.2"), "timeout, closing"));
                    break;
                }
                Ok(Err(_)) | Ok(Ok(Line::Closed)) => return,
                Ok(Ok(Line::TooLong)) => {
                    self.error(Reply::new(500, Some("5.5.2"), "line too long"));
                    continue;
                }
                Ok(Ok(Line::Text(bytes))) => bytes,
            };
            state.touch();
            let reply = match std::str::from_utf8(&line) {
                Err(_) => Reply::new(500, Some("5.5.2"), "command is not UTF-8"),
                Ok(text) => match command::parse(text) {
                    Ok(Command::Quit) => {
                        self.push(Reply::new(221, Some("2.0.0"), "bye"));
                        break;
                    }
                    Ok(Command::Auth { mechanism, initial }) => {
                        match self.auth(&mut io, mechanism, initial).await {
                            Some(reply) => reply,
                            None => return,
                        }
                    }
                    Ok(Command::Data) => match self.data(&mut io).await {
                        Some(reply) => reply,
                        None => return,
                    },
                    Ok(Command::Bdat { size, last }) => {
                        match self.bdat(&mut io, size, last).await {
                            Some(reply) => reply,
                            None => return,
                        }
                    }
                    Err(CommandError::BadChunk) => {
                        // What follows cannot be told from commands: end the session.
                        self.push(syntax_reply(CommandError::BadChunk));
                        break;
                    }
                    Ok(Command::StartTls) => {
                        if let Err(reply) = self.may_start_tls() {
                            reply
                        } else {
                            self.push(Reply::new(220, Some("2.0.0"), "ready to start TLS"));
                            if !self.flush(&mut io).await {
                                return;
                            }
                            match self.start_tls(io).await {
                                Some(upgraded) => {
                                    io = upgraded;
                                    continue;
                                }
                                None => return,
                            }
                        }
                    }
                    Ok(c) => self.command(c).await,
                    Err(e) => syntax_reply(e),
                },
            };
            if reply.code >= 500 {
                self.error(reply);
            } else {
                self.push(reply);
            }
            if self.account.is_some() {
                state.set_authenticated();
            }
            if self.failed_logins >= FAILURES_PER_CONNECTION {
                self.push(Reply::new(
                    421,
                    Some("4.7.0"),
                    "too many failed logins, closing",
                ));
                break;
            }
            if self.errors >= MAX_ERRORS {
                self.push(Reply::new(421, Some("4.7.0"), "too many errors, closing"));
                break;
            }
        }
        if self.flush(&mut io).await {
            let _ = io.get_mut().shutdown().await;
        }
    }

    fn push(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
    }

    fn error(&mut self, reply: Reply) {
        self.errors += 1;
        self.push(reply);
    }

    /// Send the batched replies; false when the peer is gone or stopped reading.
    async fn flush(&mut self, io: &mut BufReader<BoxedIo>) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        let sent = async {
            io.get_mut().write_all(&out).await?;
            io.get_mut().flush().await
        };
        matches!(
            tokio::time::timeout(self.server.read_timeout, sent).await,
            Ok(Ok(()))
        )
    }

    async fn command(&mut self, c: Command) -> Reply {
        match c {
            Command::Ehlo(domain) => {
                self.helo = Some(domain.clone());
                self.reset();
                let mut lines = vec![
                    format!("{} greets {domain}", self.server.hostname),
                    "PIPELINING".to_owned(),
                    format!("SIZE {}", self.server.core.policy.max_message_size),
                    "8BITMIME".to_owned(),
                    "ENHANCEDSTATUSCODES".to_owned(),
                    "SMTPUTF8".to_owned(),
                    "CHUNKING".to_owned(),
                ];
                if self.server.tls.is_some() && !self.tls {
                    lines.push("STARTTLS".to_owned());
                }
                if self.server.submission && self.tls && self.account.is_none() {
                    lines.push("AUTH PLAIN LOGIN".to_owned());
                }
                Reply::lines(250, None, lines)
            }
            Command::Helo(domain) => {
                self.reset();
                let text = format!("{} greets {domain}", self.server.hostname);
                self.helo = Some(domain);
                Reply::new(250, None, text)
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt(to) => self.rcpt(to).await,
            Command::Rset => {
                self.reset();
                Reply::new(250, Some("2.0.0"), "reset")
            }
            Command::Noop => Reply::new(250, Some("2.0.0"), "ok"),
            Command::Help => Reply::new(
                214,
                Some("2.0.0"),
                "commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS HELP (RFC 5321)",
            ),
            // Nothing about accounts is told to strangers (RFC 5321 §3.5.3 allows 252).
            Command::Vrfy => Reply::new(252, Some("2.5.2"), "cannot verify; send mail to try"),
            Command::Expn => Reply::new(502, Some("5.5.1"), "EXPN is not offered"),
            // The session loop runs these itself.
            Command::Quit
            | Command::Data
            | Command::Bdat { .. }
            | Command::StartTls
            | Command::Auth { .. } => Reply::new(503, Some("5.5.1"), "bad sequence of commands"),
        }
    }

    /// End the transaction under way, if any.
    fn reset(&mut self) {
        self.envelope = None;
        self.chunks = None;
    }

    fn mail(&mut self, from: Option<Address>, params: MailParams) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, Some("5.5.1"), "say EHLO first");
        }
        if self.envelope.is_some() {
            return Reply::new(503, Some("5.5.1"), "a transaction is under way; RSET first");
        }
        let max = self.server.core.policy.max_message_size as u64;
        if params.size.is_some_and(|s| s > max) {
            return Reply::new(
                552,
                Some("5.3.4"),
                format!("message too large: this server accepts {max} bytes"),
            );
        }
        if self.server.submission {
            let Some(account) = &self.account else {
                return Reply::new(530, Some("5.7.0"), "authentication required");
            };
            match &from {
                Some(f) if f.same_account(&account.address) => {}
                _ => {
                    return Reply::new(
                        553,
                        Some("5.7.1"),
                        format!("send as yourself: {}", account.address),
                    )
                }
            }
        } else if let Some(from) = &from {
            if self.server.core.policy.is_local(&from.domain) {
                // Its owner sends through the submission port, authenticated.
                return Reply::new(
                    550,
                    Some("5.7.1"),
                    format!("{from} is an address of this server: authenticate to send as it"),
                );
            }
            if !params.utf8 && !from.to_string().is_ascii() {
                return Reply::new(553, Some("5.6.7"), "a UTF-8 address needs SMTPUTF8");
            }
        }
        self.envelope = Some(Envelope {
            from,
            params,
            recipients: Vec::new(),
        });
        Reply::new(250, Some("2.1.0"), "sender ok")
    }

    async fn rcpt(&mut self, mut to: Address) -> Reply {
        let Some(envelope) = &self.envelope else {
            return Reply::new(503, Some("5.5.1"), "MAIL first");
        };
        if self.chunks.is_some() {
            return Reply::new(503, Some("5.5.1"), "recipients go before the first BDAT");
        }
        if !envelope.params.utf8 && !to.to_string().is_ascii() {
            return Reply::new(553, Some("5.6.7"), "a UTF-8 address needs SMTPUTF8");
        }
        if envelope.recipients.len() >= self.server.core.policy.max_recipients {
            return Reply::new(452, Some("4.5.3"), "too many recipients");
        }
        if to.domain == "localhost" && to.local.eq_ignore_ascii_case("postmaster") {
            // `<Postmaster>` alone: this server's postmaster.
            match Address::new("postmaster", &self.server.hostname) {
                Ok(a) => to = a,
                Err(_) => return Reply::new(550, Some("5.1.1"), "no postmaster here"),
            }
        }
        if !self.server.core.policy.is_local(&to.domain) {
            if self.account.is_some() {
                // An authenticated user sends anywhere.
                if let Some(envelope) = &mut self.envelope {
                    envelope.recipients.push(to);
                }
                return Reply::new(250, Some("2.1.5"), "recipient ok");
            }
            return Reply::new(
                550,
                Some("5.7.1"),
                format!("relaying to {} denied", to.domain),
            );
        }
        match self.server.core.store.account(&to).await {
            Ok(Some(_)) => {}
            // A domain without its own postmaster: the configured one (RFC 5321 §4.5.1).
            Ok(None) if to.local.eq_ignore_ascii_case("postmaster") && to.node.is_empty() => {
                match &self.server.postmaster {
                    Some(p) => to = p.clone(),
                    None => return Reply::new(550, Some("5.1.1"), format!("no such user: {to}")),
                }
            }
            Ok(None) => return Reply::new(550, Some("5.1.1"), format!("no such user: {to}")),
            Err(e) => {
                tracing::warn!(error = %e, "smtp: account lookup failed");
                return Reply::new(451, Some("4.3.0"), "temporary failure, try again later");
            }
        }
        if let Some(envelope) = &mut self.envelope {
            envelope.recipients.push(to);
        }
        Reply::new(250, Some("2.1.5"), "recipient ok")
    }

    /// `DATA`: `None` when the connection is gone.
    async fn data(&mut self, io: &mut BufReader<BoxedIo>) -> Option<Reply> {
        match &self.envelope {
            None => return Some(Reply::new(503, Some("5.5.1"), "MAIL first")),
            Some(e) if e.recipients.is_empty() => {
                return Some(Reply::new(554, Some("5.5.1"), "no valid recipients"))
            }
            Some(_) if self.chunks.is_some() => {
                return Some(Reply::new(
                    503,
                    Some("5.5.1"),
                    "the message is being sent with BDAT",
                ))
            }
            Some(_) => {}
        }
        self.push(Reply::new(354, None, "end data with <CR><LF>.<CR><LF>"));
        if !self.flush(io).await {
            return None;
        }
        let max = self.server.core.policy.max_message_size;
        let read = read_data(io, max, &self.server.core.budget);
        let body = match tokio::time::timeout(self.server.data_timeout, read).await {
            Err(_) => {
                self.push(Reply::new(421, Some("4.4.2"), "timeout in DATA, closing"));
                let _ = self.flush(io).await;
                return None;
            }
            Ok(Err(_)) => return None,
            Ok(Ok(body)) => body,
        };
        let envelope = self.envelope.take()?;
        Some(self.finish(envelope, body).await)
    }

    /// `BDAT` (RFC 3030): `None` when the connection is gone. The chunk's octets are read
    /// whatever the reply; a refused chunk fails the transaction, and chunks the client
    /// pipelined after it are read and refused as outside any transaction.
    async fn bdat(&mut self, io: &mut BufReader<BoxedIo>, size: u64, last: bool) -> Option<Reply> {
        let refusal = match &self.envelope {
            None => Some(Reply::new(503, Some("5.5.1"), "MAIL first")),
            Some(e) if e.recipients.is_empty() => {
                Some(Reply::new(554, Some("5.5.1"), "no valid recipients"))
            }
            Some(_) => None,
        };
        let max = self.server.core.policy.max_message_size;
        let read = async {
            match refusal {
                Some(_) => chunking::skip(io, size).await,
                None => {
                    let budget = &self.server.core.budget;
                    let chunks = self.chunks.get_or_insert_with(|| Chunks::new(budget));
                    chunks.read(io, size, max).await
                }
            }
        };
        match tokio::time::timeout(self.server.data_timeout, read).await {
            Err(_) => {
                self.push(Reply::new(421, Some("4.4.2"), "timeout in BDAT, closing"));
                let _ = self.flush(io).await;
                return None;
            }
            Ok(Err(_)) => return None,
            Ok(Ok(())) => {}
        }
        if let Some(reply) = refusal {
            self.reset();
            return Some(reply);
        }
        if !last {
            if let Some(why) = self.chunks.as_ref().and_then(Chunks::refused) {
                let reply = refusal_reply(why, max);
                self.reset();
                return reply;
            }
            return Some(Reply::new(
                250,
                Some("2.0.0"),
                format!("{size} octets received"),
            ));
        }
        let envelope = self.envelope.take()?;
        let body = self.chunks.take()?.finish();
        Some(self.finish(envelope, body).await)
    }

    /// The reply to a whole message, from `DATA` or `BDAT … LAST`: stored (`250` once durable)
    /// or refused.
    async fn finish(&mut self, envelope: Envelope, body: Data) -> Reply {
        match body {
            Data::Message(raw, mut reservation) => {
                // Parsing makes the parts beside the raw bytes kept as the wire form.
                if reservation.grow_to(raw.len() * 3).await.is_err() {
                    busy()
                } else {
                    self.deliver(envelope, raw).await
                }
            }
            refused => refusal_reply(&refused, self.server.core.policy.max_message_size)
                .unwrap_or_else(busy),
        }
    }

    async fn deliver(&mut self, envelope: Envelope, raw: Vec<u8>) -> Reply {
        let helo = self.helo.clone().unwrap_or_default();
        let findings = match (&self.server.authenticator, &self.account) {
            (Some((authenticator, timeout)), None) => {
                let mail_from = envelope.from.as_ref().map(ToString::to_string);
                let t = Transaction {
                    hostname: &self.server.hostname,
                    ip: self.peer.ip(),
                    helo: &helo,
                    mail_from: mail_from.as_deref().unwrap_or(""),
                };
                let checked = tokio::time::timeout(*timeout, auth::check(authenticator, &t, &raw));
                Some(checked.await.unwrap_or_else(|_| Findings::timed_out(&t)))
            }
            _ => None,
        };
        if findings.as_ref().is_some_and(|f| f.dmarc_reject) {
            return Reply::new(
                550,
                Some("5.7.1"),
                "rejected: the DMARC policy of the From domain says reject, and the message \
                 failed it",
            );
        }
        // The null reverse path (bounces, RFC 5321 §4.5.5) has no address of its own.
        let sender = envelope.from.unwrap_or_else(|| {
            Address::new("mailer-daemon", &helo)
                .or_else(|_| Address::new("mailer-daemon", "invalid"))
                .expect("a valid fixed address")
        });
        let mut raw = self.with_trace_header(&helo, envelope.params.utf8, raw);
        if let Some(f) = &findings {
            raw.splice(0..0, f.header().into_bytes());
        }
        let mut message = mime::to_model(Bytes::from(raw), sender, envelope.recipients);
        if let Some(f) = findings {
            if f.spf_pass {
                // SPF ties the peer to the envelope sender's domain.
                message.security.sender_check = Some(SenderCheck::Domain);
            }
            message.security.authentication = Some(f.results);
        }
        message.trace.push(TraceHop {
            protocol: "smtp".into(),
            peer: self.peer.ip().to_string(),
            at: message.received_at,
        });
        let origin = Origin {
            protocol: "smtp",
            submitter: match &self.account {
                Some(account) => Submitter::Account(account.clone()),
                None => Submitter::Peer(self.peer.ip()),
            },
        };
        match self.server.core.submit(message, &origin, None).await {
            Ok(_) => Reply::new(250, Some("2.0.0"), "message accepted for delivery"),
            Err(e) => submit_reply(&e),
        }
    }

    /// The message with this server's `Received:` field in front (RFC 5321 §4.4; the
    /// protocol names of RFC 3848 and RFC 6531).
    fn with_trace_header(&self, helo: &str, utf8: bool, raw: Vec<u8>) -> Vec<u8> {
        let with = match (utf8, self.tls, self.account.is_some()) {
            (false, false, _) => "ESMTP",
            (false, true, false) => "ESMTPS",
            (false, true, true) => "ESMTPSA",
            (true, false, _) => "UTF8SMTP",
            (true, true, false) => "UTF8SMTPS",
            (true, true, true) => "UTF8SMTPSA",
        };
        // Only printable ASCII of the client's EHLO argument goes into the header.
        let helo: String = helo
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let date = httpdate::fmt_http_date(std::time::SystemTime::now()).replace(" GMT", " +0000");
        let mut out = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (mailgate) with {with};\r\n\t{date}\r\n",
            self.peer.ip(),
            self.server.hostname
        )
        .into_bytes();
        out.extend_from_slice(&raw);
        out
    }

    /// `AUTH` (RFC 4954): `None` when the connection is gone.
    async fn auth(
        &mut self,
        io: &mut BufReader<BoxedIo>,
        mechanism: Mechanism,
        initial: Option<String>,
    ) -> Option<Reply> {
        if !self.server.submission {
            return Some(Reply::new(
                503,
                Some("5.5.1"),
                "AUTH is offered on the submission port only",
            ));
        }
        if !self.tls {
            return Some(Reply::new(
                538,
                Some("5.7.11"),
                "encryption required: STARTTLS first",
            ));
        }
        if self.account.is_some() || self.envelope.is_some() || self.helo.is_none() {
            return Some(Reply::new(
                503,
                Some("5.5.1"),
                "AUTH goes once, after EHLO and before MAIL",
            ));
        }
        let credentials = match mechanism {
            Mechanism::Plain => {
                let response = match initial {
                    Some(r) => r,
                    None => match self.challenge(io, "").await? {
                        Ok(r) => r,
                        Err(reply) => return Some(reply),
                    },
                };
                sasl::plain(&response)
            }
            Mechanism::Login => {
                let user = match initial {
                    Some(r) => r,
                    None => match self.challenge(io, "VXNlcm5hbWU6").await? {
                        Ok(r) => r,
                        Err(reply) => return Some(reply),
                    },
                };
                let password = match self.challenge(io, "UGFzc3dvcmQ6").await? {
                    Ok(r) => r,
                    Err(reply) => return Some(reply),
                };
                sasl::field(&user).and_then(|u| Ok((u, sasl::field(&password)?)))
            }
        };
        let (user, password) = match credentials {
            Ok(c) => c,
            Err(e) => return Some(Reply::new(501, Some("5.5.2"), e.to_string())),
        };
        let Ok(address) = Address::parse_any(&user) else {
            self.failed_logins += 1;
            return Some(invalid_credentials());
        };
        match self
            .server
            .core
            .password_login("smtp", self.peer.ip(), &address, &password)
            .await
        {
            Ok(account) => {
                tracing::info!(account = %account.address, "smtp authenticated");
                self.account = Some(account);
                Some(Reply::new(235, Some("2.7.0"), "authentication successful"))
            }
            Err(LoginError::Refused) => {
                self.failed_logins += 1;
                Some(invalid_credentials())
            }
            Err(e) => Some(Reply::new(454, Some("4.7.0"), e.to_string())),
        }
    }

    /// Send a `334` challenge and read the client's response line: `Err` with the reply
    /// when it cancelled (`*`) or sent something unusable; `None` when the connection is gone.
    async fn challenge(
        &mut self,
        io: &mut BufReader<BoxedIo>,
        text: &str,
    ) -> Option<Result<String, Reply>> {
        self.push(Reply::new(334, None, text));
        if !self.flush(io).await {
            return None;
        }
        let line =
            tokio::time::timeout(self.server.read_timeout, read_line(io, sasl::MAX_RESPONSE))
                .await
                .ok()?
                .ok()?;
        Some(match line {
            Line::Closed => return None,
            Line::TooLong => Err(Reply::new(500, Some("5.5.6"), "response too long")),
            Line::Text(bytes) if bytes == b"*" => {
                Err(Reply::new(501, Some("5.0.0"), "authentication cancelled"))
            }
            Line::Text(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        })
    }

    fn may_start_tls(&self) -> Result<(), Reply> {
        if self.tls {
            return Err(Reply::new(503, Some("5.5.1"), "TLS is already on"));
        }
        if self.server.tls.is_none() {
            return Err(Reply::new(502, Some("5.5.1"), "STARTTLS is not offered"));
        }
        if self.envelope.is_some() {
            return Err(Reply::new(
                503,
                Some("5.5.1"),
                "a transaction is under way; RSET first",
            ));
        }
        Ok(())
    }

    /// The TLS handshake after `220`; what the client sent before it is dropped (RFC 3207
    /// §5: no command pipelined across STARTTLS counts), and the session starts over.
    async fn start_tls(&mut self, io: BufReader<BoxedIo>) -> Option<BufReader<BoxedIo>> {
        let acceptor = self.server.tls.clone()?;
        let stream = io.into_inner();
        let handshake =
            tokio::time::timeout(self.server.read_timeout, acceptor.accept(stream)).await;
        match handshake {
            Ok(Ok(tls)) => {
                self.tls = true;
                self.helo = None;
                self.envelope = None;
                Some(BufReader::new(Box::new(tls)))
            }
            _ => None,
        }
    }
}

fn invalid_credentials() -> Reply {
    Reply::new(535, Some("5.7.8"), "authentication credentials invalid")
}

/// The memory budget for bodies in flight is spent: a temporary failure, so the client
/// retries later.
fn busy() -> Reply {
    Reply::new(451, Some("4.3.2"), "server busy, try again later")
}

fn syntax_reply(e: CommandError) -> Reply {
    match e {
        CommandError::Unknown => Reply::new(500, Some("5.5.1"), "command not recognized"),
        CommandError::UnknownMechanism => Reply::new(
            504,
            Some("5.5.4"),
            "mechanism not offered: use PLAIN or LOGIN",
        ),
        CommandError::Syntax(why) => Reply::new(501, Some("5.5.4"), why),
        CommandError::BadChunk => Reply::new(501, Some("5.5.4"), "use BDAT size [LAST]; closing"),
        CommandError::BadAddress => Reply::new(501, Some("5.1.3"), "bad address syntax"),
        CommandError::UnknownParameter(p) => Reply::new(
            555,
            Some("5.5.4"),
            format!("parameter {p} is not supported"),
        ),
    }
}

/// The reply for a refused submission.
fn submit_reply(e: &SubmitError) -> Reply {
    match e {
        SubmitError::TooLarge { max, .. } => Reply::new(
            552,
            Some("5.3.4"),
            format!("message too large: this server accepts {max} bytes"),
        ),
        SubmitError::TooManyRecipients(..) => Reply::new(452, Some("4.5.3"), "too many recipients"),
        SubmitError::UnknownRecipient(a) => {
            Reply::new(550, Some("5.1.1"), format!("no such user: {a}"))
        }
        SubmitError::RelayDenied(_)
        | SubmitError::SenderMismatch(_)
        | SubmitError::LocalSenderUnauthenticated(_) => {
            Reply::new(550, Some("5.7.1"), e.to_string())
        }
        SubmitError::Store(_) => Reply::new(
            451,
            Some("4.3.0"),
            "temporary storage failure, try again later",
        ),
        SubmitError::NoRecipients | SubmitError::StampSpent => {
            Reply::new(554, Some("5.6.0"), e.to_string())
        }
    }
}

/// Read one line of at most `limit` bytes (its line end included); CRLF or a bare LF ends it.
async fn read_line(io: &mut BufReader<BoxedIo>, limit: usize) -> std::io::Result<Line> {
    Ok(read_line_ending(io, limit).await?.0)
}

/// [`read_line`], and whether the line ended with CRLF (false: a bare LF, or no line end).
async fn read_line_ending(
    io: &mut BufReader<BoxedIo>,
    limit: usize,
) -> std::io::Result<(Line, bool)> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut previous = None;
    loop {
        let buf = io.fill_buf().await?;
        if buf.is_empty() {
            return Ok((Line::Closed, false));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        // The byte before the LF, when this piece ends the line.
        let before_lf = match take {
            0 | 1 => previous,
            n => Some(buf[n - 2]),
        };
        previous = buf[..take].last().copied();
        if !too_long && line.len() + take <= limit {
            line.extend_from_slice(&buf[..take]);
        } else {
            too_long = true;
        }
        io.consume(take);
        if done {
            let crlf = before_lf == Some(b'\r');
            if too_long {
                return Ok((Line::TooLong, crlf));
            }
            line.pop();
            if crlf {
                line.pop();
            }
            return Ok((Line::Text(line), crlf));
        }
    }
}

/// The reply to a refused message; `None` for one that was not refused.
fn refusal_reply(data: &Data, max: usize) -> Option<Reply> {
    Some(match data {
        Data::Message(..) => return None,
        Data::TooLarge => Reply::new(
            552,
            Some("5.3.4"),
            format!("message too large: this server accepts {max} bytes"),
        ),
        Data::Busy => busy(),
        // RFC 5321 §2.3.8: lines end with CRLF; a server that took bare LFs could be made
        // to see two messages where the next hop sees one (SMTP smuggling).
        Data::BareLf => Reply::new(
            550,
            Some("5.6.0"),
            "bare LF in the message: end every line with CRLF",
        ),
    })
}

/// What a message's octets (after `354`, or in `BDAT` chunks) turned out to be.
pub(crate) enum Data {
    /// The message, dot-unstuffed, with the memory reservation covering it.
    Message(Vec<u8>, Reservation),
    /// Larger than the limit (the rest was read and dropped).
    TooLarge,
    /// The memory budget for bodies in flight had no room for it (read and dropped too).
    Busy,
    /// A line ended with a bare LF (read to the real end and dropped).
    BareLf,
}

/// The message after `354`, dot-unstuffed, up to the line holding one dot (ended by CRLF: a
/// message with a bare LF is read to that end and refused). Its bytes are
/// reserved in the shared memory budget before they are kept; a message over `max` or over
/// the budget is read to its end and dropped, so the session goes on.
async fn read_data(
    io: &mut BufReader<BoxedIo>,
    max: usize,
    budget: &MemoryBudget,
) -> std::io::Result<Data> {
    let mut data = Vec::new();
    let mut reservation = budget.start();
    let mut refused: Option<Data> = None;
    loop {
        // A line longer than what is left of the limit is dropped whole.
        let room = if refused.is_some() {
            3
        } else {
            (max + 3 - data.len()).max(3)
        };
        match read_line_ending(io, room).await? {
            (Line::Closed, _) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed in DATA",
                ))
            }
            (Line::TooLong, _) => {
                refused.get_or_insert(Data::TooLarge);
            }
            // Only CRLF.CRLF ends the data: a dot line with a bare LF does not (SMTP smuggling).
            (Line::Text(line), true) if line == b"." => break,
            (Line::Text(line), crlf) => {
                if refused.is_some() {
                    continue;
                }
                if !crlf {
                    refused = Some(Data::BareLf);
                    data = Vec::new();
                    continue;
                }
                let line = line.strip_prefix(b".").unwrap_or(&line);
                if data.len() + line.len() + 2 > max {
                    refused = Some(Data::TooLarge);
                    data = Vec::new();
                    continue;
                }
                if reservation
                    .grow_to(data.len() + line.len() + 2)
                    .await
                    .is_err()
                {
                    refused = Some(Data::Busy);
                    data = Vec::new();
                    continue;
                }
                data.extend_from_slice(line);
                data.extend_from_slice(b"\r\n");
            }
        }
    }
    Ok(refused.unwrap_or(Data::Message(data, reservation)))
}
