//! How the model is laid out in database rows, shared by every back-end: the JSON column of a
//! message, parts kept as spans of the wire form, stored addresses, codes of enumerations, and
//! the origin key that de-duplicates relayed mail.

use super::{FetchState, MessageSummary, QueueState, StoreError};
use crate::address::Address;
use crate::message::{
    Importance, Message, MessageId, MessageKind, Part, Security, Tags, TraceHop, WireForm, WireSpan,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The JSON column of a message: what has no column of its own.
#[derive(Serialize, Deserialize)]
pub(crate) struct MessageMeta {
    recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin_id: Option<String>,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    security: Security,
    #[serde(default)]
    trace: Vec<TraceHop>,
    /// The parts, when every one of them lies in the wire form (then no part rows exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<SpannedPart>>,
}

/// A part kept as a span of its message's wire form.
#[derive(Serialize, Deserialize)]
struct SpannedPart {
    name: String,
    media_type: String,
    content: bool,
    span: WireSpan,
}

/// The meta column of `m`, and whether its parts need rows of their own (`false` when every
/// part is a span of the wire form and so stored once, inside it).
pub(crate) fn encode_meta(m: &Message) -> Result<(String, bool), StoreError> {
    let parts = spanned_parts(m);
    let separate = parts.is_none();
    let meta = MessageMeta {
        recipients: m.recipients.iter().map(ToString::to_string).collect(),
        origin_id: m.origin_id.clone(),
        tags: m.tags.clone(),
        security: m.security.clone(),
        trace: m.trace.clone(),
        parts,
    };
    let text = serde_json::to_string(&meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((text, separate))
}

/// The parts of `m` as spans of its wire form, when every part has one.
fn spanned_parts(m: &Message) -> Option<Vec<SpannedPart>> {
    let spans = m.wire.as_ref()?.all_spans(m.parts.len())?;
    let parts = m
        .parts
        .iter()
        .zip(spans)
        .map(|(p, span)| SpannedPart {
            name: p.name.clone(),
            media_type: p.media_type.clone(),
            content: p.content,
            span,
        })
        .collect();
    debug_assert!(m.wire.as_ref().is_some_and(|w| {
        m.parts
            .iter()
            .zip(&w.spans)
            .all(|(p, s)| s.is_some_and(|s| w.decode(&s).ok().as_ref() == Some(&p.data)))
    }));
    Some(parts)
}

fn decode_meta(meta: &str) -> Result<MessageMeta, StoreError> {
    serde_json::from_str(meta).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A message's row (without part rows), decoded.
pub(crate) struct StoredMessage {
    id: MessageId,
    sender: Address,
    subject: String,
    kind: MessageKind,
    importance: Importance,
    received_at: i64,
    meta: MessageMeta,
    wire: Option<WireForm>,
}

/// The columns of a message row, as a back-end reads them.
pub(crate) struct MessageRow {
    /// `sender`.
    pub sender: String,
    /// `subject`.
    pub subject: String,
    /// `kind` ([`kind_code`]).
    pub kind: i64,
    /// `importance` ([`Importance::code`]).
    pub importance: i64,
    /// `received_at`.
    pub received_at: i64,
    /// `meta` (JSON text).
    pub meta: String,
    /// `wire_protocol`.
    pub wire_protocol: Option<String>,
    /// `wire`.
    pub wire: Option<Vec<u8>>,
}

impl StoredMessage {
    /// Decode a message row.
    pub(crate) fn decode(id: MessageId, row: MessageRow) -> Result<Self, StoreError> {
        Ok(StoredMessage {
            id,
            sender: parse_stored_address(&row.sender)?,
            subject: row.subject,
            kind: kind_from_code(row.kind),
            importance: Importance::from_code(row.importance),
            received_at: row.received_at,
            meta: decode_meta(&row.meta)?,
            wire: match (row.wire_protocol, row.wire) {
                (Some(protocol), Some(bytes)) => Some(WireForm::new(protocol, bytes.into())),
                _ => None,
            },
        })
    }

    /// Whether the parts are in rows of their own (to be read and passed to
    /// [`Self::into_message`]) rather than spans of the wire form.
    pub(crate) fn has_part_rows(&self) -> bool {
        self.meta.parts.is_none()
    }

    /// The message, with `part_rows` as its parts when it keeps them in rows.
    pub(crate) fn into_message(mut self, part_rows: Vec<Part>) -> Result<Message, StoreError> {
        let parts = match (self.meta.parts.take(), &mut self.wire) {
            (Some(spanned), Some(wire)) => spanned
                .into_iter()
                .map(|p| {
                    wire.spans.push(Some(p.span));
                    Ok(Part {
                        data: wire
                            .decode(&p.span)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        name: p.name,
                        media_type: p.media_type,
                        content: p.content,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?,
            (Some(_), None) => {
                return Err(StoreError::Corrupt(
                    "message parts refer to a missing wire form".into(),
                ))
            }
            (None, _) => part_rows,
        };
        Ok(Message {
            id: self.id,
            origin_id: self.meta.origin_id,
            sender: self.sender,
            recipients: parse_addresses(&self.meta.recipients)?,
            subject: self.subject,
            parts,
            tags: self.meta.tags,
            importance: self.importance,
            kind: self.kind,
            security: self.meta.security,
            trace: self.meta.trace,
            wire: self.wire,
            received_at: self.received_at,
        })
    }
}

/// A summary from a message row's columns (no wire form, no parts).
pub(crate) fn summary(
    id: MessageId,
    row: MessageRow,
    size: i64,
) -> Result<MessageSummary, StoreError> {
    let meta = decode_meta(&row.meta)?;
    Ok(MessageSummary {
        id,
        sender: parse_stored_address(&row.sender)?,
        recipients: parse_addresses(&meta.recipients)?,
        subject: row.subject,
        sender_check: meta.security.sender_check,
        tags: meta.tags,
        importance: Importance::from_code(row.importance),
        kind: kind_from_code(row.kind),
        size: size.max(0) as u64,
        received_at: row.received_at,
    })
}

fn parse_addresses(list: &[String]) -> Result<Vec<Address>, StoreError> {
    list.iter().map(|a| parse_stored_address(a)).collect()
}

/// An address as stored (its IMID form, or an Internet mail address from SMTP).
pub(crate) fn parse_stored_address(s: &str) -> Result<Address, StoreError> {
    Address::parse_mailbox(s).map_err(|e| StoreError::Corrupt(format!("address {s:?}: {e}")))
}

/// The stored code of a message kind.
pub(crate) fn kind_code(k: MessageKind) -> i64 {
    match k {
        MessageKind::Mail => 0,
        MessageKind::Push => 1,
    }
}

fn kind_from_code(c: i64) -> MessageKind {
    if c == 1 {
        MessageKind::Push
    } else {
        MessageKind::Mail
    }
}

/// The stored code of a queue state.
pub(crate) fn queue_state_from_code(c: i64) -> QueueState {
    match c {
        1 => QueueState::InFlight,
        2 => QueueState::Done,
        3 => QueueState::Failed,
        _ => QueueState::Pending,
    }
}

/// The state of a notification's fetch from its stored code.
pub(crate) fn fetch_state_from_code(c: i64) -> FetchState {
    match c {
        1 => FetchState::Fetched,
        2 => FetchState::Failed,
        _ => FetchState::Pending,
    }
}

/// `<sender account>\n<origin id>` for mail that carries an origin id: a second delivery of
/// the same message to an account that holds it is dropped.
pub(crate) fn origin_key(m: &Message) -> Option<String> {
    m.origin_id
        .as_ref()
        .map(|o| format!("{}\n{o}", m.sender.account_key()))
}

/// A message id from its 16 stored bytes.
pub(crate) fn message_id_from_blob(b: &[u8]) -> Result<MessageId, StoreError> {
    Uuid::from_slice(b)
        .map(MessageId)
        .map_err(|e| StoreError::Corrupt(format!("message id: {e}")))
}
