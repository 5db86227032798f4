//! One MMTP connection: welcome, then exactly one reply per request, in order.

use crate::codec::{CodecError, Frame, FrameReader};
use crate::config::MmtpConfig;
use crate::packet::{self, PacketError, CATEGORY, PRIORITY, STATUS};
use crate::peers::MmtpPeers;
use bytes::Bytes;
use mailgate_core::hashcash::HashcashPolicy;
use mailgate_core::io::ConnState;
use mailgate_core::login::FAILURES_PER_CONNECTION;
use mailgate_core::mailbox::INBOX;
use mailgate_core::message::now_ms;
use mailgate_core::pgp;
use mailgate_core::ratelimit::RateLimiter;
use mailgate_core::store::{Account, EntryQuery, PublicKeyRecord, TagFilter};
use mailgate_core::{
    Address, Core, KeySource, LoginError, Origin, SenderCheck, StoreError, SubmitError, Submitter,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Room for the JSON envelope around a message of the maximum size.
const ENVELOPE_OVERHEAD: usize = 64 * 1024;
/// Memory one SEND takes while it is parsed and stored, in multiples of its frame (the frame,
/// the parsed parts, the wire form, the store's copies; measured with `mailgate bench mmtp`).
const SEND_MEMORY_FACTOR: usize = 5;
/// Protocol name in metrics, traces and wire forms.
pub const PROTOCOL: &str = "mmtp";

/// The MMTP front-end: shared by every connection.
pub struct MmtpServer {
    core: Arc<Core>,
    config: MmtpConfig,
    read_timeout: Duration,
    limiter: RateLimiter<IpAddr>,
    hashcash: HashcashPolicy,
    peers: Option<Arc<MmtpPeers>>,
}

/// A reply, and what to do once it has been written.
struct Outcome {
    reply: String,
    /// RECEIVE: entries to remove after the reply reached the socket.
    remove: Option<(i64, Vec<i64>)>,
}

impl From<String> for Outcome {
    fn from(reply: String) -> Self {
        Outcome {
            reply,
            remove: None,
        }
    }
}

fn error(message: impl std::fmt::Display) -> String {
    json!({ "status": "ERROR", "message": message.to_string() }).to_string()
}

fn ok(v: Value) -> String {
    v.to_string()
}

/// Per-connection state.
struct Session<'a> {
    server: &'a MmtpServer,
    peer: SocketAddr,
    tls: bool,
    account: Option<Account>,
    /// Wrong passwords on this connection; it is closed after [`FAILURES_PER_CONNECTION`].
    failed_logins: u32,
}

impl MmtpServer {
    /// A front-end over `core`.
    pub fn new(core: Arc<Core>, config: MmtpConfig, read_timeout: Duration) -> Self {
        let window = (config.hashcash_window_secs as i64).saturating_mul(1000);
        MmtpServer {
            limiter: RateLimiter::new(config.requests_per_sec, config.request_burst),
            hashcash: HashcashPolicy {
                difficulty: config.hashcash_difficulty,
                max_age_ms: window,
                max_skew_ms: window,
            },
            core,
            config,
            read_timeout,
            peers: None,
        }
    }

    /// Check remote senders against their domains' MMTP servers, and fetch their keys there.
    /// Without it every remote sender is unverified and no remote key is trusted.
    pub fn with_peers(mut self, peers: Arc<MmtpPeers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// The welcome object sent first on every connection.
    pub fn welcome(&self, tls: bool) -> Value {
        json!({
            "status": "OK",
            "message": "MMTP Server Ready (mailgate)",
            "features": {
                "tls": tls || self.config.tls_listen.is_some(),
                "pgp": true,
                "hashcash": { "difficulty": self.config.hashcash_difficulty },
                "auth": ["password"],
            }
        })
    }

    /// Run one session until the peer leaves, times out, or `shutdown` fires between requests.
    pub async fn handle<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        tls: bool,
        shutdown: CancellationToken,
        state: Arc<ConnState>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let max_frame = self.core.policy.max_message_size + ENVELOPE_OVERHEAD;
        let mut frames = FrameReader::new(rd, max_frame).with_budget(self.core.budget.clone());
        let mut welcome = self.welcome(tls).to_string();
        welcome.push('\n');
        if wr.write_all(welcome.as_bytes()).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        let mut session = Session {
            server: self,
            peer,
            tls,
            account: None,
            failed_logins: 0,
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(self.read_timeout, frames.next_frame()) => r,
            };
            let (outcome, close) = match next {
                // Nothing unprompted: the original client hands every reply to its oldest
                // pending request, and an idle connection has none.
                Err(_) => {
                    tracing::debug!("mmtp read timeout");
                    break;
                }
                Ok(Ok(frame)) => {
                    state.touch();
                    // Boxed: the request's (large) future lives only while it runs, so an idle
                    // connection holds a small one.
                    let outcome = Box::pin(session.dispatch(frame)).await;
                    if session.account.is_some() {
                        state.set_authenticated();
                    }
                    (outcome, session.failed_logins >= FAILURES_PER_CONNECTION)
                }
                Ok(Err(CodecError::Closed)) => break,
                Ok(Err(e @ (CodecError::Truncated | CodecError::Io(_)))) => {
                    tracing::debug!(error = %e, "mmtp connection ended");
                    break;
                }
                Ok(Err(e @ (CodecError::TooLarge(_) | CodecError::Busy(_)))) => {
                    (error(e).into(), true)
                }
                Ok(Err(e @ CodecError::Malformed(_))) => (error(e).into(), false),
            };
            let mut reply = outcome.reply;
            reply.push('\n');
            // A peer that stops reading is dropped after the idle timeout. The flush sends what
            // TLS still holds of the reply (else it would wait for the next one).
            let sent = async {
                wr.write_all(reply.as_bytes()).await?;
                wr.flush().await
            };
            let written = tokio::time::timeout(self.read_timeout, sent).await;
            if !matches!(written, Ok(Ok(()))) {
                break;
            }
            if let Some((account, entries)) = outcome.remove {
                // Only what was handed out goes, and only once the reply is on its way.
                if let Err(e) = self.core.store.remove_entries(account, &entries).await {
                    tracing::warn!(error = %e, "mmtp: removing received messages failed");
                }
            }
            if close {
                break;
            }
        }
        let _ = wr.shutdown().await;
    }
}

#[derive(serde::Deserialize)]
struct Request<'a> {
    action: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct SendData<'a> {
    #[serde(borrow)]
    packet: Option<&'a RawValue>,
}

/// The packet of a SEND request's `data`, as a slice of the frame: `Err` is the reply for a
/// request without one.
fn send_packet(frame: &Frame, data: Option<&RawValue>) -> Result<Bytes, String> {
    match data.map(|d| serde_json::from_str::<SendData<'_>>(d.get())) {
        Some(Ok(SendData { packet: Some(p) })) => Ok(frame.bytes().slice_ref(p.get().as_bytes())),
        _ => Err(error("data.packet is missing")),
    }
}

impl Session<'_> {
    async fn dispatch(&mut self, frame: Frame) -> Outcome {
        if !self.server.limiter.check(&self.peer.ip()) {
            return error("rate limit exceeded; slow down").into();
        }
        let request: Request<'_> = match serde_json::from_slice(frame.bytes()) {
            Ok(r) => r,
            Err(e) => return error(format!("invalid request: {e}")).into(),
        };
        let action = match request.action {
            Some(Value::String(a)) => a,
            _ => return error("request has no \"action\"").into(),
        };
        if action == "SEND" {
            let packet = match send_packet(&frame, request.data) {
                Ok(p) => p,
                Err(reply) => return reply.into(),
            };
            return self.send(frame, packet).await.into();
        }
        let data_raw = request.data.map(RawValue::get).unwrap_or("{}");
        let data: Map<String, Value> = match serde_json::from_str(data_raw) {
            Ok(d) => d,
            Err(_) => return error("\"data\" must be an object").into(),
        };
        match action.as_str() {
            "RECEIVE" => self.receive(&data, false).await,
            "RECEIVE_FILTERED" => self.receive(&data, true).await,
            "CHECK" => self.check(&data).await.into(),
            "REGISTER_KEY" => self.register_key(&data).await.into(),
            "REQUEST_PUBLIC_KEY" => self.request_key(&data).await.into(),
            "GET_TAG_CATEGORIES" => ok(json!({
                "status": "OK",
                "tagCategories": {
                    "priority": PRIORITY, "category": CATEGORY, "status": STATUS, "custom": [],
                }
            }))
            .into(),
            "AUTH" => self.auth(&data).await.into(),
            other => error(format!("unknown action: {other}")).into(),
        }
    }

    fn email(data: &Map<String, Value>) -> Result<Address, String> {
        match data.get("email") {
            Some(Value::String(s)) => {
                Address::parse_mmtp(s).map_err(|e| error(format!("invalid email {s:?}: {e}")))
            }
            _ => Err(error("data.email is missing")),
        }
    }

    /// The account of a mailbox this connection may read.
    async fn mailbox(&self, email: &Address) -> Result<Account, String> {
        let authorised = self.server.config.legacy_open_mailboxes
            || self
                .account
                .as_ref()
                .is_some_and(|a| a.address.same_account(email));
        if !authorised {
            return Err(error(format!(
                "authentication required: send AUTH as {} first",
                email.to_mmtp().unwrap_or_default()
            )));
        }
        match self.server.core.store.account(email).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(error(format!(
                "no such mailbox: {}",
                email.to_mmtp().unwrap_or_default()
            ))),
            Err(e) => Err(error(format!("temporary failure: {e}"))),
        }
    }

    async fn send(&mut self, mut frame: Frame, packet: Bytes) -> String {
        let peer = self.peer.ip().to_string();
        // Parsing and storing a SEND make a few more copies of its bytes: they are reserved
        // too, so the body budget bounds the memory of SENDs in flight.
        if let Err(e) = frame
            .reserve_processing(&self.server.core.budget, SEND_MEMORY_FACTOR)
            .await
        {
            return error(e);
        }
        // A large packet is parsed off the async threads. The frame keeps its budget
        // reservation until the submit is done; the message shares its bytes.
        let parsed = if packet.len() > 64 * 1024 {
            tokio::task::spawn_blocking(move || packet::parse_send(packet, &peer))
                .await
                .unwrap_or_else(|_| Err(PacketError::Invalid("internal error".into())))
        } else {
            packet::parse_send(packet, &peer)
        };
        let _budget = frame;
        let mut p = match parsed {
            Ok(p) => p,
            Err(e) => return self.refuse(e.to_string(), "invalid_packet"),
        };
        let spent = match self.server.hashcash.verify(
            &p.stamp.token,
            p.stamp.counter,
            &p.sender_text,
            &p.recipient_text,
            now_ms(),
        ) {
            Ok(s) => s,
            Err(e) => return self.refuse(format!("hashcash verification failed: {e}"), "hashcash"),
        };
        if let (Some(sig), Some(text)) = (&p.signature, &p.signed_text) {
            let (verified, source) = self.verify_signature(&p.message.sender, sig, text).await;
            p.message.security.signature_verified = Some(verified);
            p.message.security.key_source = Some(source);
        }
        let submitter = match &self.account {
            Some(a) => Submitter::Account(a.clone()),
            None => {
                p.message.security.sender_check = Some(self.check_sender(&p.message.sender).await);
                Submitter::Peer(self.peer.ip())
            }
        };
        let origin = Origin {
            protocol: PROTOCOL,
            submitter,
        };
        let signed = p.signature.is_some();
        match self
            .server
            .core
            .submit(p.message, &origin, Some(spent))
            .await
        {
            Ok(_) => ok(json!({
                "status": "OK",
                "message": "Message delivered successfully",
                "messageId": p.client_id,
                "encrypted": p.encrypted,
                "signed": signed,
            })),
            Err(SubmitError::StampSpent) => {
                error("hashcash stamp already spent: replayed packets are refused")
            }
            Err(e) => error(e),
        }
    }

    fn refuse(&self, message: String, reason: &str) -> String {
        self.server.core.metrics.message_refused(PROTOCOL, reason);
        error(message)
    }

    /// Does a signature by `sender` verify, and where did the key come from? A local
    /// sender's key is the one registered here; a remote sender's is fetched from its own
    /// domain. Only keys from the owner or the sender's domain make a signature verified.
    async fn verify_signature(
        &self,
        sender: &Address,
        signature: &str,
        text: &str,
    ) -> (bool, KeySource) {
        let core = &self.server.core;
        let (key, source) = if core.policy.is_local(&sender.domain) {
            match core.store.key(sender).await {
                Ok(Some(k)) if k.owner_verified => (Some(k.armored), KeySource::LocalOwner),
                Ok(Some(k)) => (Some(k.armored), KeySource::FirstUse),
                Ok(None) => (None, KeySource::None),
                Err(e) => {
                    tracing::warn!(error = %e, "mmtp: reading a key failed");
                    (None, KeySource::None)
                }
            }
        } else {
            match self.server.peers.as_ref().map(|p| p.sender_key(sender)) {
                Some(fetch) => match fetch.await {
                    Ok(Some(k)) => (Some(k), KeySource::SenderDomain),
                    Ok(None) => (None, KeySource::None),
                    Err(e) => {
                        tracing::info!(sender = %sender, error = %e, "mmtp: sender key fetch failed");
                        core.metrics.event("mmtp_signature", "key_fetch_failed");
                        return (false, KeySource::None);
                    }
                },
                None => (None, KeySource::None),
            }
        };
        let Some(key) = key else {
            core.metrics.event("mmtp_signature", "no_key");
            return (false, source);
        };
        let (sig, text) = (signature.to_owned(), text.to_owned());
        let valid =
            tokio::task::spawn_blocking(move || pgp::verify_detached(&key, &sig, text.as_bytes()))
                .await
                .unwrap_or(false);
        let reason = match (valid, source.trusted()) {
            (false, _) => "bad_signature",
            (true, false) => "untrusted_key",
            (true, true) => "verified",
        };
        core.metrics.event("mmtp_signature", reason);
        (valid && source.trusted(), source)
    }

    /// What ties this unauthenticated peer to `sender`: its address must be one of the sender
    /// domain's MMTP servers (or of the domain itself). A local sender is refused by the core.
    async fn check_sender(&self, sender: &Address) -> SenderCheck {
        let core = &self.server.core;
        if core.policy.is_local(&sender.domain) {
            return SenderCheck::Unverified;
        }
        let Some(peers) = &self.server.peers else {
            core.metrics.event("mmtp_sender", "unverified");
            return SenderCheck::Unverified;
        };
        match peers.serves(&sender.domain, self.peer.ip()).await {
            Ok(true) => {
                core.metrics.event("mmtp_sender", "domain");
                SenderCheck::Domain
            }
            Ok(false) => {
                core.metrics.event("mmtp_sender", "unverified");
                SenderCheck::Unverified
            }
            Err(e) => {
                tracing::info!(sender = %sender, error = %e, "mmtp: sender domain check failed");
                core.metrics.event("mmtp_sender", "dns_error");
                SenderCheck::Unverified
            }
        }
    }

    /// RECEIVE / RECEIVE_FILTERED: at most `limit` (or `max_receive`) INBOX messages, oldest
    /// first, found by index (the tag index for a filter); what was handed out is removed once
    /// the reply is written.
    async fn receive(&self, data: &Map<String, Value>, filtered: bool) -> Outcome {
        let result = async {
            let email = Self::email(data)?;
            let filter = if filtered {
                packet::parse_filter(data.get("tagFilters")).map_err(error)?
            } else {
                Some(TagFilter::default())
            };
            let limit = match data.get("limit") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| error("data.limit must be a positive whole number"))?,
                ),
            };
            let cap = limit
                .unwrap_or(u64::MAX)
                .min(u64::from(self.server.config.max_receive)) as u32;
            let account = self.mailbox(&email).await?;
            let store = &self.server.core.store;
            let temporary = |e: StoreError| error(format!("temporary failure: {e}"));
            let (entries, matching) = match &filter {
                Some(tags) => {
                    let query = EntryQuery {
                        limit: Some(cap),
                        tags: tags.clone(),
                        ..EntryQuery::default()
                    };
                    let entries = store
                        .entries(account.id, INBOX, query)
                        .await
                        .map_err(temporary)?;
                    let matching = store
                        .count_entries(account.id, INBOX, tags)
                        .await
                        .map_err(temporary)?;
                    (entries, matching)
                }
                None => (Vec::new(), 0),
            };
            let mut packets: Vec<Box<RawValue>> = Vec::with_capacity(entries.len());
            let mut taken = Vec::with_capacity(entries.len());
            for entry in entries {
                let message = store.message(entry.message).await.map_err(temporary)?;
                if let Some(m) = message {
                    if let Ok(raw) = RawValue::from_string(packet::render(&m)) {
                        packets.push(raw);
                        taken.push(entry.id);
                    }
                }
            }
            let remaining = (matching as usize).saturating_sub(taken.len());
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Reply<'a> {
                status: &'static str,
                messages: &'a [Box<RawValue>],
                count: usize,
                #[serde(skip_serializing_if = "Option::is_none")]
                tag_filters: Option<&'a Value>,
                #[serde(skip_serializing_if = "Option::is_none")]
                remaining: Option<usize>,
            }
            let reply = Reply {
                status: "OK",
                messages: &packets,
                count: packets.len(),
                tag_filters: filtered.then(|| data.get("tagFilters")).flatten(),
                remaining: (limit.is_some() || remaining > 0).then_some(remaining),
            };
            let text = serde_json::to_string(&reply).map_err(error)?;
            Ok::<_, String>(Outcome {
                reply: text,
                remove: (!taken.is_empty()).then_some((account.id, taken)),
            })
        }
        .await;
        result.unwrap_or_else(Outcome::from)
    }

    /// CHECK: counts the store keeps (INBOX total, tag counts) and, with `tagFilters`, a count
    /// by the tag index; nothing is counted row by row.
    async fn check(&self, data: &Map<String, Value>) -> String {
        let result = async {
            let email = Self::email(data)?;
            let filter = packet::parse_filter(data.get("tagFilters")).map_err(error)?;
            let account = self.mailbox(&email).await?;
            let store = &self.server.core.store;
            let temporary = |e: StoreError| error(format!("temporary failure: {e}"));
            let total = store
                .count_entries(account.id, INBOX, &TagFilter::default())
                .await
                .map_err(temporary)?;
            let count = match &filter {
                Some(tags) if tags.is_empty() => total,
                Some(tags) => store
                    .count_entries(account.id, INBOX, tags)
                    .await
                    .map_err(temporary)?,
                None => 0,
            };
            let mut tag_counts: Map<String, Value> = Map::new();
            for cat in ["priority", "category", "status", "custom"] {
                tag_counts.insert(cat.into(), Value::Object(Map::new()));
            }
            for t in store
                .tag_counts(account.id, INBOX)
                .await
                .map_err(temporary)?
            {
                if t.value.starts_with("mmtp-type:") {
                    continue;
                }
                if let Some(Value::Object(m)) = tag_counts.get_mut(&t.category) {
                    m.insert(t.value, json!(t.count));
                }
            }
            Ok::<_, String>(ok(json!({
                "status": "OK",
                "count": count,
                "totalCount": total,
                "tagCounts": tag_counts,
            })))
        }
        .await;
        result.unwrap_or_else(|e| e)
    }

    async fn register_key(&self, data: &Map<String, Value>) -> String {
        let result = async {
            let email = Self::email(data)?;
            let Some(Value::String(armored)) = data.get("publicKey") else {
                return Err(error("data.publicKey is missing"));
            };
            let store = &self.server.core.store;
            // A key for another domain's address would make its signatures look verified here:
            // such keys come only from that domain, never from whoever registers them.
            if !self.server.core.policy.is_local(&email.domain) {
                self.server.core.metrics.event("mmtp_register_key", "not_local");
                return Err(error(format!(
                    "keys are registered here only for this server's own accounts; {} is not one",
                    email.to_mmtp().unwrap_or_default()
                )));
            }
            if !matches!(store.account(&email).await, Ok(Some(_)))
            {
                return Err(error(format!(
                    "no such account: {}",
                    email.to_mmtp().unwrap_or_default()
                )));
            }
            let (text, who) = (armored.clone(), email.clone());
            let checked = tokio::task::spawn_blocking(move || pgp::check_public_key(&text, &who))
                .await
                .map_err(error)?
                .map_err(error)?;
            let owner = self
                .account
                .as_ref()
                .is_some_and(|a| a.address.same_account(&email));
            let existing = store
                .key(&email)
                .await
                .map_err(|e| error(format!("temporary failure: {e}")))?;
            // Without AUTH only trust on first use, when configured, may set a key: the
            // account's first, never a different one.
            let owner_verified = match (&existing, owner) {
                (_, true) => true,
                (Some(old), false) if old.fingerprint == checked.fingerprint => old.owner_verified,
                (Some(_), false) => {
                    self.server.core.metrics.event("mmtp_register_key", "not_owner");
                    return Err(error(format!(
                        "a different key is registered for {} already; AUTH as that account to replace it",
                        email.to_mmtp().unwrap_or_default()
                    )));
                }
                (None, false) if self.server.config.trust_on_first_use => false,
                (None, false) => {
                    self.server.core.metrics.event("mmtp_register_key", "not_authenticated");
                    return Err(error(format!(
                        "AUTH as {} first to register its key",
                        email.to_mmtp().unwrap_or_default()
                    )));
                }
            };
            store
                .put_key(PublicKeyRecord {
                    address: email.account(),
                    fingerprint: checked.fingerprint,
                    armored: armored.clone(),
                    owner_verified,
                })
                .await
                .map_err(|e| error(format!("temporary failure: {e}")))?;
            Ok(ok(json!({ "status": "OK", "message": "Public key registered successfully" })))
        }
        .await;
        result.unwrap_or_else(|e| e)
    }

    async fn request_key(&self, data: &Map<String, Value>) -> String {
        let email = match Self::email(data) {
            Ok(e) => e,
            Err(e) => return e,
        };
        match self.server.core.store.key(&email).await {
            Ok(Some(k)) => ok(json!({
                "status": "OK",
                "email": data.get("email"),
                "publicKey": k.armored,
            })),
            Ok(None) => error(format!(
                "no public key registered for {}",
                email.to_mmtp().unwrap_or_default()
            )),
            Err(e) => error(format!("temporary failure: {e}")),
        }
    }

    async fn auth(&mut self, data: &Map<String, Value>) -> String {
        if !self.tls && !self.server.config.allow_plain_auth {
            return error("AUTH needs a TLS connection (the TLS port)");
        }
        let email = match Self::email(data) {
            Ok(e) => e,
            Err(e) => return e,
        };
        let Some(Value::String(password)) = data.get("password") else {
            return error("data.password is missing");
        };
        match self
            .server
            .core
            .password_login(PROTOCOL, self.peer.ip(), &email, password)
            .await
        {
            Ok(account) => {
                let name = account.address.to_mmtp().unwrap_or_default();
                tracing::info!(account = %name, "mmtp authenticated");
                self.account = Some(account);
                ok(json!({ "status": "OK", "message": format!("Authenticated as {name}") }))
            }
            Err(e) => {
                self.account = None;
                if matches!(e, LoginError::Refused) {
                    self.failed_logins += 1;
                }
                error(e)
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection holds is mostly its session future: requests run in a boxed
    /// future of their own, so the idle one stays small (it was 6.8 KB with the SEND path
    /// inlined; `docs/operations.md` has the measured bytes per idle connection).
    #[test]
    fn an_idle_session_future_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(mailgate_core::Metrics::new());
        let store = mailgate_core::SqliteStore::open(
            mailgate_core::SqliteOptions::new(dir.path().join("probe.db")),
            metrics.clone(),
        )
        .unwrap();
        let core = Arc::new(Core::new(
            Arc::new(store),
            mailgate_core::Policy::new(["a.test"]),
            metrics,
        ));
        let server = MmtpServer::new(core, MmtpConfig::default(), Duration::from_secs(1));
        let (io, _peer) = tokio::io::duplex(64);
        let session = server.handle(
            io,
            "127.0.0.1:1".parse().unwrap(),
            false,
            CancellationToken::new(),
            Arc::default(),
        );
        let size = std::mem::size_of_val(&session);
        assert!(size < 4096, "the idle session future is {size} bytes");
    }
}
