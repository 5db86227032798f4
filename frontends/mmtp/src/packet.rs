//! MMTP packets: parse and validate a SEND packet into the model, and render stored messages
//! back into packets for RECEIVE.
//!
//! The packet's bytes are kept exactly as they arrived (the wire form), so a packet that came
//! in over MMTP goes out again unchanged — only `meta.signatureVerified` is set by the server.

use crate::jsjson;
use base64::Engine;
use bytes::Bytes;
use indexmap::IndexMap;
use mailgate_core::message::{now_ms, SpanEncoding, WireForm, WireSpan};
use mailgate_core::store::TagFilter;
use mailgate_core::{Address, Importance, Message, Part, Security, Tags};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Predefined values of the `priority` category (spec §8.2).
pub const PRIORITY: &[&str] = &["high", "medium", "low"];
/// Predefined values of the `category` category.
pub const CATEGORY: &[&str] = &[
    "personal",
    "work",
    "finance",
    "social",
    "promotion",
    "coupon",
    "shop",
    "notification",
];
/// Predefined values of the `status` category.
pub const STATUS: &[&str] = &["urgent", "important", "information", "action_required"];
/// Most custom tags kept per message.
pub const MAX_CUSTOM_TAGS: usize = 32;
/// Longest custom tag kept.
pub const MAX_TAG_LEN: usize = 64;
/// Message types of spec §4.2.
pub const MESSAGE_TYPES: &[&str] = &["SEND", "REPLY", "FORWARD"];

/// Why a SEND packet was refused; each text is the `message` of the ERROR reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Structure is wrong (missing or mistyped field).
    #[error("invalid packet: {0}")]
    Invalid(String),
    /// Sender or recipient is not an MMTP address.
    #[error("invalid {field} address {value:?}: {reason}")]
    Address {
        /// `sender` or `recipient`.
        field: &'static str,
        /// The text.
        value: String,
        /// Why.
        reason: String,
    },
    /// `meta.type` is not SEND, REPLY or FORWARD.
    #[error("unknown message type {0:?}: use SEND, REPLY or FORWARD")]
    Type(String),
    /// The content hash does not match.
    #[error("message integrity check failed: messageHash does not match the content")]
    Integrity,
    /// No HashCash token.
    #[error("hashcash token missing (meta.hashcashToken)")]
    NoStamp,
}

/// The HashCash stamp of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketStamp {
    /// Token text.
    pub token: String,
    /// `counter`, when it is a whole number.
    pub counter: Option<u64>,
}

/// A validated SEND packet.
#[derive(Debug, Clone)]
pub struct SendPacket {
    /// The model message (fresh id, received now, wire form = the packet's exact bytes).
    pub message: Message,
    /// The client's `meta.messageId`, echoed in the reply.
    pub client_id: String,
    /// Sender and recipient exactly as written (the stamp names them so).
    pub sender_text: String,
    /// See `sender_text`.
    pub recipient_text: String,
    /// The stamp.
    pub stamp: PacketStamp,
    /// Whether the content is encrypted.
    pub encrypted: bool,
    /// The detached signature, when the packet is signed.
    pub signature: Option<String>,
    /// The bytes a signature covers: `JSON.stringify(content)` (for plaintext content).
    pub signed_text: Option<String>,
}

/// A packet's top level, borrowed from its bytes: the large `content` is kept as raw text.
#[derive(Deserialize)]
struct WirePacket<'a> {
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    sender: Option<Value>,
    recipient: Option<Value>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    verification: Option<Value>,
}

/// The content object, each field still raw: the body and attachments are decoded only once,
/// straight into the message (or kept as spans of the packet when no decoding is needed).
#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    subject: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(borrow)]
    encrypted: Option<&'a RawValue>,
    #[serde(borrow)]
    attachments: Option<&'a RawValue>,
}

/// One attachment of the `attachments` extension.
#[derive(Deserialize)]
struct Attachment<'a> {
    name: Option<Value>,
    #[serde(rename = "type")]
    media_type: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A part's octets and where they lie in the packet.
struct Decoded {
    data: Bytes,
    span: WireSpan,
}

/// Where `sub` (borrowed from `packet`) starts in it.
fn offset_in(packet: &Bytes, sub: &str) -> usize {
    (sub.as_ptr() as usize).saturating_sub(packet.as_ptr() as usize)
}

/// A JSON string literal of the packet as a part: a slice of the packet when it has no
/// escapes, else its decoded text.
fn string_part(packet: &Bytes, literal: &str) -> Result<Decoded, ()> {
    let start = offset_in(packet, literal);
    let inner = literal
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .ok_or(())?;
    if !inner.contains('\\') {
        return Ok(Decoded {
            data: packet.slice_ref(inner.as_bytes()),
            span: WireSpan {
                start: start + 1,
                len: inner.len(),
                encoding: SpanEncoding::Raw,
            },
        });
    }
    let text: String = serde_json::from_str(literal).map_err(|_| ())?;
    Ok(Decoded {
        data: Bytes::from(text),
        span: WireSpan {
            start,
            len: literal.len(),
            encoding: SpanEncoding::JsonString,
        },
    })
}

/// An optional string field: `null` and absence are `None`.
fn optional_string(raw: Option<&RawValue>) -> Result<Option<Value>, ()> {
    match raw.map(|r| serde_json::from_str::<Value>(r.get())) {
        None | Some(Ok(Value::Null)) => Ok(None),
        Some(Ok(v @ Value::String(_))) => Ok(Some(v)),
        Some(_) => Err(()),
    }
}

fn invalid(s: impl Into<String>) -> PacketError {
    PacketError::Invalid(s.into())
}

fn address(field: &'static str, v: Option<Value>) -> Result<(Address, String), PacketError> {
    let text = match v {
        Some(Value::String(s)) => s,
        _ => return Err(invalid(format!("{field} must be a string"))),
    };
    let a = Address::parse_mmtp(&text).map_err(|e| PacketError::Address {
        field,
        value: text.clone(),
        reason: e.to_string(),
    })?;
    Ok((a, text))
}

/// Keep the predefined values of each category (case-insensitive, stored lower-case) and up to
/// [`MAX_CUSTOM_TAGS`] custom strings; drop everything else.
pub fn normalise_tags(v: Option<&Value>) -> Tags {
    let mut tags = Tags::default();
    let Some(Value::Object(map)) = v else {
        return tags;
    };
    let known = |cat: &str, allowed: &[&str]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(Value::Array(items)) = map.get(cat) {
            for item in items.iter().filter_map(Value::as_str) {
                let lower = item.to_ascii_lowercase();
                if allowed.contains(&lower.as_str()) && !out.contains(&lower) {
                    out.push(lower);
                }
            }
        }
        out
    };
    tags.priority = known("priority", PRIORITY);
    tags.category = known("category", CATEGORY);
    tags.status = known("status", STATUS);
    if let Some(Value::Array(items)) = map.get("custom") {
        for item in items.iter().filter_map(Value::as_str) {
            if !item.is_empty()
                && item.len() <= MAX_TAG_LEN
                && !tags.custom.iter().any(|c| c == item)
                && tags.custom.len() < MAX_CUSTOM_TAGS
            {
                tags.custom.push(item.to_owned());
            }
        }
    }
    tags
}

/// Which text the content hash covers: the raw bytes (hashed once, not copied), else
/// `JSON.stringify` of the parsed content (built only then).
enum HashedText {
    Raw,
    Stringified(String),
}

/// Check the content hash: first over the bytes as they arrived, then over JavaScript's
/// serialisation of the parsed value. Returns the text that matched (what a signature covers).
fn matching_text(raw: &str, expected: &str) -> Option<HashedText> {
    let hex_of = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    let expected = expected.to_ascii_lowercase();
    if hex_of(raw) == expected {
        return Some(HashedText::Raw);
    }
    let parsed: Map<String, Value> = serde_json::from_str(raw).ok()?;
    let js = jsjson::stringify_object(&parsed);
    (hex_of(&js) == expected).then_some(HashedText::Stringified(js))
}

/// Parse and validate the `data.packet` of a SEND request: `packet` is its exact bytes (a
/// slice of the request frame; the message's wire form and unescaped parts share them).
/// `peer` is recorded in the trace.
pub fn parse_send(packet: impl Into<Bytes>, peer: &str) -> Result<SendPacket, PacketError> {
    let packet: Bytes = packet.into();
    let wire: WirePacket<'_> = serde_json::from_slice(&packet)
        .map_err(|e| invalid(format!("packet is not an object: {e}")))?;
    let meta: Map<String, Value> = match wire.meta {
        Some(m) => serde_json::from_str(m.get()).map_err(|_| invalid("meta must be an object"))?,
        None => return Err(invalid("meta is missing")),
    };
    let (sender, sender_text) = address("sender", wire.sender)?;
    let (recipient, recipient_text) = address("recipient", wire.recipient)?;
    let kind = match meta.get("type") {
        None => "SEND".to_owned(),
        Some(Value::String(t)) if MESSAGE_TYPES.contains(&t.as_str()) => t.clone(),
        Some(Value::String(t)) => return Err(PacketError::Type(t.clone())),
        Some(_) => return Err(invalid("meta.type must be a string")),
    };
    let client_id = match meta.get("messageId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None => return Err(invalid("meta.messageId is missing")),
        Some(_) => {
            return Err(invalid(
                "meta.messageId must be a string of 1-256 characters",
            ))
        }
    };
    let stamp = match meta.get("hashcashToken") {
        Some(Value::Object(t)) => PacketStamp {
            token: t
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("meta.hashcashToken.token must be a string"))?
                .to_owned(),
            counter: t.get("counter").and_then(Value::as_u64),
        },
        None | Some(Value::Null) => return Err(PacketError::NoStamp),
        Some(_) => return Err(invalid("meta.hashcashToken must be {token, counter}")),
    };
    let content_raw = wire.content.ok_or_else(|| invalid("content is missing"))?;
    let content: Content<'_> = serde_json::from_str(content_raw.get())
        .map_err(|e| invalid(format!("content must be an object: {e}")))?;
    let encrypted_text = match optional_string(content.encrypted) {
        Ok(v) => v.and_then(|v| v.as_str().map(str::to_owned)),
        Err(()) => return Err(invalid("content.encrypted must be a string")),
    };
    let encrypted = encrypted_text.is_some();
    if meta.get("encrypted").and_then(Value::as_bool) == Some(true) && !encrypted {
        return Err(invalid(
            "meta.encrypted is true but content.encrypted is missing",
        ));
    }
    let verification = match wire.verification {
        Some(Value::Object(v)) => v,
        None => return Err(invalid("verification is missing")),
        Some(_) => return Err(invalid("verification must be an object")),
    };
    let message_hash = verification.get("messageHash").and_then(Value::as_str);
    let signature = match verification.get("signature") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::String(_)) | Some(Value::Null) | None => None,
        Some(_) => return Err(invalid("verification.signature must be a string")),
    };
    // Encrypted content: the hash covers the plaintext, which the server never sees. The
    // covered text is kept only when a signature needs it.
    let signed_text = if encrypted {
        None
    } else {
        let hash = message_hash.ok_or_else(|| invalid("verification.messageHash is missing"))?;
        let hashed = matching_text(content_raw.get(), hash).ok_or(PacketError::Integrity)?;
        signature.as_ref().map(|_| match hashed {
            HashedText::Raw => content_raw.get().to_owned(),
            HashedText::Stringified(js) => js,
        })
    };
    let tags = normalise_tags(meta.get("tags"));
    let importance = if tags.priority.iter().any(|p| p == "high") {
        Importance::High
    } else if tags.priority.iter().any(|p| p == "low") {
        Importance::Low
    } else {
        Importance::Normal
    };
    let mut message = Message::new(sender, vec![recipient], "", "");
    message.parts.clear();
    message.origin_id = Some(client_id.clone());
    message.tags = tags;
    message.importance = importance;
    message.security.content_hash = message_hash.map(str::to_ascii_lowercase);
    message.security.signature = signature.clone();
    let mut spans = Vec::new();
    if encrypted {
        message.security.encrypted = encrypted_text;
    } else {
        message.subject = match optional_string(content.subject) {
            Ok(v) => v
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            Err(()) => return Err(invalid("content.subject must be a string")),
        };
        let body = match content.body.filter(|b| b.get() != "null") {
            None => Decoded {
                data: Bytes::new(),
                span: WireSpan {
                    start: 0,
                    len: 0,
                    encoding: SpanEncoding::Raw,
                },
            },
            Some(b) => string_part(&packet, b.get())
                .map_err(|()| invalid("content.body must be a string"))?,
        };
        let mut part = Part::text_body(String::new());
        part.data = body.data;
        message.parts.push(part);
        spans.push(Some(body.span));
        for (part, span) in parse_attachments(&packet, content.attachments)? {
            message.parts.push(part);
            spans.push(Some(span));
        }
    }
    if kind != "SEND" {
        message.tags.custom.retain(|c| !c.starts_with("mmtp-type:"));
        message.tags.custom.push(format!("mmtp-type:{kind}"));
    }
    message.trace.push(mailgate_core::TraceHop {
        protocol: "mmtp".into(),
        peer: peer.to_owned(),
        at: now_ms(),
    });
    let mut wire_form = WireForm::new("mmtp", packet);
    wire_form.spans = spans;
    message.wire = Some(wire_form);
    Ok(SendPacket {
        message,
        client_id,
        sender_text,
        recipient_text,
        stamp,
        encrypted,
        signature,
        signed_text,
    })
}

/// The `attachments` extension: `[{name, type, data (base64)}]` inside `content`, so the content
/// hash and signature cover it. Each part's octets are kept as a span of the packet.
fn parse_attachments(
    packet: &Bytes,
    raw: Option<&RawValue>,
) -> Result<Vec<(Part, WireSpan)>, PacketError> {
    let items: Vec<&RawValue> = match raw.map(RawValue::get) {
        None | Some("null") => return Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|_| invalid("content.attachments must be an array"))?,
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let missing = || invalid(format!("content.attachments[{i}].data is missing"));
            let a: Attachment<'_> = serde_json::from_str(item.get()).map_err(|_| missing())?;
            let literal = a
                .data
                .map(RawValue::get)
                .filter(|d| d.starts_with('"'))
                .ok_or_else(missing)?;
            let span = WireSpan {
                start: offset_in(packet, literal),
                len: literal.len(),
                encoding: SpanEncoding::JsonBase64,
            };
            let text: std::borrow::Cow<'_, str> =
                serde_json::from_str(literal).map_err(|_| missing())?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| invalid(format!("content.attachments[{i}].data: bad base64: {e}")))?;
            let text_of = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_owned);
            let part = Part {
                name: text_of(&a.name).unwrap_or_else(|| "attachment".to_owned()),
                media_type: text_of(&a.media_type)
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                data: Bytes::from(data),
                content: false,
            };
            Ok((part, span))
        })
        .collect()
}

/// Render a stored message as a packet, as text.
///
/// A message that arrived over MMTP goes out as the bytes it arrived as, with only the
/// server's verdicts ([`verdicts`]) set in `meta`; others are built from the model.
pub fn render(message: &Message) -> String {
    if let Some(wire) = message.wire.as_ref().filter(|w| w.protocol == "mmtp") {
        if let Some(text) = splice_verdicts(&wire.bytes, &message.security) {
            return text;
        }
    }
    build_packet(message)
}

/// What this server found on arrival, as `meta` fields: `signatureVerified` (always), and when
/// known `keySource`, `senderVerified` and `senderCheck` ([`mailgate_core::Verdicts`]).
pub fn verdicts(security: &Security) -> Map<String, Value> {
    let mut out = match serde_json::to_value(security.verdicts()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    out.insert(
        "signatureVerified".into(),
        Value::Bool(security.signature_verified.unwrap_or(false)),
    );
    out
}

fn splice_verdicts(bytes: &[u8], security: &Security) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut packet: IndexMap<String, Box<RawValue>> = serde_json::from_str(text).ok()?;
    let mut meta: Map<String, Value> = serde_json::from_str(packet.get("meta")?.get()).ok()?;
    meta.extend(verdicts(security));
    let meta = RawValue::from_string(serde_json::to_string(&meta).ok()?).ok()?;
    packet.insert("meta".into(), meta);
    serde_json::to_string(&packet).ok()
}

fn mmtp_or_imid(a: &Address) -> String {
    a.account().to_mmtp().unwrap_or_else(|_| a.to_string())
}

/// Plaintext `content`: `{subject, body}` plus the `attachments` extension when there are any.
pub fn plain_content<'a>(
    subject: &str,
    body: &str,
    attachments: impl Iterator<Item = &'a Part>,
) -> Map<String, Value> {
    let mut content = Map::new();
    content.insert("subject".into(), Value::String(subject.to_owned()));
    content.insert("body".into(), Value::String(body.to_owned()));
    let items: Vec<Value> = attachments
        .map(|p| {
            json!({
                "name": p.name,
                "type": p.media_type,
                "data": base64::engine::general_purpose::STANDARD.encode(&p.data),
            })
        })
        .collect();
    if !items.is_empty() {
        content.insert("attachments".into(), Value::Array(items));
    }
    content
}

fn build_packet(m: &Message) -> String {
    let mut content = Map::new();
    if let Some(enc) = &m.security.encrypted {
        content.insert("encrypted".into(), Value::String(enc.clone()));
    } else {
        content = plain_content(
            &m.subject,
            &m.body_text(),
            m.parts.iter().filter(|p| !p.content),
        );
    }
    let content = Value::Object(content);
    let hash = hex::encode(Sha256::digest(jsjson::stringify(&content).as_bytes()));
    let mut verification =
        json!({ "messageHash": m.security.content_hash.clone().unwrap_or(hash) });
    if let Some(sig) = &m.security.signature {
        verification["signature"] = Value::String(sig.clone());
    }
    let kind = message_type(m);
    let tags = wire_tags(m);
    let mut meta = json!({
        "type": kind,
        "messageId": m.origin_id.clone().unwrap_or_else(|| m.id.to_string()),
        "timestamp": m.received_at,
        "hashcashToken": Value::Null,
        "encrypted": m.security.encrypted.is_some(),
        "signed": m.security.signature.is_some(),
        "tags": tags,
    });
    if let Value::Object(fields) = &mut meta {
        fields.extend(verdicts(&m.security));
    }
    let packet = json!({
        "meta": meta,
        "sender": mmtp_or_imid(&m.sender),
        "recipient": m.recipients.first().map(mmtp_or_imid).unwrap_or_default(),
        "content": content,
        "verification": verification,
    });
    jsjson::stringify(&packet)
}

/// The MMTP message type of a stored message (`SEND` unless it arrived as a REPLY or FORWARD).
pub fn message_type(m: &Message) -> &str {
    m.tags
        .custom
        .iter()
        .find_map(|c| c.strip_prefix("mmtp-type:"))
        .unwrap_or("SEND")
}

/// A stored message's tags as MMTP carries them: importance as a `priority` tag (MMTP has no
/// other place for it), without the internal `mmtp-type:` marker.
pub fn wire_tags(m: &Message) -> Tags {
    let mut tags = m.tags.clone();
    let level = match m.importance {
        Importance::High => Some("high"),
        Importance::Low => Some("low"),
        Importance::Normal => None,
    };
    if let Some(level) = level {
        if !tags.priority.iter().any(|p| p == level) {
            tags.priority.push(level.to_owned());
        }
    }
    tags.custom.retain(|c| !c.starts_with("mmtp-type:"));
    tags
}

/// Most categories one `tagFilters` may name.
const MAX_FILTER_CATEGORIES: usize = 8;
/// Most values it may list per category.
const MAX_FILTER_VALUES: usize = 64;

/// Parse `tagFilters` (spec §8.3: a message matches when it has any listed value of every
/// listed category): an object of category → array of strings. `None` when it can match
/// nothing: a category MMTP does not have, with values.
pub fn parse_filter(v: Option<&Value>) -> Result<Option<TagFilter>, PacketError> {
    let mut out = TagFilter::default();
    let mut matches_something = true;
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            if map.len() > MAX_FILTER_CATEGORIES {
                return Err(invalid(format!(
                    "tagFilters may name at most {MAX_FILTER_CATEGORIES} categories"
                )));
            }
            for (cat, values) in map {
                let Value::Array(items) = values else {
                    return Err(invalid(format!(
                        "tagFilters.{cat} must be an array of strings"
                    )));
                };
                if items.len() > MAX_FILTER_VALUES {
                    return Err(invalid(format!(
                        "tagFilters.{cat} may list at most {MAX_FILTER_VALUES} values"
                    )));
                }
                let mut vals = Vec::new();
                for item in items {
                    let s = item.as_str().ok_or_else(|| {
                        invalid(format!("tagFilters.{cat} must be an array of strings"))
                    })?;
                    vals.push(if cat == "custom" {
                        s.to_owned()
                    } else {
                        s.to_ascii_lowercase()
                    });
                }
                let known = ["priority", "category", "status", "custom"].contains(&cat.as_str());
                if !known && !vals.is_empty() {
                    matches_something = false;
                }
                out.categories.push((cat.clone(), vals));
            }
        }
        Some(_) => return Err(invalid("tagFilters must be an object")),
    }
    Ok(matches_something.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/../../tests/fixtures/mmtp/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn packet_of(frame: &str) -> String {
        let v: IndexMap<String, Box<RawValue>> = serde_json::from_str(frame).unwrap();
        let data: IndexMap<String, Box<RawValue>> = serde_json::from_str(v["data"].get()).unwrap();
        data["packet"].get().to_owned()
    }

    #[test]
    fn original_client_frames_parse() {
        for name in ["send-plain.json", "send-signed.json", "send-encrypted.json"] {
            let raw = packet_of(&fixture(name));
            let p = parse_send(raw.clone(), "127.0.0.1").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.sender_text, "(alice)%(a.test)");
            assert_eq!(p.message.wire.as_ref().unwrap().bytes, raw.as_bytes());
        }
        let signed = parse_send(packet_of(&fixture("send-signed.json")), "x").unwrap();
        assert_eq!(signed.message.importance, Importance::High);
        assert_eq!(signed.message.tags.custom, vec!["fixtures".to_string()]);
        assert!(signed.signature.is_some());
        let enc = parse_send(packet_of(&fixture("send-encrypted.json")), "x").unwrap();
        assert!(enc.encrypted && enc.signed_text.is_none());
    }

    #[test]
    fn rendering_an_mmtp_message_returns_its_bytes() {
        let raw = packet_of(&fixture("send-signed.json"));
        let mut p = parse_send(raw.clone(), "x").unwrap();
        p.message.security.signature_verified = Some(true);
        let out = render(&p.message);
        let back: Value = serde_json::from_str(&out).unwrap();
        let orig: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(back["meta"]["signatureVerified"], true);
        assert_eq!(back["content"], orig["content"]);
        // The content bytes are untouched.
        let content_raw: IndexMap<String, Box<RawValue>> = serde_json::from_str(&out).unwrap();
        let orig_raw: IndexMap<String, Box<RawValue>> = serde_json::from_str(&raw).unwrap();
        assert_eq!(content_raw["content"].get(), orig_raw["content"].get());
        assert_eq!(
            content_raw.keys().collect::<Vec<_>>(),
            orig_raw.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn validation_errors_name_the_reason() {
        let raw = packet_of(&fixture("send-plain.json"));
        let tamper = raw.replace("Hello Bob", "Hello Eve");
        assert_eq!(parse_send(tamper, "x").unwrap_err(), PacketError::Integrity);
        let bad = raw.replace(
            "\"sender\":\"(alice)%(a.test)\"",
            "\"sender\":\"alice@a.test\"",
        );
        assert!(matches!(
            parse_send(bad.clone(), "x"),
            Err(PacketError::Address {
                field: "sender",
                ..
            })
        ));
        let bad = raw.replace("\"type\":\"SEND\"", "\"type\":\"SPAM\"");
        assert_eq!(
            parse_send(bad.clone(), "x").unwrap_err(),
            PacketError::Type("SPAM".into())
        );
        assert!(parse_send("[]", "x").is_err());
        assert!(parse_send("{\"meta\":{}}", "x").is_err());
    }

    /// A packet's parts are spans of its bytes: an unescaped body shares them, an escaped body
    /// and base64 attachments decode from their spans to exactly the parsed octets.
    #[test]
    fn parts_are_spans_of_the_packet() {
        let content = r#"{"subject":"s","body":"line one\nline \"two\"","attachments":[{"name":"a.txt","type":"text/plain","data":"aGVsbG8="}]}"#;
        for (content, escaped) in [
            (content.to_owned(), true),
            (content.replace("\\n", " ").replace("\\\"", "'"), false),
        ] {
            let hash = hex::encode(Sha256::digest(content.as_bytes()));
            let packet = format!(
                r#"{{"meta":{{"messageId":"m1","hashcashToken":{{"token":"t","counter":1}}}},"sender":"(a)%(x.test)","recipient":"(b)%(y.test)","content":{content},"verification":{{"messageHash":"{hash}"}}}}"#
            );
            let bytes = Bytes::from(packet.clone());
            let p = parse_send(bytes.clone(), "x").unwrap();
            let wire = p.message.wire.as_ref().unwrap();
            assert_eq!(
                wire.bytes.as_ptr(),
                bytes.as_ptr(),
                "the wire form is the packet itself"
            );
            let spans = wire
                .all_spans(p.message.parts.len())
                .expect("every part has a span");
            for (part, span) in p.message.parts.iter().zip(&spans) {
                assert_eq!(wire.decode(span).unwrap(), part.data);
            }
            assert_eq!(&p.message.parts[1].data[..], b"hello");
            let body = &p.message.parts[0].data;
            let inside = bytes.as_ptr_range().contains(&body.as_ptr());
            assert_eq!(
                inside, !escaped,
                "an unescaped body is a slice of the packet"
            );
            if escaped {
                assert_eq!(&body[..], b"line one\nline \"two\"");
            }
        }
    }

    #[test]
    fn messages_from_other_protocols_render_with_a_valid_hash() {
        let mut m = Message::new(
            Address::parse_imid("carol@x.test").unwrap(),
            vec![Address::parse_imid("bob@a.test").unwrap()],
            "Hi",
            "Body",
        );
        m.tags.category.push("work".into());
        let text = render(&m);
        let p = parse_send(
            text.replace(
                "\"hashcashToken\":null",
                "\"hashcashToken\":{\"token\":\"t\",\"counter\":0}",
            ),
            "x",
        )
        .unwrap();
        assert_eq!(p.message.subject, "Hi");
        assert_eq!(p.message.tags.category, vec!["work".to_string()]);
    }

    #[test]
    fn tags_and_filters() {
        let tags = normalise_tags(Some(&json!({
            "priority": ["HIGH", "bogus"], "category": ["promotion", "coupon", "x"],
            "status": [1, "urgent"], "custom": ["a", "a", ""], "other": ["z"]
        })));
        assert_eq!(tags.priority, vec!["high"]);
        assert_eq!(tags.category, vec!["promotion", "coupon"]);
        assert_eq!(tags.status, vec!["urgent"]);
        assert_eq!(tags.custom, vec!["a"]);
        let f = parse_filter(Some(
            &json!({"category": ["Coupon", "shop"], "priority": [], "custom": ["A"]}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            f.categories,
            vec![
                ("category".into(), vec!["coupon".into(), "shop".into()]),
                ("priority".into(), vec![]),
                ("custom".into(), vec!["A".into()]),
            ]
        );
        assert!(parse_filter(Some(&json!({"other": ["x"]})))
            .unwrap()
            .is_none());
        assert!(parse_filter(Some(&json!({"other": []}))).unwrap().is_some());
        assert!(parse_filter(Some(&json!({"category": "shop"}))).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("v{i}")).collect();
        assert!(parse_filter(Some(&json!({ "custom": many }))).is_err());
        assert!(parse_filter(Some(&json!([1]))).is_err());
    }
}
