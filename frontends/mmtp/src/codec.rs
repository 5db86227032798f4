//! MMTP framing: the original client writes `JSON.stringify(request)` with no delimiter, so the
//! input is a stream of concatenated JSON values (whitespace between them allowed). Each value is
//! cut out of the stream with its exact bytes kept (the content hash is checked over the bytes as
//! they arrived). Replies are one JSON object followed by `\n`, written in one piece.

use bytes::Bytes;
use mailgate_core::budget::{BudgetError, MemoryBudget, Reservation, FREE_ALLOWANCE};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Room made in the buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// The first read of a request, before any buffer is allocated.
const FIRST_READ: usize = 512;

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
    /// The memory budget for bodies in flight has no room for this request; the connection
    /// must close (the rest of the value is still on its way).
    #[error("{0}")]
    Busy(BudgetError),
    /// Socket error.
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

/// One complete JSON value, with the budget reservation that covers its bytes (kept while the
/// request is processed).
pub struct Frame {
    bytes: Bytes,
    _budget: Option<Reservation>,
}

impl Frame {
    /// The value's octets, exactly as they arrived (valid UTF-8 JSON).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Extend the frame's reservation to `factor` times its size, for the copies processing
    /// it makes (a SEND's parsed parts, its stored form): the budget then bounds those too.
    pub async fn reserve_processing(
        &mut self,
        budget: &MemoryBudget,
        factor: usize,
    ) -> Result<(), BudgetError> {
        let want = self.bytes.len().saturating_mul(factor);
        if want <= FREE_ALLOWANCE {
            return Ok(());
        }
        self._budget
            .get_or_insert_with(|| budget.start())
            .grow_to(want)
            .await
    }
}

/// Reads concatenated JSON values from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max_frame: usize,
    scan: Scan,
    budget: Option<MemoryBudget>,
    reservation: Option<Reservation>,
}

/// Where the search for the end of the buffered value stands, so each read scans only the new
/// bytes (a 10 MiB request arriving in 16 KiB reads is scanned once, not 640 times).
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Offset of the value's first byte, once seen.
    start: Option<usize>,
    /// Bytes before this offset are scanned.
    pos: usize,
    /// Open objects and arrays.
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// Scan `buf` on from `pos`; the offset just past the value when it is complete.
    fn advance(&mut self, buf: &[u8]) -> Option<usize> {
        for (i, &b) in buf.iter().enumerate().skip(self.pos) {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.pos = i + 1;
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        self.pos = buf.len();
        None
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Refuse values larger than `max_frame` bytes from now on.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// A reader refusing values larger than `max_frame` bytes.
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            max_frame,
            scan: Scan::default(),
            budget: None,
            reservation: None,
        }
    }

    /// Reserve buffer growth beyond the free allowance in `budget` before allocating it.
    pub fn with_budget(mut self, budget: MemoryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The next complete JSON value, exactly as it arrived.
    pub async fn next_frame(&mut self) -> Result<Frame, CodecError> {
        loop {
            if let Some(bytes) = self.take_buffered()? {
                return Ok(Frame {
                    bytes,
                    _budget: self.reservation.take(),
                });
            }
            if self.buf.len() > self.max_frame {
                self.reset(self.buf.len());
                return Err(CodecError::TooLarge(self.max_frame));
            }
            let n = if self.buf.is_empty() {
                // Between requests nothing is allocated: the wait for the next one reads into
                // a small array (an idle connection costs its few hundred bytes, not a buffer).
                let mut first = [0u8; FIRST_READ];
                let n = self.inner.read(&mut first).await?;
                self.buf.extend_from_slice(&first[..n]);
                n
            } else {
                self.make_room().await?;
                self.inner.read_buf(&mut self.buf).await?
            };
            if n == 0 {
                let pending = self.buf.iter().any(|b| !b.is_ascii_whitespace());
                self.reset(self.buf.len());
                return Err(if pending {
                    CodecError::Truncated
                } else {
                    CodecError::Closed
                });
            }
        }
    }

    /// Grow the buffer for the next read, reserving the growth in the budget first.
    async fn make_room(&mut self) -> Result<(), CodecError> {
        let need = self.buf.len() + READ_CHUNK;
        if need <= self.buf.capacity() {
            return Ok(());
        }
        let cap = need
            .max(self.buf.capacity().saturating_mul(2))
            .min(self.max_frame.saturating_add(READ_CHUNK))
            .max(need);
        if let (Some(budget), true) = (&self.budget, cap > FREE_ALLOWANCE) {
            let r = self.reservation.get_or_insert_with(|| budget.start());
            if let Err(e) = r.grow_to(cap).await {
                self.reset(self.buf.len());
                self.reservation = None;
                return Err(CodecError::Busy(e));
            }
        }
        self.buf.reserve_exact(cap - self.buf.len());
        Ok(())
    }

    /// Cut one complete value off the front of the buffer, if there is one.
    fn take_buffered(&mut self) -> Result<Option<Bytes>, CodecError> {
        let start = match self.scan.start {
            Some(s) => s,
            None => {
                let Some(s) = self.buf.iter().position(|b| !b.is_ascii_whitespace()) else {
                    self.buf.clear();
                    return Ok(None);
                };
                self.scan = Scan {
                    start: Some(s),
                    pos: s,
                    ..Scan::default()
                };
                s
            }
        };
        // Objects and arrays (every MMTP request) are cut by the incremental scan and parsed
        // once; a bare scalar is left to the parser (it is small or it is garbage).
        let end = if matches!(self.buf[start], b'{' | b'[') {
            match self.scan.advance(&self.buf) {
                Some(end) => end,
                None => return Ok(None),
            }
        } else {
            let mut values = serde_json::Deserializer::from_slice(&self.buf[start..])
                .into_iter::<Box<RawValue>>();
            match values.next() {
                Some(Ok(_)) => start + values.byte_offset(),
                Some(Err(e)) if e.is_eof() => return Ok(None),
                Some(Err(e)) => {
                    self.reset(self.buf.len());
                    return Err(CodecError::Malformed(e.to_string()));
                }
                None => return Ok(None),
            }
        };
        if end - start > self.max_frame {
            self.reset(end);
            return Err(CodecError::TooLarge(self.max_frame));
        }
        // One pass checks the value is JSON and valid UTF-8; later parses borrow from it.
        if let Err(e) = serde_json::from_slice::<&RawValue>(&self.buf[start..end]) {
            self.reset(self.buf.len());
            return Err(CodecError::Malformed(e.to_string()));
        }
        if end - start <= FREE_ALLOWANCE {
            let frame = Bytes::copy_from_slice(&self.buf[start..end]);
            self.reset(end);
            return Ok(Some(frame));
        }
        // A large value: the buffer itself becomes the frame (no copy); what follows the value
        // moves to a new buffer.
        let rest = self.buf.split_off(end);
        let value = std::mem::replace(&mut self.buf, rest);
        self.reset(0);
        Ok(Some(Bytes::from(value).slice(start..)))
    }

    /// Drop the first `n` buffered bytes and start a new scan; a buffer grown for a large
    /// value is given back.
    fn reset(&mut self, n: usize) {
        self.buf.drain(..n);
        self.scan = Scan::default();
        if self.buf.capacity() > FREE_ALLOWANCE {
            self.buf.shrink_to(self.buf.len().max(READ_CHUNK));
        }
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }
}

pub fn encode_reply(reply: &serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

/// The cause is shown in the message, not again as a source: `{:#}` prints it once.
impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Vec<Result<String, String>> {
        let mut r = FrameReader::new(input, max);
        let mut out = Vec::new();
        loop {
            match r.next_frame().await {
                Ok(v) => out.push(Ok(String::from_utf8(v.bytes().to_vec()).unwrap())),
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
    async fn escapes_and_brackets_inside_strings() {
        let got = frames(br#"{"a":"\"}{[","b":[{"c":"\\"}]} [1,{"d":"]"}]"#, 1000).await;
        assert_eq!(
            got,
            vec![
                Ok(r#"{"a":"\"}{[","b":[{"c":"\\"}]}"#.to_string()),
                Ok(r#"[1,{"d":"]"}]"#.to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn a_large_value_in_many_reads_is_cut_once() {
        let body = "y".repeat(4 * 1024 * 1024);
        let text = format!("{{\"packet\":\"{body}\"}}");
        let (client, server) = tokio::io::duplex(16 * 1024);
        let sent = text.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut client = client;
            for piece in sent.as_bytes().chunks(16 * 1024) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut r = FrameReader::new(server, 8 * 1024 * 1024);
        let frame = r.next_frame().await.unwrap();
        assert_eq!(&frame.bytes()[..], text.as_bytes());
        writer.await.unwrap();
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
        assert_eq!(
            &r.next_frame().await.unwrap().bytes()[..],
            br#"{"action":"CHECK"}"#
        );
        assert_eq!(&r.next_frame().await.unwrap().bytes()[..], br#"{"x":1}"#);
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
