//! One IMMP connection. Before the upgrade the reader answers the few commands allowed inline;
//! after it, each pipeline gets its own worker (see `pipeline`), so commands on different
//! pipelines run concurrently and their reply lines may interleave, while commands on one
//! pipeline run in order. DATA payloads are read by the reader right after their command line,
//! whatever their pipeline.

use crate::codec::{self, Command, CommandKind, ParseError, Reply, TlsLevel};
use crate::federation::Federation;
use crate::payload::{read_line, read_payload, Line, PartSpec, PayloadError};
use crate::pipeline::{Pipeline, Shared, Work};
use mailgate_core::io::{ConnState, Io};
use mailgate_core::ratelimit::RateLimiter;
use mailgate_core::store::{follow_live, AccountId, LiveEvent, LiveKind};
use mailgate_core::Core;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use crate::payload::MAX_LINE;

/// How long AUTH SECRET nonces stay valid.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// Protocol name in metrics and traces.
pub const PROTOCOL: &str = "immp";
/// Where `SET GLOBAL COMPRESSION` is kept for the account.
pub const COMPRESSION_SETTING: &str = "immp.compression";
/// Most pipelines one connection may open.
pub const MAX_PIPELINES: usize = 64;
/// Largest DATA payload taken before authentication (a PUSH carries one small block).
pub const PRE_AUTH_PAYLOAD: usize = 64 * 1024;
/// How long in-flight pipeline commands may take once the connection is closing.
const DRAIN: Duration = Duration::from_secs(10);

/// The gateway's own OpenPGP key, answered to `KEY REQUEST <domain>`.
#[derive(Debug, Clone)]
pub struct DomainKey {
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// Armored public key.
    pub armored: String,
}

/// Read buffer of a connection (command lines; payload reads larger than it bypass it).
const LINE_BUFFER: usize = 2048;

/// The IMMP front-end: shared by every connection.
pub struct ImmpServer {
    pub(crate) core: Arc<Core>,
    pub(crate) domain: String,
    pub(crate) domain_key: Option<DomainKey>,
    pub(crate) federation: Federation,
    tls: TlsAcceptor,
    tls13: TlsAcceptor,
    read_timeout: Duration,
    handshake_timeout: Duration,
    /// AUTH COOKIE call-backs per peer address (2 a second, burst 10).
    pub(crate) cookie_checks: RateLimiter<IpAddr>,
    /// Open authenticated sessions per account, for unsolicited `150 PUSH` lines.
    live: Mutex<HashMap<AccountId, broadcast::Sender<Arc<str>>>>,
    /// Most entries one `MBOX INDEX` reply lists.
    pub(crate) index_page: u32,
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
        handshake_timeout: Duration,
    ) -> Self {
        ImmpServer {
            core,
            domain,
            domain_key,
            federation: Federation::default(),
            tls,
            tls13,
            read_timeout,
            handshake_timeout,
            cookie_checks: RateLimiter::new(2.0, 10),
            live: Mutex::new(HashMap::new()),
            index_page: crate::config::DEFAULT_INDEX_PAGE,
        }
    }

    /// Most entries one `MBOX INDEX` reply lists (at least 1).
    pub fn with_index_page(mut self, page: u32) -> Self {
        self.index_page = page.max(1);
        self
    }

    /// Routes and TLS trust for AUTH COOKIE call-backs.
    pub fn with_federation(mut self, federation: Federation) -> Self {
        self.federation = federation;
        self
    }

    /// The multi-line greeting.
    pub fn greeting(&self) -> String {
        format!(
            "100- IMMP/1.0 Server at {d}.\n100- Please upgrade the connection to one of the following:\n100 TLS TLS2 TLS3\n101 p=IMMP v=1.0 d={d}\n",
            d = self.domain
        )
    }

    /// Run one session.
    pub async fn handle<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        shutdown: CancellationToken,
        state: Arc<ConnState>,
    ) where
        S: Io + 'static,
    {
        // Small buffers: an idle connection holds them all the time, and reads larger than
        // the buffer (payloads) bypass it.
        let mut io = BufReader::with_capacity(LINE_BUFFER, stream);
        if io
            .get_mut()
            .write_all(self.greeting().as_bytes())
            .await
            .is_err()
        {
            return;
        }
        // Unencrypted: UPGRADE, NOOP, QUIT, answered inline.
        let level = loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = io.get_mut().write_all(b"702 Server shutting down.\n").await;
                    return;
                }
                r = tokio::time::timeout(self.read_timeout, read_line(&mut io)) => r,
            };
            let text = match line {
                Err(_) => {
                    let _ = io.get_mut().write_all(b"701 Timeout, closing.\n").await;
                    return;
                }
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => return,
                Ok(Ok(Line::TooLong)) => {
                    let _ = io.get_mut().write_all(b"700 Line too long.\n").await;
                    continue;
                }
                Ok(Ok(Line::Text(t))) if t.trim().is_empty() => continue,
                Ok(Ok(Line::Text(t))) => t,
            };
            state.touch();
            let (replies, next) = plaintext_line(&text);
            if io.get_mut().write_all(replies.as_bytes()).await.is_err() {
                return;
            }
            match next {
                Plain::Continue => {}
                Plain::Close => return,
                Plain::Upgrade(level) => break level,
                Plain::Data(length) => {
                    // The payload follows its command line: read (and drop) it, so it is not
                    // taken for commands.
                    let read = read_payload(&mut io, length, PRE_AUTH_PAYLOAD, &self.core.budget);
                    let reply = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = tokio::time::timeout(self.read_timeout, read) => match r {
                            Err(_) => return,
                            Ok(Err(PayloadError::Io | PayloadError::Unbounded)) => {
                                let _ = io.get_mut().write_all(b"702 Payload far larger than allowed; closing.\n").await;
                                return;
                            }
                            Ok(_) => Reply::new(403, "Upgrade the connection first."),
                        },
                    };
                    if io
                        .get_mut()
                        .write_all(reply.render(None).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        };
        if !io.buffer().is_empty() {
            // Plaintext sent before the handshake would be injected into the TLS session.
            let _ = io
                .get_mut()
                .write_all(b"702 Data after UPGRADE before the handshake.\n")
                .await;
            return;
        }
        let acceptor = match level {
            TlsLevel::Tls3 => &self.tls13,
            TlsLevel::Tls | TlsLevel::Tls2 => &self.tls,
        };
        let handshake =
            tokio::time::timeout(self.handshake_timeout, acceptor.accept(io.into_inner()));
        let tls = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = handshake => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "immp tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("immp tls handshake timed out");
                    return;
                }
            },
        };
        self.encrypted(tls, peer, shutdown, state).await;
    }

    /// The session after the upgrade: one reader, one writer, a worker per pipeline.
    async fn encrypted<S: Io + 'static>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        shutdown: CancellationToken,
        state: Arc<ConnState>,
    ) {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(LINE_BUFFER, rd);
        let (out, mut out_rx) = mpsc::channel::<String>(256);
        let write_timeout = self.read_timeout;
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                // A peer that stops reading is dropped after the idle timeout, which unblocks
                // the pipelines and the reader waiting on this writer. Every reply is flushed
                // once written: TLS keeps ciphertext it could not send when the socket was
                // full, and without a flush it would wait for the next reply.
                let sent = async {
                    wr.write_all(text.as_bytes()).await?;
                    wr.flush().await
                };
                match tokio::time::timeout(write_timeout, sent).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            let _ = wr.shutdown().await;
        });
        let shared = Arc::new(Shared::new(self.clone(), peer));
        let mut pipelines: HashMap<Option<String>, mpsc::Sender<Work>> = HashMap::new();
        let mut workers = tokio::task::JoinSet::new();
        let mut pushes: Option<broadcast::Receiver<Arc<str>>> = None;
        let max = self.core.policy.max_message_size;
        let mut closing_reply: Option<String> = None;
        'session: loop {
            if out.is_closed() {
                // The writer gave up on the peer.
                break;
            }
            let line = tokio::select! {
                _ = shutdown.cancelled() => {
                    closing_reply = Some(Reply::new(702, "Server shutting down.").render(None));
                    break;
                }
                _ = shared.close.cancelled() => {
                    closing_reply = Some(Reply::new(702, "Too many failed logins; closing.").render(None));
                    break;
                }
                _ = shared.authed.notified() => {
                    pushes = shared.pushes.lock().ok().and_then(|mut p| p.take());
                    continue;
                }
                push = next_push(&mut pushes) => {
                    if let Some(text) = push {
                        let line = Reply::new(150, format!("PUSH {text}")).render(None);
                        if out.send(line).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                r = tokio::time::timeout(self.read_timeout, read_line(&mut rd)) => r,
            };
            let text = match line {
                Err(_) => {
                    closing_reply = Some(Reply::new(701, "Timeout, closing.").render(None));
                    break;
                }
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => break,
                Ok(Ok(Line::TooLong)) => {
                    let _ = out
                        .send(Reply::new(700, "Line too long.").render(None))
                        .await;
                    continue;
                }
                Ok(Ok(Line::Text(t))) if t.trim().is_empty() => continue,
                Ok(Ok(Line::Text(t))) => t,
            };
            state.touch();
            if shared.is_authenticated() {
                state.set_authenticated();
            }
            let commands = match codec::parse_line(&text) {
                Ok(c) => c,
                Err(e) => {
                    let _ = out.send(parse_error_reply(&e).render(None)).await;
                    continue;
                }
            };
            for Command { pipeline, kind } in commands {
                let p = pipeline.as_deref();
                let work = match kind {
                    CommandKind::Upgrade(_) => {
                        let r = Reply::new(403, "Connection is already encrypted.");
                        let _ = out.send(r.render(p)).await;
                        continue;
                    }
                    CommandKind::Quit => {
                        closing_reply = Some(Reply::new(201, "Bye.").render(p));
                        break 'session;
                    }
                    CommandKind::Data {
                        name,
                        media_type,
                        length,
                        base64,
                        content,
                    } => {
                        let label = name.clone().unwrap_or_else(|| "part".into());
                        let Some(sender) =
                            pipe(&mut pipelines, &mut workers, &shared, &pipeline, &out).await
                        else {
                            break 'session;
                        };
                        if sender.send(Work::DataStart(label)).await.is_err() {
                            break 'session;
                        }
                        // Before authentication only small blocks (a PUSH) are taken.
                        let cap = if shared.is_authenticated() {
                            max
                        } else {
                            PRE_AUTH_PAYLOAD
                        };
                        let payload = tokio::select! {
                            _ = shutdown.cancelled() => {
                                closing_reply = Some(Reply::new(702, "Server shutting down.").render(None));
                                break 'session;
                            }
                            r = tokio::time::timeout(
                                self.read_timeout,
                                read_payload(&mut rd, length, cap, &self.core.budget),
                            ) => match r {
                                Ok(p) => p,
                                Err(_) => {
                                    closing_reply = Some(Reply::new(701, "Timeout, closing.").render(None));
                                    break 'session;
                                }
                            },
                        };
                        match payload {
                            Err(PayloadError::Io) => break 'session,
                            Err(PayloadError::Unbounded) => {
                                tracing::info!(
                                    length,
                                    cap,
                                    "immp: payload far over the limit; closing"
                                );
                                let r =
                                    Reply::new(702, "Payload far larger than allowed; closing.");
                                closing_reply = Some(r.render(p));
                                break 'session;
                            }
                            _ => {}
                        }
                        let spec = PartSpec {
                            name,
                            media_type,
                            base64,
                            content,
                        };
                        Work::Data(spec, payload)
                    }
                    other => Work::Command(other),
                };
                let Some(sender) =
                    pipe(&mut pipelines, &mut workers, &shared, &pipeline, &out).await
                else {
                    break 'session;
                };
                if sender.send(work).await.is_err() {
                    break 'session;
                }
            }
        }
        // Let the pipelines finish what they were given, then say goodbye and close.
        drop(pipelines);
        let drained = tokio::time::timeout(DRAIN, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            workers.abort_all();
        }
        if let Some(r) = closing_reply {
            let _ = out.send(r).await;
        }
        drop(out);
        let _ = writer.await;
        drop(pushes);
        if let Some(account) = shared.account() {
            self.forget(account);
        }
    }

    /// Drop the live-push channel of an account with no session left.
    fn forget(&self, account: AccountId) {
        if let Ok(mut live) = self.live.lock() {
            if live
                .get(&account)
                .is_some_and(|tx| tx.receiver_count() == 0)
            {
                live.remove(&account);
            }
        }
    }

    /// Register an authenticated session for live pushes.
    pub(crate) fn listen(&self, account: AccountId) -> Option<broadcast::Receiver<Arc<str>>> {
        let mut live = self.live.lock().ok()?;
        Some(
            live.entry(account)
                .or_insert_with(|| broadcast::channel(64).0)
                .subscribe(),
        )
    }

    /// Show pushes to this node's open sessions as the store reports them — stored on this
    /// node or on any other sharing the store — until `shutdown`.
    pub async fn show_live_pushes(self: Arc<Self>, shutdown: CancellationToken) {
        let store = self.core.store.clone();
        follow_live(&*store, shutdown.cancelled(), "live pushes", |event| {
            self.show(event)
        })
        .await
    }

    /// Show one stored push to the sessions open here for its accounts.
    async fn show(&self, event: LiveEvent) {
        // Other front-ends' events (TMTP presence) are not pushes.
        let LiveKind::Push(id) = event.kind else {
            return;
        };
        let here: Vec<broadcast::Sender<Arc<str>>> = match self.live.lock() {
            Ok(live) => event
                .accounts
                .iter()
                .filter_map(|a| live.get(a).cloned())
                .collect(),
            Err(_) => return,
        };
        if here.is_empty() {
            return;
        }
        let message = match self.core.store.message(id).await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load a live push");
                return;
            }
        };
        let text: Arc<str> = Arc::from(crate::mailbox::push_json(&message).to_string());
        for tx in here {
            let _ = tx.send(text.clone());
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

/// The worker of a pipeline, started on first use; `None` when the connection must close.
async fn pipe(
    pipelines: &mut HashMap<Option<String>, mpsc::Sender<Work>>,
    workers: &mut tokio::task::JoinSet<()>,
    shared: &Arc<Shared>,
    pipeline: &Option<String>,
    out: &mpsc::Sender<String>,
) -> Option<mpsc::Sender<Work>> {
    if let Some(s) = pipelines.get(pipeline) {
        return Some(s.clone());
    }
    if pipelines.len() >= MAX_PIPELINES {
        // The connection is misbehaving: too many concurrent pipelines.
        let r = Reply::new(
            702,
            format!("More than {MAX_PIPELINES} pipelines; closing."),
        );
        let _ = out.send(r.render(pipeline.as_deref())).await;
        return None;
    }
    let (tx, rx) = mpsc::channel(64);
    workers.spawn(Pipeline::run(
        shared.clone(),
        pipeline.clone(),
        rx,
        out.clone(),
    ));
    pipelines.insert(pipeline.clone(), tx.clone());
    Some(tx)
}

/// What the plaintext loop does after a line.
enum Plain {
    Continue,
    Close,
    Upgrade(TlsLevel),
    /// A DATA command: its payload (of this LENGTH, or up to two blank lines) follows.
    Data(Option<u64>),
}

/// Answer one line before the upgrade (only UPGRADE, NOOP and QUIT are allowed there).
fn plaintext_line(text: &str) -> (String, Plain) {
    let commands = match codec::parse_line(text) {
        Ok(c) => c,
        Err(e) => return (parse_error_reply(&e).render(None), Plain::Continue),
    };
    let mut out = String::new();
    let count = commands.len();
    for (i, cmd) in commands.into_iter().enumerate() {
        let p = cmd.pipeline.as_deref();
        match cmd.kind {
            CommandKind::Noop => out.push_str(&Reply::new(200, "OK").render(p)),
            CommandKind::Quit => {
                out.push_str(&Reply::new(201, "Bye.").render(p));
                return (out, Plain::Close);
            }
            CommandKind::Upgrade(_) if i + 1 != count => out.push_str(
                &Reply::new(401, "UPGRADE must be the last command on its line.").render(p),
            ),
            CommandKind::Upgrade(level) => {
                out.push_str(&Reply::new(204, "Upgrading to TLS.").render(p));
                return (out, Plain::Upgrade(level));
            }
            // Commands after a DATA on its line would sit before its payload: not read.
            CommandKind::Data { length, .. } => return (out, Plain::Data(length)),
            _ => out.push_str(&Reply::new(403, "Upgrade the connection first.").render(p)),
        }
    }
    (out, Plain::Continue)
}

fn parse_error_reply(e: &ParseError) -> Reply {
    match e {
        ParseError::Usage(u) => Reply::new(401, u.clone()),
        other => Reply::new(400, format!("{other}.")),
    }
}
