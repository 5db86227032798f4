//! An MMTP client: connect (plain or TLS), AUTH, SEND (minting HashCash on every core, optional
//! signing and encryption), RECEIVE, CHECK, keys. Used by `mailgate send/receive`, by
//! `mailgate bench mmtp`, by tests and by relaying.

use crate::codec::{CodecError, FrameReader};
use crate::jsjson;
use crate::packet;
use mailgate_core::hashcash;
use mailgate_core::io::BoxedIo;
use mailgate_core::message::now_ms;
use mailgate_core::pgp::{self, PgpError};
use mailgate_core::{Address, Part, Tags};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Largest reply the client accepts.
const MAX_REPLY: usize = 256 * 1024 * 1024;
/// Time allowed for connecting and for each reply.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network or TLS failure.
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    /// The server sent something that is not MMTP.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered `ERROR`.
    #[error("server refused: {0}")]
    Refused(String),
    /// Signing or encryption failed.
    #[error(transparent)]
    Pgp(#[from] PgpError),
    /// No reply in time.
    #[error("timed out")]
    Timeout,
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => ClientError::Io(e),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// One connection to an MMTP server.
pub struct MmtpClient {
    frames: FrameReader<ReadHalf<BoxedIo>>,
    writer: WriteHalf<BoxedIo>,
    /// The server's welcome object.
    pub welcome: Value,
}

impl MmtpClient {
    /// Connect to `addr` (HOST:PORT), with TLS when `tls` is given, and read the welcome.
    pub async fn connect(
        addr: &str,
        tls: Option<(TlsConnector, ServerName<'static>)>,
    ) -> Result<Self, ClientError> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        Self::over(tcp, tls).await
    }

    /// [`MmtpClient::connect`] from a chosen local address (load generators spreading their
    /// connections over several source addresses).
    pub async fn connect_from(
        addr: std::net::SocketAddr,
        source: std::net::IpAddr,
    ) -> Result<Self, ClientError> {
        let socket = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        let tcp = tokio::time::timeout(TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        Self::over(tcp, None).await
    }

    async fn over(
        tcp: TcpStream,
        tls: Option<(TlsConnector, ServerName<'static>)>,
    ) -> Result<Self, ClientError> {
        let _ = tcp.set_nodelay(true);
        let stream: BoxedIo = match tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name, tcp).await?),
        };
        let (rd, writer) = tokio::io::split(stream);
        let mut frames = FrameReader::new(rd, MAX_REPLY);
        let welcome = read_value(&mut frames).await?;
        let ready = welcome
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("MMTP Server Ready"));
        if !ready {
            return Err(ClientError::Protocol(format!(
                "unexpected welcome: {welcome}"
            )));
        }
        Ok(MmtpClient {
            frames,
            writer,
            welcome,
        })
    }

    /// Refuse replies larger than `max` bytes (the connection fails with a protocol error).
    pub fn limit_replies(&mut self, max: usize) {
        self.frames.set_max_frame(max);
    }

    /// The difficulty the server advertises (5, the original client's default, if it does not).
    pub fn difficulty(&self) -> u32 {
        self.welcome
            .pointer("/features/hashcash/difficulty")
            .and_then(Value::as_u64)
            .map_or(5, |d| d as u32)
    }

    /// Send one request (JSON text) and read its reply; `ERROR` replies are returned as values.
    pub async fn request_text(&mut self, text: &str) -> Result<Value, ClientError> {
        self.writer.write_all(text.as_bytes()).await?;
        read_value(&mut self.frames).await
    }

    /// Send one request and return its reply, turning `ERROR` into [`ClientError::Refused`].
    pub async fn call(&mut self, action: &str, data: Value) -> Result<Value, ClientError> {
        let text = json!({ "action": action, "data": data }).to_string();
        ok(self.request_text(&text).await?)
    }

    /// AUTH extension: bind this connection to an account.
    pub async fn auth(&mut self, email: &Address, password: &str) -> Result<(), ClientError> {
        self.call(
            "AUTH",
            json!({ "email": mmtp(email), "password": password }),
        )
        .await
        .map(|_| ())
    }

    /// SEND a packet built by [`PacketBuilder::build`].
    pub async fn send(&mut self, packet: &str) -> Result<Value, ClientError> {
        let text = format!("{{\"action\":\"SEND\",\"data\":{{\"packet\":{packet}}}}}");
        ok(self.request_text(&text).await?)
    }

    /// RECEIVE (removes what it returns), at most `limit` messages.
    pub async fn receive(
        &mut self,
        email: &Address,
        limit: Option<u32>,
    ) -> Result<Vec<Value>, ClientError> {
        let mut data = json!({ "email": mmtp(email) });
        if let Some(l) = limit {
            data["limit"] = json!(l);
        }
        let reply = self.call("RECEIVE", data).await?;
        Ok(reply
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// CHECK: counts.
    pub async fn check(&mut self, email: &Address) -> Result<Value, ClientError> {
        self.call("CHECK", json!({ "email": mmtp(email) })).await
    }

    /// REGISTER_KEY.
    pub async fn register_key(
        &mut self,
        email: &Address,
        armored: &str,
    ) -> Result<(), ClientError> {
        self.call(
            "REGISTER_KEY",
            json!({ "email": mmtp(email), "publicKey": armored }),
        )
        .await
        .map(|_| ())
    }

    /// REQUEST_PUBLIC_KEY.
    pub async fn request_key(&mut self, email: &Address) -> Result<String, ClientError> {
        let reply = self
            .call("REQUEST_PUBLIC_KEY", json!({ "email": mmtp(email) }))
            .await?;
        reply
            .get("publicKey")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("reply without publicKey".into()))
    }
}

async fn read_value(frames: &mut FrameReader<ReadHalf<BoxedIo>>) -> Result<Value, ClientError> {
    let frame = tokio::time::timeout(TIMEOUT, frames.next_frame())
        .await
        .map_err(|_| ClientError::Timeout)??;
    serde_json::from_slice(frame.bytes()).map_err(|e| ClientError::Protocol(e.to_string()))
}

fn ok(reply: Value) -> Result<Value, ClientError> {
    if reply.get("status").and_then(Value::as_str) == Some("OK") {
        Ok(reply)
    } else {
        Err(ClientError::Refused(
            reply
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned(),
        ))
    }
}

fn mmtp(a: &Address) -> String {
    a.account().to_mmtp().unwrap_or_else(|_| a.to_string())
}

/// Builds SEND packets exactly as the original client does.
#[derive(Debug, Clone)]
pub struct PacketBuilder {
    /// Sender.
    pub sender: Address,
    /// Recipient.
    pub recipient: Address,
    /// Subject.
    pub subject: String,
    /// Body text.
    pub body: String,
    /// `SEND`, `REPLY` or `FORWARD`.
    pub kind: String,
    /// Tags.
    pub tags: Tags,
    /// Attachments (the `attachments` extension inside `content`).
    pub attachments: Vec<Part>,
    /// Armored unprotected secret key to sign with.
    pub sign_with: Option<String>,
    /// Armored public key to encrypt to.
    pub encrypt_to: Option<String>,
    /// Timestamp (Unix ms) of the packet and its stamp; `None`: now.
    pub timestamp: Option<i64>,
    /// A detached signature made elsewhere, carried as it is (relaying a signed message).
    pub signature: Option<String>,
    /// Armored OpenPGP content made elsewhere, carried as it is (relaying an encrypted
    /// message), with the plaintext hash it came with.
    pub encrypted: Option<(String, Option<String>)>,
    /// `meta.messageId`; `None`: a new one.
    pub message_id: Option<String>,
}

/// A built packet and what minting its stamp took.
#[derive(Debug, Clone)]
pub struct BuiltPacket {
    /// The packet, as JSON text.
    pub text: String,
    /// The packet's `meta.messageId`.
    pub message_id: String,
    /// Hashes tried while minting.
    pub hashes: u64,
}

impl PacketBuilder {
    /// A plain SEND with no tags.
    pub fn new(sender: Address, recipient: Address, subject: &str, body: &str) -> Self {
        PacketBuilder {
            sender,
            recipient,
            subject: subject.to_owned(),
            body: body.to_owned(),
            kind: "SEND".into(),
            tags: Tags::default(),
            attachments: Vec::new(),
            sign_with: None,
            encrypt_to: None,
            timestamp: None,
            signature: None,
            encrypted: None,
            message_id: None,
        }
    }

    /// The packet that carries a stored message to `recipient` (relaying mail that did not
    /// arrive over MMTP): subject, body, attachments, tags with importance as a `priority`
    /// tag, the message type, a signature or encrypted payload as they are, and the origin id.
    pub fn from_message(message: &mailgate_core::Message, recipient: Address) -> Self {
        let body = message.body_text();
        let mut b = PacketBuilder::new(message.sender.clone(), recipient, &message.subject, &body);
        b.attachments = message
            .parts
            .iter()
            .filter(|p| !p.content)
            .cloned()
            .collect();
        b.kind = packet::message_type(message).to_owned();
        b.tags = packet::wire_tags(message);
        b.signature = message.security.signature.clone();
        b.encrypted = message
            .security
            .encrypted
            .clone()
            .map(|e| (e, message.security.content_hash.clone()));
        b.message_id = Some(
            message
                .origin_id
                .clone()
                .unwrap_or_else(|| message.id.0.simple().to_string()),
        );
        b
    }

    /// Build the packet, minting its stamp at `difficulty` on every core (CPU-bound: call off
    /// the async threads).
    pub fn build(&self, difficulty: u32) -> Result<BuiltPacket, ClientError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.build_with(difficulty, threads)
    }

    /// [`PacketBuilder::build`] with a given number of minting threads.
    pub fn build_with(&self, difficulty: u32, threads: usize) -> Result<BuiltPacket, ClientError> {
        let sender = mmtp(&self.sender);
        let recipient = mmtp(&self.recipient);
        let content = packet::plain_content(&self.subject, &self.body, self.attachments.iter());
        let text = jsjson::stringify(&Value::Object(content.clone()));
        let mut message_hash = hex::encode(Sha256::digest(text.as_bytes()));
        let signature = match &self.sign_with {
            Some(key) => Some(pgp::sign_detached_text(key, text.as_bytes())?),
            None => self.signature.clone(),
        };
        let wire_content = match (&self.encrypt_to, &self.encrypted) {
            (Some(key), _) => json!({ "encrypted": pgp::encrypt_to(key, text.as_bytes())? }),
            (None, Some((armored, hash))) => {
                if let Some(h) = hash {
                    message_hash = h.clone();
                }
                json!({ "encrypted": armored })
            }
            (None, None) => Value::Object(content),
        };
        let encrypted = self.encrypt_to.is_some() || self.encrypted.is_some();
        let timestamp = self.timestamp.unwrap_or_else(now_ms);
        let (stamp, hashes) =
            hashcash::mint_parallel(difficulty, timestamp, &sender, &recipient, threads);
        let message_id = self
            .message_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        let mut verification = json!({ "messageHash": message_hash });
        if let Some(sig) = &signature {
            verification["signature"] = json!(sig);
        }
        let packet = json!({
            "meta": {
                "type": self.kind,
                "messageId": message_id,
                "timestamp": timestamp,
                "hashcashToken": { "token": stamp.token, "counter": stamp.counter },
                "encrypted": encrypted,
                "signed": signature.is_some(),
                "signatureVerified": false,
                "tags": self.tags,
            },
            "sender": sender,
            "recipient": recipient,
            "content": wire_content,
            "verification": verification,
        });
        Ok(BuiltPacket {
            text: jsjson::stringify(&packet),
            message_id,
            hashes,
        })
    }
}

/// The cause is shown in the message, not again as a source: `{:#}` prints it once.
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}
