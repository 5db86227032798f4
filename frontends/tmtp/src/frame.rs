//! TMTP framing: four hex digits giving the length of a JSON header, the header, then
//! `datalen` octets of data. Incoming headers are parsed into a typed [`Header`] (keys matched
//! case-insensitively, unknown keys ignored, numbers integers); outgoing ones are compact JSON
//! with sorted keys, as mnm writes them, and `headsum` is CRC-32C over the length prefix and
//! the header without `headsum`.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use std::collections::BTreeMap;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The shortest header: `{"op":1}`.
pub const HEADER_MIN: usize = 8;
/// The longest header four hex digits can announce.
pub const HEADER_MAX: usize = 0xffff;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The link failed or closed (no `quit` is sent).
    #[error("link: {0}")]
    Link(#[from] std::io::Error),
    /// The peer broke the protocol; the text is the `quit` message's `error`.
    #[error("{0}")]
    Protocol(&'static str),
}

/// `quit` texts, as mnm words them (its clients show them).
pub mod quit {
    /// The length prefix is not hex or announces less than the shortest header.
    pub const LENGTH: &str = "invalid header length";
    /// The header is not JSON, or not a valid request.
    pub const HEADER: &str = "invalid header";
    /// A node secret that is not base32.
    pub const BASE32: &str = "corrupt base32 value";
    /// TmtpRev sent twice.
    pub const REPEAT: &str = "disallowed op repetition";
    /// An op that needs a login, before it.
    pub const OFF: &str = "disallowed op on unauthenticated link";
    /// Register or Login on a logged-in link.
    pub const ON: &str = "disallowed op on connected link";
    /// Register or Login before TmtpRev.
    pub const NEED_REV: &str = "tmtprev was omitted";
    /// Register refused.
    pub const REGISTER: &str = "register failure";
    /// Registration is closed on this site.
    pub const REGISTER_CLOSED: &str = "registration is closed";
    /// Wrong uid or node secret (or too many failures).
    pub const LOGIN: &str = "login failed";
    /// The node has a session already.
    pub const NODE_ONLINE: &str = "node already connected";
    /// Quit op.
    pub const LOGOUT: &str = "logout ok";
    /// More data than the request type allows.
    pub const DATA_LONG: &str = "data too long for request type";
    /// Less data than the request type needs.
    pub const DATA_SHORT: &str = "data too short for request type";
    /// Ping or invite text that is not UTF-8.
    pub const NOT_UTF8: &str = "data not valid UTF8";
    /// The memory for message data in flight is in use (mailgate's own; not in mnm).
    pub const BUSY: &str = "server busy; try again later";
    /// PostNotify with `fornotself` and no `for`.
    pub const FOR_EMPTY: &str = "recipient list empty";
}

/// A `for` / `notefor` element: a uid or group name and its type (1 uid, 2 group including the
/// sender, 3 group excluding the sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForEntry {
    /// Uid or group id.
    pub id: String,
    /// The type number (0 when absent; OhiEdit ignores it).
    pub kind: i64,
}

/// A request header, every field mnm knows; absent strings are empty, absent numbers zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The op number; `None` when absent.
    pub op: Option<u8>,
    /// Request id (or the version, for TmtpRev; the acknowledged id, for Ack).
    pub id: String,
    /// Login uid.
    pub uid: String,
    /// Login node secret.
    pub node: String,
    /// A new node's label.
    pub newnode: String,
    /// A new alias.
    pub newalias: String,
    /// Sender alias (Ping, GroupInvite).
    pub from: String,
    /// Recipient alias.
    pub to: String,
    /// OhiEdit's type, Ack's type.
    pub kind: String,
    /// GroupEdit's act.
    pub act: String,
    /// Group id.
    pub gid: String,
    /// Recipients; `None` when absent (`[]` is "only the sender's nodes").
    pub for_list: Option<Vec<ForEntry>>,
    /// PostNotify's notification recipients.
    pub notefor: Option<Vec<ForEntry>>,
    /// PostNotify: leave out the sender's nodes.
    pub fornotself: bool,
    /// Octets of data after the header.
    pub datalen: i64,
    /// Octets of those that are a secondary JSON header.
    pub datahead: i64,
    /// The sender's checksum of the data (passed on, not checked).
    pub datasum: u64,
    /// PostNotify: octets of the notification, at the start of the data.
    pub notelen: i64,
    /// PostNotify: the notification's secondary header length.
    pub notehead: i64,
    /// PostNotify: the notification's checksum.
    pub notesum: u64,
}

fn string(v: Value) -> Result<String, ()> {
    match v {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        _ => Err(()),
    }
}

fn int(v: &Value) -> Result<i64, ()> {
    match v {
        Value::Null => Ok(0),
        Value::Number(n) => n.as_i64().ok_or(()),
        _ => Err(()),
    }
}

fn for_list(v: Value) -> Result<Option<Vec<ForEntry>>, ()> {
    let items = match v {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(()),
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Object(map) = item else {
                return Err(());
            };
            let mut entry = ForEntry {
                id: String::new(),
                kind: 0,
            };
            for (k, v) in map {
                match k.to_ascii_lowercase().as_str() {
                    "id" => entry.id = string(v)?,
                    "type" => entry.kind = int(&v)?,
                    _ => {}
                }
            }
            Ok(entry)
        })
        .collect::<Result<Vec<_>, ()>>()
        .map(Some)
}

/// A header mnm's decoder refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid header")]
pub struct BadHeader;

impl Header {
    /// Parse a header's JSON; `Err` for anything mnm's decoder refuses (not an object, a
    /// field of the wrong type, a fraction where an integer belongs, an op over 255).
    pub fn parse(json: &[u8]) -> Result<Header, BadHeader> {
        Self::fields(json).map_err(|()| BadHeader)
    }

    fn fields(json: &[u8]) -> Result<Header, ()> {
        let Value::Object(map) = serde_json::from_slice(json).map_err(|_| ())? else {
            return Err(());
        };
        let mut h = Header::default();
        for (key, v) in map {
            match key.to_ascii_lowercase().as_str() {
                "op" => {
                    h.op = match v {
                        Value::Null => None,
                        v => Some(u8::try_from(int(&v)?).map_err(|_| ())?),
                    }
                }
                "id" => h.id = string(v)?,
                "uid" => h.uid = string(v)?,
                "node" => h.node = string(v)?,
                "newnode" => h.newnode = string(v)?,
                "newalias" => h.newalias = string(v)?,
                "from" => h.from = string(v)?,
                "to" => h.to = string(v)?,
                "type" => h.kind = string(v)?,
                "act" => h.act = string(v)?,
                "gid" => h.gid = string(v)?,
                "for" => h.for_list = for_list(v)?,
                "notefor" => h.notefor = for_list(v)?,
                "fornotself" => {
                    h.fornotself = match v {
                        Value::Bool(b) => b,
                        Value::Null => false,
                        _ => return Err(()),
                    }
                }
                "datalen" => h.datalen = int(&v)?,
                "datahead" => h.datahead = int(&v)?,
                "datasum" => h.datasum = u64::try_from(int(&v)?).map_err(|_| ())?,
                "notelen" => h.notelen = int(&v)?,
                "notehead" => h.notehead = int(&v)?,
                "notesum" => h.notesum = u64::try_from(int(&v)?).map_err(|_| ())?,
                _ => {}
            }
        }
        Ok(h)
    }
}

/// Read the next header: `Ok(None)` at a clean end of stream before a frame starts.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Header>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Link(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
        got += n;
    }
    let text = std::str::from_utf8(&len).map_err(|_| FrameError::Protocol(quit::LENGTH))?;
    let n = usize::from_str_radix(text, 16).map_err(|_| FrameError::Protocol(quit::LENGTH))?;
    if n < HEADER_MIN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FrameError::Protocol(quit::LENGTH));
    }
    buf.clear();
    buf.resize(n, 0);
    r.read_exact(buf).await?;
    Header::parse(buf)
        .map(Some)
        .map_err(|BadHeader| FrameError::Protocol(quit::HEADER))
}

/// Read exactly `len` octets of data.
pub async fn read_data<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> std::io::Result<Bytes> {
    let mut data = BytesMut::zeroed(len);
    r.read_exact(&mut data).await?;
    Ok(data.freeze())
}

/// An outgoing message: header fields (sorted when written) and data.
#[derive(Debug, Clone, Default)]
pub struct OutFrame {
    fields: BTreeMap<&'static str, Value>,
    data: Bytes,
}

impl OutFrame {
    /// A message with this `op`.
    pub fn new(op: &str) -> Self {
        let mut f = OutFrame::default();
        f.fields.insert("op", Value::from(op));
        f
    }

    /// Set a header field.
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.fields.insert(key, value.into());
        self
    }

    /// Set a header field in place.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.fields.insert(key, value.into());
    }

    /// Attach data (sets `datalen`).
    pub fn with_data(mut self, data: Bytes) -> Self {
        self.fields.insert("datalen", Value::from(data.len()));
        self.data = data;
        self
    }

    /// The frame's bytes, without `headsum` (replies, `tmtprev`, `info`, `quit`, `ohi`).
    pub fn encode(&self) -> Result<Bytes, TooLong> {
        let head = serde_json::to_vec(&self.fields).map_err(|_| TooLong)?;
        frame(&head, &self.data)
    }

    /// The frame's bytes with `headsum`: CRC-32C of the frame's length prefix and header as
    /// they would be without it (mnm's `(std)` messages).
    pub fn encode_with_headsum(mut self) -> Result<Bytes, TooLong> {
        let plain = self.encode()?;
        let head_end = plain.len() - self.data.len();
        let sum = crc32c::crc32c(&plain[..head_end]);
        self.fields.insert("headsum", Value::from(sum));
        self.encode()
    }
}

/// A header longer than four hex digits can announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("header longer than 65535 bytes")]
pub struct TooLong;

fn frame(head: &[u8], data: &[u8]) -> Result<Bytes, TooLong> {
    if head.len() > HEADER_MAX {
        return Err(TooLong);
    }
    let mut out = BytesMut::with_capacity(4 + head.len() + data.len());
    out.put_slice(format!("{:04x}", head.len()).as_bytes());
    out.put_slice(head);
    out.put_slice(data);
    Ok(out.freeze())
}

/// Encode a request as a client sends it (header given as JSON text, data appended).
pub fn request(head: &Value, data: &[u8]) -> Result<Bytes, TooLong> {
    let head = serde_json::to_vec(head).map_err(|_| TooLong)?;
    frame(&head, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_in_any_case_and_unknown_ones_are_ignored() {
        let h = Header::parse(br#"{"Op":2,"UID":"u","Node":"n","extra":[1]}"#).unwrap();
        assert_eq!(h.op, Some(2));
        assert_eq!((h.uid.as_str(), h.node.as_str()), ("u", "n"));
    }

    #[test]
    fn numbers_must_be_integers_and_fields_of_their_type() {
        assert!(Header::parse(br#"{"op":7,"datalen":1.5}"#).is_err());
        assert!(Header::parse(br#"{"op":"7"}"#).is_err());
        assert!(Header::parse(br#"{"op":256}"#).is_err());
        assert!(Header::parse(br#"{"op":7,"id":3}"#).is_err());
        assert!(Header::parse(br#"{"op":7,"for":[{"id":"x","type":"1"}]}"#).is_err());
        assert!(Header::parse(br#"[1]"#).is_err());
        let h = Header::parse(br#"{"op":7,"for":[]}"#).unwrap();
        assert_eq!(h.for_list, Some(vec![]));
    }

    #[test]
    fn headsum_is_crc32c_of_the_frame_without_it() {
        let f = OutFrame::new("delivery").with("id", "1").with("from", "u");
        let plain = f.encode().unwrap();
        let summed = f.encode_with_headsum().unwrap();
        let head: Value = serde_json::from_slice(&summed[4..]).unwrap();
        assert_eq!(
            head["headsum"].as_u64().unwrap(),
            u64::from(crc32c::crc32c(&plain))
        );
        // Keys are sorted, as Go's encoder writes a map.
        assert!(std::str::from_utf8(&plain[4..])
            .unwrap()
            .starts_with(r#"{"from":"u","id":"1","op":"delivery"}"#));
    }

    #[tokio::test]
    async fn lengths_that_are_not_hex_or_too_short_are_refused() {
        for bad in [&b"00zz{}"[..], b"0007{\"op\":1}", b"+00a{\"op\":11}xx"] {
            let mut r = bad;
            let e = read_header(&mut r, &mut Vec::new()).await.unwrap_err();
            assert!(matches!(e, FrameError::Protocol(quit::LENGTH)), "{bad:?}");
        }
        let mut r = &b"0009{\"op\":11}"[..];
        let h = read_header(&mut r, &mut Vec::new()).await.unwrap().unwrap();
        assert_eq!(h.op, Some(11));
    }
}
