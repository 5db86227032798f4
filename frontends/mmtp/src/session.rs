//! One MMTP connection: welcome, then one reply per request, in order.

use crate::codec::{encode_reply, CodecError, FrameReader};
use crate::config::MmtpConfig;
use mailgate_core::Core;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Room for the JSON envelope around a message of the maximum size.
const ENVELOPE_OVERHEAD: usize = 64 * 1024;

/// The MMTP front-end: shared by every connection.
pub struct MmtpServer {
    core: Arc<Core>,
    config: MmtpConfig,
    read_timeout: Duration,
}

impl MmtpServer {
    /// A front-end over `core`.
    pub fn new(core: Arc<Core>, config: MmtpConfig, read_timeout: Duration) -> Self {
        MmtpServer {
            core,
            config,
            read_timeout,
        }
    }

    /// The welcome object sent first on every connection.
    pub fn welcome(&self, tls: bool) -> Value {
        json!({
            "status": "OK",
            "message": "MMTP Server Ready (mailgate)",
            "features": {
                "tls": tls || self.config.tls_listen.is_some(),
                "pgp": false,
                "hashcash": { "difficulty": self.config.hashcash_difficulty },
                "auth": [],
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
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let max_frame = self.core.policy.max_message_size + ENVELOPE_OVERHEAD;
        let mut frames = FrameReader::new(rd, max_frame);
        if wr
            .write_all(&encode_reply(&self.welcome(tls)))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(self.read_timeout, frames.next_frame()) => r,
            };
            let (reply, close) = match next {
                // Nothing unprompted: the original client hands every reply to its oldest
                // pending request, and an idle connection has none.
                Err(_) => {
                    tracing::debug!(%peer, "mmtp read timeout");
                    break;
                }
                Ok(Ok(frame)) => (self.dispatch(frame.get()), false),
                Ok(Err(CodecError::Closed)) => break,
                Ok(Err(e @ (CodecError::Truncated | CodecError::Io(_)))) => {
                    tracing::debug!(%peer, error = %e, "mmtp connection ended");
                    break;
                }
                Ok(Err(e @ CodecError::TooLarge(_))) => (error(&e.to_string()), true),
                Ok(Err(e @ CodecError::Malformed(_))) => (error(&e.to_string()), false),
            };
            if wr.write_all(&encode_reply(&reply)).await.is_err() || close {
                break;
            }
        }
        let _ = wr.shutdown().await;
    }

    fn dispatch(&self, frame: &str) -> Value {
        let request: Value = match serde_json::from_str(frame) {
            Ok(v) => v,
            Err(e) => return error(&format!("malformed JSON: {e}")),
        };
        match request.get("action").and_then(Value::as_str) {
            None => error("request has no \"action\""),
            Some(action) => error(&format!("unsupported action: {action}")),
        }
    }
}

fn error(message: &str) -> Value {
    json!({ "status": "ERROR", "message": message })
}
