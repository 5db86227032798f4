//! One TMTP link: TmtpRev first, then Register or Login within the login timeout, then any op
//! until Quit, a protocol error (answered with `quit`) or a link error (closed silently).
//! Every frame goes out through one writer task, so replies, deliveries and presence notices
//! never interleave.

use crate::delivery::{self, Delivery};
use crate::frame::{self, quit, FrameError, Header, OutFrame};
use crate::ids;
use crate::render::{self, DataFields};
use crate::request::{self, op};
use crate::{Registration, TmtpServer};
use bytes::Bytes;
use mailgate_core::io::{BoxedIo, ConnState};
use mailgate_core::store::tmtp::{NodeId, TmtpMember, TmtpPayload, TmtpPriority};
use mailgate_core::store::{Account, AccountId};
use mailgate_core::{Address, Origin, Submitter};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest Ping or invitation text, UTF-16 units (mnm's `kPingCharMax`).
pub(crate) const PING_CHARS: usize = 140;
/// Longest Ping or invitation data, octets (three per unit, as mnm allows).
pub(crate) const PING_BYTES: i64 = (PING_CHARS * 3) as i64;
/// Shortest alias or group id (mnm's `kAliasMinLen`).
pub(crate) const ALIAS_MIN: usize = 8;
/// Frames waiting for the writer.
const OUT_BACKLOG: usize = 64;
/// Nodes one member may have (each multiplies what is queued for it).
const MAX_NODES: usize = 100;

/// How a link ends.
pub(crate) enum End {
    /// Close without a word (link errors, timeouts, errors before TmtpRev).
    Silent,
    /// Send `quit` with this error first (once TmtpRev was done).
    Quit(&'static str),
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Link(_) => End::Silent,
            FrameError::Protocol(q) => End::Quit(q),
        }
    }
}

/// The logged-in side of a link.
pub(crate) struct LoggedIn {
    pub(crate) member: TmtpMember,
    pub(crate) account: Account,
    pub(crate) node: NodeId,
    acks: mpsc::Sender<String>,
    delivery: CancellationToken,
}

pub(crate) struct Session {
    pub(crate) server: Arc<TmtpServer>,
    peer: SocketAddr,
    pub(crate) out: mpsc::Sender<Bytes>,
    rev: bool,
    pub(crate) login: Option<LoggedIn>,
}

pub(crate) async fn run(
    server: Arc<TmtpServer>,
    stream: BoxedIo,
    peer: SocketAddr,
    shutdown: CancellationToken,
    state: Arc<ConnState>,
) {
    let (mut rd, wr) = tokio::io::split(stream);
    let (out, out_rx) = mpsc::channel(OUT_BACKLOG);
    let stuck = CancellationToken::new();
    let idle = Duration::from_secs(server.config.idle_timeout_secs.max(1));
    let writer = tokio::spawn(write_loop(wr, out_rx, idle, stuck.clone()));
    let mut s = Session {
        server,
        peer,
        out,
        rev: false,
        login: None,
    };
    let end = tokio::select! {
        end = s.read_loop(&mut rd, &state) => end,
        _ = shutdown.cancelled() => End::Silent,
        // The peer stopped reading (or the link failed): nothing more can reach it.
        _ = stuck.cancelled() => End::Silent,
    };
    if let End::Quit(error) = end {
        if s.rev {
            let frame = OutFrame::new("quit").with("error", error);
            s.send(frame).await;
        }
    }
    s.logout().await;
    drop(s);
    // The writer ends once every sender is gone and what was queued is written.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// Write frames as they come; a write that fails or that the peer does not take within
/// `limit` (it stopped reading) ends the link through `stuck`.
async fn write_loop(
    mut wr: WriteHalf<BoxedIo>,
    mut rx: mpsc::Receiver<Bytes>,
    limit: Duration,
    stuck: CancellationToken,
) {
    while let Some(frame) = rx.recv().await {
        let write = async {
            wr.write_all(&frame).await?;
            wr.flush().await
        };
        if !matches!(tokio::time::timeout(limit, write).await, Ok(Ok(()))) {
            stuck.cancel();
            return;
        }
    }
    let _ = tokio::time::timeout(limit, wr.shutdown()).await;
}

/// mnm's `_checkPing`: valid UTF-8 of at most 140 UTF-16 units.
fn check_ping(data: &[u8]) -> Result<(), &'static str> {
    let text = std::str::from_utf8(data).map_err(|_| quit::NOT_UTF8)?;
    if text.encode_utf16().count() > PING_CHARS {
        return Err(quit::DATA_LONG);
    }
    Ok(())
}

impl Session {
    /// Queue a frame for the writer.
    pub(crate) async fn send(&self, frame: OutFrame) {
        match frame.encode() {
            Ok(bytes) => {
                let _ = self.out.send(bytes).await;
            }
            Err(e) => tracing::warn!(error = %e, "tmtp: a reply did not fit a frame"),
        }
    }

    /// The `ack` for request `id`: with the message's id and date, or the error.
    pub(crate) async fn ack(&self, id: &str, result: Result<Option<(String, i64)>, String>) {
        let mut frame = OutFrame::new("ack").with("id", id);
        match result {
            Ok(Some((msgid, posted))) => {
                frame.set("msgid", msgid);
                frame.set("posted", ids::posted(posted));
            }
            Ok(None) => {}
            Err(error) => frame.set("error", error),
        }
        self.send(frame).await;
    }

    async fn read_loop(&mut self, rd: &mut ReadHalf<BoxedIo>, state: &ConnState) -> End {
        let config = &self.server.config;
        let login_deadline = Instant::now() + Duration::from_secs(config.login_timeout_secs);
        let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
        let mut buf = Vec::new();
        loop {
            let deadline = if self.login.is_some() {
                Instant::now() + idle
            } else {
                login_deadline
            };
            let header =
                match tokio::time::timeout_at(deadline, frame::read_header(rd, &mut buf)).await {
                    Err(_) | Ok(Ok(None)) => return End::Silent,
                    Ok(Err(e)) => return e.into(),
                    Ok(Ok(Some(h))) => h,
                };
            state.touch();
            if !request::check(&header) {
                return End::Quit(quit::HEADER);
            }
            let op = header.op.unwrap_or(u8::MAX);
            if let Err(q) = self.allowed(op) {
                return End::Quit(q);
            }
            let limit = match op {
                op::PING | op::GROUP_INVITE => PING_BYTES,
                _ => self.server.core.policy.max_message_size as i64,
            };
            if header.datalen > limit {
                return End::Quit(quit::DATA_LONG);
            }
            // Held until the request is handled: bodies in flight share one memory budget.
            let _room = match self
                .server
                .core
                .budget
                .reserve(header.datalen as usize)
                .await
            {
                Ok(r) => r,
                Err(_) => return End::Quit(quit::BUSY),
            };
            let data = match tokio::time::timeout_at(
                deadline,
                frame::read_data(rd, header.datalen as usize),
            )
            .await
            {
                Ok(Ok(d)) => d,
                _ => return End::Silent,
            };
            if let Some(end) = self.dispatch(op, header, data, state).await {
                return end;
            }
        }
    }

    /// mnm's state rules: TmtpRev once and first; Register and Login after it and only once;
    /// everything else after a login.
    fn allowed(&self, op: u8) -> Result<(), &'static str> {
        match op {
            op::TMTP_REV if self.rev => Err(quit::REPEAT),
            op::TMTP_REV => Ok(()),
            op::REGISTER | op::LOGIN if !self.rev => Err(quit::NEED_REV),
            op::REGISTER | op::LOGIN if self.login.is_some() => Err(quit::ON),
            op::REGISTER | op::LOGIN => Ok(()),
            _ if self.login.is_none() => Err(quit::OFF),
            _ => Ok(()),
        }
    }

    async fn dispatch(&mut self, op: u8, h: Header, data: Bytes, state: &ConnState) -> Option<End> {
        match op {
            op::TMTP_REV => {
                self.rev = true;
                let frame = OutFrame::new("tmtprev")
                    .with("id", "1")
                    .with("name", self.server.domain.clone());
                self.send(frame).await;
                None
            }
            op::REGISTER => self.register(h, state).await.err(),
            op::LOGIN => self.login(h, state).await.err(),
            op::USER_EDIT => self.user_edit(h).await.err(),
            op::OHI_EDIT => self.ohi_edit(h).await.err(),
            op::GROUP_INVITE | op::GROUP_EDIT => self.group(op, h, data).await.err(),
            op::POST => {
                self.post(h, data).await;
                None
            }
            op::POST_NOTIFY => self.post_notify(h, data).await.err(),
            op::PING => self.ping(h, data).await.err(),
            op::ACK => {
                if let Some(l) = &self.login {
                    // The delivery loop matches it against the message in flight.
                    let _ = l.acks.try_send(h.id);
                }
                None
            }
            op::PULSE => None,
            op::QUIT => Some(End::Quit(quit::LOGOUT)),
            _ => Some(End::Quit(quit::HEADER)),
        }
    }

    async fn register(&mut self, h: Header, state: &ConnState) -> Result<(), End> {
        let server = self.server.clone();
        if server.config.registration == Registration::Closed {
            return Err(End::Quit(quit::REGISTER_CLOSED));
        }
        let peer = mailgate_core::login::peer_key(self.peer.ip());
        if !server.registrations.check(&peer) {
            server.core.metrics.event("tmtp_register", "throttled");
            return Err(End::Quit(quit::REGISTER));
        }
        let uid = ids::new_uid();
        let created = async {
            let address = Address::new(&uid.to_ascii_lowercase(), &server.domain).ok()?;
            let password = ids::new_node_secret().0;
            let account = server.core.add_account(&address, &password).await.ok()?;
            server
                .core
                .store
                .tmtp_add_member(account.id, &uid)
                .await
                .ok()?;
            let (node_secret, hash) = ids::new_node_secret();
            let node = server
                .core
                .store
                .tmtp_add_node(account.id, &h.newnode, &hash, None)
                .await
                .ok()?;
            Some((account, node_secret, node))
        }
        .await;
        let Some((account, node_secret, node)) = created else {
            server.core.metrics.event("tmtp_register", "failed");
            return Err(End::Quit(quit::REGISTER));
        };
        server.core.metrics.event("tmtp_register", "ok");
        let mut reply = OutFrame::new("registered")
            .with("uid", uid.clone())
            .with("nodeid", node_secret);
        if h.newalias != "_" {
            if let Err(e) = self.add_alias(account.id, &h.newalias).await {
                reply.set("error", e);
            }
        }
        self.send(reply).await;
        let member = TmtpMember {
            account: account.id,
            address: account.address.clone(),
            uid,
        };
        self.start(member, account, node, false, state).await
    }

    /// Give the account an alias, with mnm's checks and words.
    pub(crate) async fn add_alias(&self, account: AccountId, alias: &str) -> Result<(), String> {
        if alias.len() < ALIAS_MIN {
            return Err(format!("newalias must be {ALIAS_MIN}+ characters"));
        }
        if alias.chars().any(char::is_control) {
            return Err(format!("invalid string '{alias}'"));
        }
        match self.server.core.store.tmtp_add_alias(account, alias).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("alias {alias} already taken")),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn login(&mut self, h: Header, state: &ConnState) -> Result<(), End> {
        let core = self.server.core.clone();
        let ip = self.peer.ip();
        if core.login_allowed("tmtp", ip, &h.uid).is_err() {
            return Err(End::Quit(quit::LOGIN));
        }
        let Some(hash) = ids::secret_hash(&h.node) else {
            core.login_failed("tmtp", ip, &h.uid);
            return Err(End::Quit(quit::BASE32));
        };
        let found = core.store.tmtp_verify_node(&h.uid, &hash).await;
        let Ok(Some((member, node))) = found else {
            core.login_failed("tmtp", ip, &h.uid);
            return Err(End::Quit(quit::LOGIN));
        };
        let Ok(Some(account)) = core.store.account(&member.address).await else {
            return Err(End::Quit(quit::LOGIN));
        };
        core.login_succeeded("tmtp", ip, &h.uid);
        self.start(member, account, node, true, state).await
    }

    /// Claim the node, say `info`, tell the member's nodes (after Login), start deliveries.
    async fn start(
        &mut self,
        member: TmtpMember,
        account: Account,
        node: NodeId,
        announce: bool,
        state: &ConnState,
    ) -> Result<(), End> {
        let server = self.server.clone();
        let Some(claim) = server.online.claim(node, member.account, self.out.clone()) else {
            return Err(End::Quit(quit::NODE_ONLINE));
        };
        state.set_authenticated();
        let mut info = OutFrame::new("info").with("info", "login ok");
        let watchers = self.watchers(member.account).await;
        if !watchers.is_empty() {
            info.set("ohi", watchers);
        }
        self.send(info).await;
        let (acks, acks_rx) = mpsc::channel(16);
        let token = CancellationToken::new();
        self.login = Some(LoggedIn {
            member: member.clone(),
            account,
            node,
            acks,
            delivery: token.clone(),
        });
        if announce {
            let id = ids::new_id();
            let frame = std_frame("login", &id, &member.uid).with("node", "tbd");
            let _ = self
                .queue_frame(&[member.account], None, TmtpPriority::Normal, &id, frame)
                .await;
        }
        if claim.first {
            self.tell_presence(1).await;
        }
        tokio::spawn(delivery::run(Delivery {
            server,
            node,
            account: member.account,
            wake: claim.wake,
            out: self.out.clone(),
            acks: acks_rx,
            stop: token,
        }));
        Ok(())
    }

    /// The uids of online members who tell this account of their presence.
    async fn watchers(&self, account: AccountId) -> Vec<String> {
        let store = &self.server.core.store;
        let mut uids = Vec::new();
        for other in store.tmtp_ohi_sources(account).await.unwrap_or_default() {
            if !self.server.online.is_online(other) {
                continue;
            }
            if let Ok(Some(m)) = store.tmtp_member_by_account(other).await {
                uids.push(m.uid);
            }
        }
        uids
    }

    /// Tell the members on this member's presence list that it came online (1) or went
    /// offline (2).
    async fn tell_presence(&self, status: u8) {
        let Some(l) = &self.login else { return };
        let targets = self
            .server
            .core
            .store
            .tmtp_ohi_targets(l.member.account)
            .await
            .unwrap_or_default();
        self.server
            .tell_presence(&l.member.uid, status, targets)
            .await;
    }

    async fn logout(&mut self) {
        let Some(l) = &self.login else { return };
        l.delivery.cancel();
        if self.server.online.release(l.node) {
            self.tell_presence(2).await;
        }
    }

    /// Render a `(std)` frame and queue it for every node of these accounts.
    pub(crate) async fn queue_frame(
        &self,
        accounts: &[AccountId],
        except: Option<NodeId>,
        priority: TmtpPriority,
        id: &str,
        frame: OutFrame,
    ) -> Result<(), String> {
        let bytes = frame.encode_with_headsum().map_err(|e| e.to_string())?;
        self.server
            .enqueue_for(accounts, except, priority, id, &TmtpPayload::Frame(bytes))
            .await
            .map_err(store_error)
    }

    fn me(&self) -> &LoggedIn {
        self.login.as_ref().expect("ops after login only")
    }

    async fn user_edit(&mut self, h: Header) -> Result<(), End> {
        if h.newnode.is_empty() == h.newalias.is_empty() {
            return Err(End::Quit(quit::HEADER));
        }
        let me = self.me();
        let (account, uid, node) = (me.member.account, me.member.uid.clone(), me.node);
        let id = ids::new_id();
        let result = if !h.newalias.is_empty() {
            match self.add_alias(account, &h.newalias).await {
                Ok(()) => {
                    let frame = std_frame("user", &id, &uid).with("newalias", h.newalias.clone());
                    self.queue_frame(&[account], None, TmtpPriority::Urgent, &id, frame)
                        .await
                }
                Err(e) => Err(e),
            }
        } else if self
            .server
            .core
            .store
            .tmtp_nodes(account)
            .await
            .map_or(0, |n| n.len())
            >= MAX_NODES
        {
            Err(format!("a member has at most {MAX_NODES} nodes"))
        } else {
            let (secret, hash) = ids::new_node_secret();
            match self
                .server
                .core
                .store
                .tmtp_add_node(account, &h.newnode, &hash, Some(node))
                .await
            {
                Ok(_) => {
                    let frame = std_frame("user", &id, &uid)
                        .with("newnode", h.newnode.clone())
                        .with("nodeid", secret);
                    self.queue_frame(&[account], None, TmtpPriority::Urgent, &id, frame)
                        .await
                }
                Err(e) => Err(store_error(e)),
            }
        };
        self.ack(&h.id, result.map(|()| None)).await;
        Ok(())
    }

    async fn ohi_edit(&mut self, h: Header) -> Result<(), End> {
        let on = match h.kind.as_str() {
            "init" | "add" => true,
            "drop" => false,
            _ => return Err(End::Quit(quit::HEADER)),
        };
        let me = self.me();
        let (account, uid) = (me.member.account, me.member.uid.clone());
        let list = h.for_list.clone().unwrap_or_default();
        let store = &self.server.core.store;
        let mut targets = Vec::new();
        for entry in &list {
            match store.tmtp_member_by_uid(&entry.id).await {
                Ok(Some(m)) => targets.push(m.account),
                Ok(None) => {
                    let error = format!("OpenNodes: iUid {} not found", entry.id);
                    self.ack(&h.id, Err(error)).await;
                    return Ok(());
                }
                Err(e) => {
                    self.ack(&h.id, Err(store_error(e))).await;
                    return Ok(());
                }
            }
        }
        let mut result = Ok(());
        let mut changed = Vec::new();
        for t in targets {
            match store.tmtp_set_ohi(account, t, on).await {
                Ok(true) => changed.push(t),
                Ok(false) => {}
                Err(e) => result = Err(store_error(e)),
            }
        }
        self.server
            .tell_presence(&uid, if on { 1 } else { 2 }, changed)
            .await;
        if result.is_ok() && h.kind != "init" {
            let id = ids::new_id();
            let echo: Vec<Value> = list.iter().map(|e| json!({ "id": e.id })).collect();
            let frame = std_frame("ohiedit", &id, &uid)
                .with("for", echo)
                .with("type", h.kind.clone());
            result = self
                .queue_frame(&[account], None, TmtpPriority::Normal, &id, frame)
                .await;
        }
        self.ack(&h.id, result.map(|()| None)).await;
        Ok(())
    }

    async fn group(&mut self, op: u8, h: Header, data: Bytes) -> Result<(), End> {
        if op == op::GROUP_INVITE {
            check_ping(&data).map_err(End::Quit)?;
        }
        let result = crate::groups::edit(self, op, &h, data).await?;
        self.ack(&h.id, result).await;
        Ok(())
    }

    async fn ping(&mut self, h: Header, data: Bytes) -> Result<(), End> {
        check_ping(&data).map_err(End::Quit)?;
        let me = self.me();
        let (account, uid, node) = (me.member.account, me.member.uid.clone(), me.node);
        let store = &self.server.core.store;
        let result = async {
            if store.tmtp_alias(&h.from).await.map_err(store_error)? != Some(account) {
                return Err("from must identify sender".to_owned());
            }
            self.check_pings(account)?;
            let to = store
                .tmtp_alias(&h.to)
                .await
                .map_err(store_error)?
                .ok_or_else(|| format!("Lookup: iAlias {} not found", h.to))?;
            let id = ids::new_id();
            let posted = mailgate_core::message::now_ms();
            let frame = std_frame_at("ping", &id, &uid, posted)
                .with("alias", h.from.clone())
                .with("to", h.to.clone())
                .with_data(data);
            self.queue_frame(&[to], None, TmtpPriority::Normal, &id, frame.clone())
                .await?;
            // The sender's other nodes get a copy, as with every message a member sends.
            if to != account {
                self.queue_frame(&[account], Some(node), TmtpPriority::Normal, &id, frame)
                    .await?;
            }
            Ok(Some((id, posted)))
        }
        .await;
        self.ack(&h.id, result).await;
        Ok(())
    }

    /// Pings and invitations are limited per member and day.
    pub(crate) fn check_pings(&self, account: AccountId) -> Result<(), String> {
        if self.server.pings.check(&account) {
            Ok(())
        } else {
            self.server.core.metrics.event("tmtp_ping", "throttled");
            Err("too many pings and invitations today; try again later".to_owned())
        }
    }

    /// Resolve a `for` list into accounts; `self_included` when the sender's account is among
    /// them by its uid or a group that includes the sender.
    pub(crate) async fn recipients(
        &self,
        list: &[frame::ForEntry],
    ) -> Result<(Vec<TmtpMember>, bool), String> {
        let me = self.me();
        let store = &self.server.core.store;
        let mut out: Vec<TmtpMember> = Vec::new();
        let mut self_included = false;
        for entry in list {
            let members = if entry.kind == 1 {
                let m = store
                    .tmtp_member_by_uid(&entry.id)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| format!("OpenNodes: iUid {} not found", entry.id))?;
                vec![m]
            } else {
                let accounts = crate::groups::joined(self, &entry.id, me.member.account).await?;
                let mut ms = Vec::new();
                for a in accounts {
                    if entry.kind == 3 && a == me.member.account {
                        continue;
                    }
                    if let Some(m) = store.tmtp_member_by_account(a).await.map_err(store_error)? {
                        ms.push(m);
                    }
                }
                ms
            };
            for m in members {
                if m.account == me.member.account {
                    self_included = true;
                }
                if !out.iter().any(|o| o.account == m.account) {
                    out.push(m);
                }
            }
        }
        Ok((out, self_included))
    }

    /// Post: the message goes to the recipients' INBOX (and from there to their nodes) and to
    /// the sender's other nodes; `for: []` reaches only the sender's other nodes.
    async fn post(&mut self, h: Header, data: Bytes) {
        let fields = DataFields {
            datahead: h.datahead as u64,
            datasum: h.datasum,
            notify: None,
        };
        let list = h.for_list.clone().unwrap_or_default();
        let result = self.post_data(&list, fields, data, false).await;
        self.ack(&h.id, result.map(Some)).await;
    }

    /// Store and queue one post; returns its id and date.
    pub(crate) async fn post_data(
        &self,
        list: &[frame::ForEntry],
        fields: DataFields,
        data: Bytes,
        not_self: bool,
    ) -> Result<(String, i64), String> {
        let (recipients, self_included) = self.recipients(list).await?;
        let me = self.me();
        let others: Vec<Address> = recipients
            .iter()
            .filter(|m| m.account != me.member.account)
            .map(|m| m.address.clone())
            .collect();
        let mut to = others.clone();
        if self_included {
            to.push(me.member.address.clone());
        }
        let message = render::post_message(me.member.address.clone(), to.clone(), fields, &data);
        let (id, posted) = (message.id, message.received_at);
        let tmtp_id = ids::message_tmtp_id(id);
        if to.is_empty() {
            // Only the sender's other nodes: nothing for a mailbox.
            if !not_self {
                let frame = render::delivery(&message, &tmtp_id, &me.member.uid)
                    .map_err(|e| e.to_string())?;
                self.server
                    .enqueue_for(
                        &[me.member.account],
                        Some(me.node),
                        TmtpPriority::Normal,
                        &tmtp_id,
                        &TmtpPayload::Frame(frame),
                    )
                    .await
                    .map_err(store_error)?;
            }
            return Ok((tmtp_id, posted));
        }
        let origin = Origin {
            protocol: "tmtp",
            submitter: Submitter::Account(me.account.clone()),
        };
        self.server
            .core
            .submit(message, &origin, None)
            .await
            .map_err(|e| e.to_string())?;
        if !self_included && !not_self {
            self.server
                .enqueue_for(
                    &[me.member.account],
                    Some(me.node),
                    TmtpPriority::Normal,
                    &tmtp_id,
                    &TmtpPayload::Message(id),
                )
                .await
                .map_err(store_error)?;
        }
        Ok((tmtp_id, posted))
    }

    /// PostNotify: the post to `for`, and a notification (the first `notelen` octets) to
    /// `for` and `notefor`.
    async fn post_notify(&mut self, h: Header, data: Bytes) -> Result<(), End> {
        if h.datalen <= h.notelen {
            return Err(End::Quit(quit::DATA_SHORT));
        }
        let list = h.for_list.clone().unwrap_or_default();
        if h.fornotself && list.is_empty() {
            return Err(End::Quit(quit::FOR_EMPTY));
        }
        let notefor = h.notefor.clone().unwrap_or_default();
        let note_len = h.notelen as usize;
        let count = list.len() + notefor.len() + usize::from(!h.fornotself);
        // The post's own secondary header and checksum follow the notification's octets.
        let fields = DataFields {
            datahead: h.datahead as u64,
            datasum: h.datasum,
            notify: Some(count as u64),
        };
        let result = async {
            let (postid, posted) = self
                .post_data(&list, fields, data.slice(note_len..), h.fornotself)
                .await?;
            let mut everyone = notefor.clone();
            everyone.extend(list.iter().cloned());
            let (members, _) = self.recipients(&everyone).await?;
            let me = self.me();
            let mut accounts: Vec<AccountId> = members.iter().map(|m| m.account).collect();
            if !h.fornotself {
                accounts.push(me.member.account);
            }
            let id = ids::new_id();
            let mut note = std_frame_at("notify", &id, &me.member.uid, posted)
                .with("postid", postid.clone())
                .with_data(data.slice(..note_len));
            if h.notehead != 0 {
                note.set("datahead", h.notehead);
            }
            if h.notesum != 0 {
                note.set("datasum", h.notesum);
            }
            self.queue_frame(&accounts, Some(me.node), TmtpPriority::Normal, &id, note)
                .await?;
            Ok(Some((postid, posted)))
        }
        .await;
        self.ack(&h.id, result).await;
        Ok(())
    }
}

/// A `(std)` message header: op, id, sender uid and `posted` now.
pub(crate) fn std_frame(op: &str, id: &str, from: &str) -> OutFrame {
    std_frame_at(op, id, from, mailgate_core::message::now_ms())
}

/// A `(std)` message header posted at `ms`.
pub(crate) fn std_frame_at(op: &str, id: &str, from: &str, ms: i64) -> OutFrame {
    OutFrame::new(op)
        .with("id", id)
        .with("from", from)
        .with("posted", ids::posted(ms))
        .with("datalen", 0)
}

/// A presence notice.
pub(crate) fn ohi_frame(uid: &str, status: u8) -> Bytes {
    OutFrame::new("ohi")
        .with("from", uid)
        .with("status", status)
        .encode()
        .unwrap_or_default()
}

/// A store failure as the `error` of an ack (the detail goes to the log).
pub(crate) fn store_error(e: mailgate_core::StoreError) -> String {
    tracing::warn!(error = %e, "tmtp: store failure");
    "temporary server failure; try again".to_owned()
}
