//! The protocol-neutral message model every front-end translates to and from.

use crate::address::Address;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A stored message's id: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        MessageId(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

/// One part of a message: a body, an attachment, an inline resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// File name or label of the part (`body`, `logo.jpg`).
    pub name: String,
    /// Media type, e.g. `text/plain`.
    pub media_type: String,
    /// The raw octets.
    pub data: Bytes,
    /// Whether this is the message's content part (the body a reader shows first).
    pub content: bool,
}

/// The media type of a delivery-status report part (RFC 3464 §2.1): a bounce carries one,
/// and renders as `multipart/report` where the format has MIME.
pub const DELIVERY_STATUS: &str = "message/delivery-status";

impl Part {
    /// A `text/plain` content part.
    pub fn text_body(text: impl Into<String>) -> Self {
        Part {
            name: "body".into(),
            media_type: "text/plain; charset=utf-8".into(),
            data: Bytes::from(text.into()),
            content: true,
        }
    }
}

/// Tags as in MMTP spec §8: each category holds a list of values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// `high`, `medium`, `low`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority: Vec<String>,
    /// `personal`, `work`, `promotion`, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<String>,
    /// `urgent`, `important`, `information`, `action_required`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<String>,
}

impl Tags {
    /// True when no category holds a value.
    pub fn is_empty(&self) -> bool {
        self.priority.is_empty()
            && self.category.is_empty()
            && self.status.is_empty()
            && self.custom.is_empty()
    }
}

/// Importance (IMMP `+IMPORTANT` / `-IMPORTANT`, MMTP priority tags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// High priority.
    High,
    /// The default.
    #[default]
    Normal,
    /// Low priority.
    Low,
}

impl Importance {
    /// Stable small integer for storage.
    pub fn code(self) -> i64 {
        match self {
            Importance::High => 1,
            Importance::Normal => 0,
            Importance::Low => -1,
        }
    }
    /// Inverse of [`Importance::code`]; unknown codes read as normal.
    pub fn from_code(c: i64) -> Self {
        match c {
            1 => Importance::High,
            -1 => Importance::Low,
            _ => Importance::Normal,
        }
    }
}

/// Whether a message is mail or a push notification (IMMP `PUSH`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Ordinary mail.
    #[default]
    Mail,
    /// A short push notification.
    Push,
}

/// End-to-end security state. The server never decrypts: encrypted payloads stay opaque.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// ASCII-armored OpenPGP message, when the content is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<String>,
    /// ASCII-armored detached OpenPGP signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Whether the signature verified on arrival (`None`: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_verified: Option<bool>,
    /// Hex SHA-256 of the content as it arrived, when the protocol carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Where the key the signature was checked against came from (`None`: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_source: Option<KeySource>,
    /// What tied the submitter to the sender's address on arrival (`None`: stored before
    /// mailgate recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_check: Option<SenderCheck>,
    /// What this gateway's SPF, DKIM and DMARC checks found for mail that arrived over SMTP,
    /// as an RFC 8601 `Authentication-Results` value on one line
    /// (`mx.example; dkim=pass header.d=… ; spf=pass smtp.mailfrom=… ; dmarc=pass …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<String>,
}

impl Security {
    /// The state a relaying peer may hand on: the content, its signature and hash, never a
    /// verdict reached elsewhere (those are the receiving gateway's own).
    pub fn without_verdicts(self) -> Security {
        Security {
            signature_verified: None,
            key_source: None,
            sender_check: None,
            authentication: None,
            ..self
        }
    }
}

/// This gateway's verdicts on a message, as every read format shows them (JSON field names;
/// absent when not known).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdicts {
    /// Whether the sender's address was checked (see `sender_check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_verified: Option<bool>,
    /// What tied the submitter to the sender's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_check: Option<SenderCheck>,
    /// Whether the signature verified with a trusted key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_verified: Option<bool>,
    /// Where that key came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_source: Option<KeySource>,
    /// SPF, DKIM and DMARC results for mail that arrived over SMTP (see
    /// [`Security::authentication`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<String>,
}

impl Verdicts {
    /// The verdicts as one header value, for MIME renderings:
    /// `sender=unverified; signature=verified; key=sender-domain`.
    pub fn header(&self) -> Option<String> {
        let mut items = Vec::new();
        if let Some(check) = self.sender_check {
            items.push(format!("sender={}", check.as_str()));
        }
        if let Some(verified) = self.signature_verified {
            let verdict = if verified { "verified" } else { "unverified" };
            items.push(format!("signature={verdict}"));
        }
        if let Some(source) = self.key_source {
            items.push(format!("key={}", source.as_str()));
        }
        (!items.is_empty()).then(|| items.join("; "))
    }
}

impl Security {
    /// What this gateway found on arrival.
    pub fn verdicts(&self) -> Verdicts {
        Verdicts {
            sender_verified: self.sender_check.map(SenderCheck::verified),
            sender_check: self.sender_check,
            signature_verified: self.signature_verified,
            key_source: self.key_source,
            authentication: self.authentication.clone(),
        }
    }
}

/// Where the key a signature was checked against came from. A signature counts as verified
/// only with a key from [`KeySource::LocalOwner`] or [`KeySource::SenderDomain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// Registered for a local account by that account, authenticated.
    LocalOwner,
    /// Fetched by this gateway from the sender's own domain (its MMTP server, verified TLS).
    SenderDomain,
    /// Registered for a local account without authentication (trust on first use).
    FirstUse,
    /// No key could be had for the sender.
    None,
}

impl KeySource {
    /// Whether a signature checked against such a key counts as verified.
    pub fn trusted(self) -> bool {
        matches!(self, KeySource::LocalOwner | KeySource::SenderDomain)
    }
    /// The name used in every read format.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::LocalOwner => "local-owner",
            KeySource::SenderDomain => "sender-domain",
            KeySource::FirstUse => "first-use",
            KeySource::None => "none",
        }
    }
}

/// What tied the submitter to the sender's address when the message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SenderCheck {
    /// The sender's own local account submitted it, authenticated.
    Account,
    /// A server of the sender's domain handed it over: its address is one of the domain's
    /// servers, or it authenticated for the domain.
    Domain,
    /// Nothing tied the submitting peer to the sender's domain: the sender is a claim.
    Unverified,
    /// The gateway wrote it itself (bounces, pushes its owner published).
    Gateway,
}

impl SenderCheck {
    /// Whether the sender's address was checked.
    pub fn verified(self) -> bool {
        !matches!(self, SenderCheck::Unverified)
    }
    /// The name used in every read format.
    pub fn as_str(self) -> &'static str {
        match self {
            SenderCheck::Account => "account",
            SenderCheck::Domain => "domain",
            SenderCheck::Unverified => "unverified",
            SenderCheck::Gateway => "gateway",
        }
    }
}

/// One hop a message passed: which protocol, from which peer, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHop {
    /// `mmtp`, `immp`, `xhmtp`, or `local`.
    pub protocol: String,
    /// The peer's address or name.
    pub peer: String,
    /// Unix time in milliseconds.
    pub at: i64,
}

/// The exact bytes a message arrived as, so a relay in the same protocol can forward it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireForm {
    /// Protocol name (`mmtp`, `immp`, `xhmtp`).
    pub protocol: String,
    /// The original octets.
    pub bytes: Bytes,
    /// Where each part's octets lie inside `bytes`, one entry per part of the message (empty
    /// when the front-end did not say). When every part has a span, the store keeps the
    /// octets once — in the wire form — and rebuilds the parts from it when reading.
    pub spans: Vec<Option<WireSpan>>,
}

impl WireForm {
    /// A wire form whose parts are stored separately.
    pub fn new(protocol: impl Into<String>, bytes: Bytes) -> Self {
        WireForm {
            protocol: protocol.into(),
            bytes,
            spans: Vec::new(),
        }
    }

    /// The span of every part, when each has one.
    pub fn all_spans(&self, parts: usize) -> Option<Vec<WireSpan>> {
        (parts > 0 && self.spans.len() == parts)
            .then(|| self.spans.iter().copied().collect::<Option<Vec<_>>>())
            .flatten()
    }

    /// Decode a part's octets from its span.
    pub fn decode(&self, span: &WireSpan) -> Result<Bytes, SpanError> {
        let end = span.start.checked_add(span.len).ok_or(SpanError)?;
        if end > self.bytes.len() {
            return Err(SpanError);
        }
        let raw = self.bytes.slice(span.start..end);
        match span.encoding {
            SpanEncoding::Raw => Ok(raw),
            SpanEncoding::JsonString => serde_json::from_slice::<String>(&raw)
                .map(Bytes::from)
                .map_err(|_| SpanError),
            SpanEncoding::JsonBase64 => {
                use base64::Engine;
                let text = serde_json::from_slice::<std::borrow::Cow<'_, str>>(&raw)
                    .map_err(|_| SpanError)?;
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map(Bytes::from)
                    .map_err(|_| SpanError)
            }
        }
    }
}

/// A part's octets inside a message's wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSpan {
    /// Offset of the first octet.
    pub start: usize,
    /// Number of octets.
    pub len: usize,
    /// How the octets encode the part.
    pub encoding: SpanEncoding,
}

/// How a [`WireSpan`]'s octets encode a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanEncoding {
    /// The part's octets themselves.
    Raw,
    /// A JSON string literal (quotes included) whose value is the part's text.
    JsonString,
    /// A JSON string literal whose value is the part's octets in base64.
    JsonBase64,
}

/// A span that does not decode against its wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a part's span does not decode against the message's wire form")]
pub struct SpanError;

/// A message in mailgate's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Store id.
    pub id: MessageId,
    /// The id the originating client or server gave the message (MMTP `meta.messageId`,
    /// IMMP message-id), kept for replies and de-duplication.
    pub origin_id: Option<String>,
    /// Sender.
    pub sender: Address,
    /// All recipients, as addressed (with folders).
    pub recipients: Vec<Address>,
    /// Subject line.
    pub subject: String,
    /// Ordered parts; at most one has `content` set.
    pub parts: Vec<Part>,
    /// Tags (MMTP §8).
    pub tags: Tags,
    /// Importance.
    pub importance: Importance,
    /// Mail or push notification.
    pub kind: MessageKind,
    /// Encryption and signature state.
    pub security: Security,
    /// Hops so far, oldest first.
    pub trace: Vec<TraceHop>,
    /// The original wire form, if kept.
    pub wire: Option<WireForm>,
    /// When this gateway accepted it (Unix ms).
    pub received_at: i64,
}

impl Message {
    /// A plain-text mail with fresh id and `received_at = now`.
    pub fn new(
        sender: Address,
        recipients: Vec<Address>,
        subject: impl Into<String>,
        body: impl Into<String>,
    ) -> Self {
        Message {
            id: MessageId::new(),
            origin_id: None,
            sender,
            recipients,
            subject: subject.into(),
            parts: vec![Part::text_body(body)],
            tags: Tags::default(),
            importance: Importance::Normal,
            kind: MessageKind::Mail,
            security: Security::default(),
            trace: Vec::new(),
            wire: None,
            received_at: now_ms(),
        }
    }

    /// Size used for limits: subject, parts and armored payloads (the kept wire form is a
    /// second copy of the same content and does not count twice).
    pub fn size(&self) -> usize {
        self.subject.len()
            + self.parts.iter().map(|p| p.data.len()).sum::<usize>()
            + self.security.encrypted.as_ref().map_or(0, String::len)
            + self.security.signature.as_ref().map_or(0, String::len)
    }

    /// The body (the content part) as text; bytes that are not UTF-8 are replaced.
    pub fn body_text(&self) -> String {
        self.content_part()
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
            .unwrap_or_default()
    }

    /// The content part, if any.
    pub fn content_part(&self) -> Option<&Part> {
        self.parts.iter().find(|p| p.content)
    }
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Format Unix milliseconds as RFC 3339 UTC (`2026-11-22T03:14:16Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parse an RFC 3339 date-time (`2026-11-22T02:42:12Z`, fractional seconds and numeric
/// offsets allowed) into ms since the epoch; `None` when malformed.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !s.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        millis = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    }
    let offset_min = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let v = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if &rest[..1] == "-" {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_315_332_189), "2026-11-22T02:42:12Z");
        assert_eq!(rfc3339(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_parses_what_it_prints() {
        for ms in [0, 951_782_400_000, 1_795_315_332_000, -1000] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339("2026-11-22T02:42:12.189Z"),
            Some(1_795_315_332_189)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T03:42:12+01:00"),
            Some(1_795_315_332_000)
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-02-30T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T00:00:00",
            "2026-11-22T00:00:00.Z",
            "２０２６-11-22T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
