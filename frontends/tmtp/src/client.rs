//! A TMTP client (tests, `mailgate send/receive --protocol tmtp`, `mailgate bench tmtp`):
//! TLS, frames in and out, and the usual sequences (TmtpRev, Register, Login, Post, Ack).

use crate::frame;
use bytes::Bytes;
use mailgate_core::io::BoxedIo;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long the client waits for the server at each step.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server took too long.
    #[error("timed out")]
    Timeout,
    /// The server sent something that is not a TMTP frame.
    #[error("bad frame from the server: {0}")]
    BadFrame(String),
    /// The server closed the link (with its `quit` error, when it sent one).
    #[error("the server closed the link{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Closed(Option<String>),
    /// The server answered something else than the step expects.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A message from the server: its header and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The JSON header.
    pub head: Value,
    /// `datalen` octets of data.
    pub data: Bytes,
}

impl Incoming {
    /// The header's `op`.
    pub fn op(&self) -> &str {
        self.head["op"].as_str().unwrap_or_default()
    }

    /// A string field of the header.
    pub fn str(&self, key: &str) -> &str {
        self.head[key].as_str().unwrap_or_default()
    }
}

/// A connected TMTP client.
pub struct TmtpClient {
    rd: ReadHalf<BoxedIo>,
    wr: WriteHalf<BoxedIo>,
}

impl TmtpClient {
    /// Connect with TLS to `addr`, checking the certificate for `name`.
    pub async fn connect(
        addr: &str,
        connector: TlsConnector,
        name: ServerName<'static>,
    ) -> Result<Self, ClientError> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let boxed: BoxedIo = Box::new(tls);
        let (rd, wr) = tokio::io::split(boxed);
        Ok(TmtpClient { rd, wr })
    }

    /// Send a request: its header and data (`datalen` is the caller's to set).
    pub async fn send(&mut self, head: &Value, data: &[u8]) -> Result<(), ClientError> {
        let bytes = frame::request(head, data).map_err(|e| ClientError::BadFrame(e.to_string()))?;
        self.send_raw(&bytes).await
    }

    /// Send bytes exactly.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await?;
        Ok(())
    }

    /// The next message; `Ok(None)` when the server closed the link.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, ClientError> {
        self.recv_within(TIMEOUT).await
    }

    /// The next message within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<Incoming>, ClientError> {
        tokio::time::timeout(wait, self.read_frame())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn read_frame(&mut self) -> Result<Option<Incoming>, ClientError> {
        let mut len = [0u8; 4];
        match self.rd.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let text = std::str::from_utf8(&len).map_err(|e| ClientError::BadFrame(e.to_string()))?;
        let n =
            usize::from_str_radix(text, 16).map_err(|e| ClientError::BadFrame(e.to_string()))?;
        let mut head = vec![0u8; n];
        self.rd.read_exact(&mut head).await?;
        let head: Value =
            serde_json::from_slice(&head).map_err(|e| ClientError::BadFrame(e.to_string()))?;
        let datalen = head["datalen"].as_u64().unwrap_or(0) as usize;
        let data = frame::read_data(&mut self.rd, datalen).await?;
        Ok(Some(Incoming { head, data }))
    }

    /// The next message, which must exist and must not be `quit`.
    pub async fn expect(&mut self) -> Result<Incoming, ClientError> {
        match self.recv().await? {
            None => Err(ClientError::Closed(None)),
            Some(m) if m.op() == "quit" => Err(ClientError::Closed(Some(m.str("error").into()))),
            Some(m) => Ok(m),
        }
    }

    /// The next message with this op, acknowledging messages with other ops that need it.
    pub async fn expect_op(&mut self, op: &str) -> Result<Incoming, ClientError> {
        loop {
            let m = self.expect().await?;
            if m.op() == op {
                return Ok(m);
            }
            self.ack_if_needed(&m).await?;
        }
    }

    /// TmtpRev; returns the site name the server gave.
    pub async fn rev(&mut self) -> Result<String, ClientError> {
        self.send(&json!({"op": 0, "id": "1"}), &[]).await?;
        let m = self.expect().await?;
        if m.op() != "tmtprev" {
            return Err(ClientError::Unexpected(m.head.to_string()));
        }
        Ok(m.str("name").to_owned())
    }

    /// Register (after TmtpRev): returns the new uid and node secret (the link is logged in).
    pub async fn register(
        &mut self,
        node_label: &str,
        alias: Option<&str>,
    ) -> Result<(String, String), ClientError> {
        let head = json!({"op": 1, "newnode": node_label, "newalias": alias.unwrap_or("_")});
        self.send(&head, &[]).await?;
        let m = self.expect().await?;
        if m.op() != "registered" {
            return Err(ClientError::Unexpected(m.head.to_string()));
        }
        let creds = (m.str("uid").to_owned(), m.str("nodeid").to_owned());
        self.expect_op("info").await?;
        Ok(creds)
    }

    /// Login (after TmtpRev); returns the `info` message.
    pub async fn login(&mut self, uid: &str, node: &str) -> Result<Incoming, ClientError> {
        self.send(&json!({"op": 2, "uid": uid, "node": node}), &[])
            .await?;
        let m = self.expect().await?;
        if m.op() != "info" {
            return Err(ClientError::Unexpected(m.head.to_string()));
        }
        Ok(m)
    }

    /// Post `subject` and `text` to uids; returns the ack (with `msgid` and `posted`).
    pub async fn post(
        &mut self,
        id: &str,
        to: &[&str],
        subject: &str,
        text: &str,
    ) -> Result<Incoming, ClientError> {
        let head = serde_json::to_vec(&json!({"threadid": "", "alias": "", "subject": subject}))
            .unwrap_or_default();
        let mut data = head.clone();
        data.extend_from_slice(text.as_bytes());
        let to: Vec<Value> = to.iter().map(|u| json!({"id": u, "type": 1})).collect();
        let req =
            json!({"op": 7, "id": id, "for": to, "datalen": data.len(), "datahead": head.len()});
        self.send(&req, &data).await?;
        loop {
            let m = self.expect().await?;
            if m.op() == "ack" && m.str("id") == id {
                if let Some(e) = m.head["error"].as_str() {
                    return Err(ClientError::Unexpected(e.to_owned()));
                }
                return Ok(m);
            }
            self.ack_if_needed(&m).await?;
        }
    }

    /// Acknowledge a message that carries an id (every `(std)` message).
    pub async fn ack_if_needed(&mut self, m: &Incoming) -> Result<(), ClientError> {
        if m.head.get("headsum").is_some() {
            self.ack(m.str("id")).await?;
        }
        Ok(())
    }

    /// Ack (op 10) a message by its id.
    pub async fn ack(&mut self, id: &str) -> Result<(), ClientError> {
        self.send(&json!({"op": 10, "id": id, "type": "n"}), &[])
            .await
    }

    /// Quit (op 12) and wait for the server's `quit`.
    pub async fn quit(mut self) -> Result<(), ClientError> {
        self.send(&json!({"op": 12}), &[]).await?;
        while let Some(m) = self.recv().await? {
            if m.op() == "quit" {
                break;
            }
        }
        Ok(())
    }
}
