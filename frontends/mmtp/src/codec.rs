//! MMTP framing: the original client writes `JSON.stringify(request)` with no delimiter, so the
//! input is a stream of concatenated JSON values (whitespace between them allowed). Each value is
//! cut out of the stream with its exact bytes kept (the content hash is checked over the bytes as
//! they arrived). Replies are one JSON object followed by `\n`, written in one piece.

use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a value.
    #[error("connection closed in the middle of a request")]
    Truncated,
    /// A value grew past the frame limit; the buffered input was discarded.
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
    /// The input is not JSON; the buffered input was discarded.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// Socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads concatenated JSON values from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing values larger than `max_frame` bytes.
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf: Vec::with_capacity(8192),
            max_frame,
        }
    }

    /// The next complete JSON value, exactly as it arrived.
    pub async fn next_frame(&mut self) -> Result<Box<RawValue>, CodecError> {
        loop {
            if let Some(frame) = self.take_buffered()? {
                return Ok(frame);
            }
            if self.buf.len() > self.max_frame {
                self.buf.clear();
                return Err(CodecError::TooLarge(self.max_frame));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                let pending = self.buf.iter().any(|b| !b.is_ascii_whitespace());
                self.buf.clear();
                return Err(if pending {
                    CodecError::Truncated
                } else {
                    CodecError::Closed
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Cut one complete value off the front of the buffer, if there is one.
    fn take_buffered(&mut self) -> Result<Option<Box<RawValue>>, CodecError> {
        let start = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        if start == self.buf.len() {
            self.buf.clear();
            return Ok(None);
        }
        let mut values =
            serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<Box<RawValue>>();
        match values.next() {
            Some(Ok(v)) => {
                let end = start + values.byte_offset();
                if end > self.max_frame + start {
                    self.buf.drain(..end);
                    return Err(CodecError::TooLarge(self.max_frame));
                }
                self.buf.drain(..end);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => {
                self.buf.clear();
                Err(CodecError::Malformed(e.to_string()))
            }
            None => Ok(None),
        }
    }
}

/// Serialise a reply as one JSON object plus `\n`.
pub fn encode_reply(reply: &serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Vec<Result<String, String>> {
        let mut r = FrameReader::new(input, max);
        let mut out = Vec::new();
        loop {
            match r.next_frame().await {
                Ok(v) => out.push(Ok(v.get().to_owned())),
                Err(CodecError::Closed) => break,
                Err(e @ CodecError::Truncated) => {
                    out.push(Err(e.to_string()));
                    break;
                }
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        out
    }

    #[tokio::test]
    async fn concatenated_values_without_delimiters() {
        let got = frames(br#"{"a":1}{"b":[2,3]}  {"c":"}{"}"#, 1000).await;
        assert_eq!(
            got,
            vec![
                Ok(r#"{"a":1}"#.to_string()),
                Ok(r#"{"b":[2,3]}"#.to_string()),
                Ok(r#"{"c":"}{"}"#.to_string())
            ]
        );
    }

    #[tokio::test]
    async fn value_split_across_reads() {
        let (client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut client = client;
            for piece in [&b"{\"act"[..], b"ion\":", b"\"CHECK\"}\n{\"x\"", b":1}"] {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut r = FrameReader::new(server, 1000);
        assert_eq!(r.next_frame().await.unwrap().get(), r#"{"action":"CHECK"}"#);
        assert_eq!(r.next_frame().await.unwrap().get(), r#"{"x":1}"#);
        writer.await.unwrap();
        assert!(matches!(r.next_frame().await, Err(CodecError::Closed)));
    }

    #[tokio::test]
    async fn bad_input_is_reported_and_the_stream_goes_on() {
        let got = frames(b"{nope} ", 1000).await;
        assert!(got[0].as_ref().unwrap_err().contains("malformed"));
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(5000));
        let got = frames(big.as_bytes(), 100).await;
        assert!(got[0].as_ref().unwrap_err().contains("larger"));
        let got = frames(b"{\"a\":", 100).await;
        assert_eq!(
            got,
            vec![Err("connection closed in the middle of a request".into())]
        );
    }
}
