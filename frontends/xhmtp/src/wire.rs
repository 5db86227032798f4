//! The JSON bodies of the XHMTP profile and their translation to and from the model.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mailgate_core::message::{parse_rfc3339, rfc3339};
use mailgate_core::{Address, Importance, Message, MessageId, Part, Security, Tags, Verdicts};
use serde::{Deserialize, Serialize};

/// A part other than the body, with its bytes in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartJson {
    /// File name.
    pub name: String,
    /// Media type.
    #[serde(rename = "type", default = "octet_stream")]
    pub media_type: String,
    /// Standard base64.
    pub data: String,
}

fn octet_stream() -> String {
    "application/octet-stream".into()
}

/// `POST /<prefix>/submit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Recipients.
    pub to: Vec<String>,
    /// Subject.
    #[serde(default)]
    pub subject: String,
    /// Text body.
    #[serde(default)]
    pub body: String,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartJson>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// `high`, `normal` or `low`.
    #[serde(default)]
    pub importance: Importance,
}

/// The `202` answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The message id.
    pub id: String,
    /// Every accepted recipient.
    pub recipients: Vec<String>,
    /// Of those, the ones that are notified (on other domains).
    pub notified: Vec<String>,
}

/// The body of a notification (`POST /<prefix>/<user@domain>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyRequest {
    /// The message URL, with the recipient's access code as HTTP Basic credentials.
    pub url: String,
    /// The sender; absent for anonymous messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// RFC 3339 date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// Message size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Subject, unless the sender's server withholds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A message as `GET /<prefix>/<sender-local>/<id>` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageJson {
    /// Id at the sender's server.
    pub id: String,
    /// Sender.
    pub from: String,
    /// All recipients.
    pub to: Vec<String>,
    /// RFC 3339 date the sender's server accepted it.
    pub date: String,
    /// Subject.
    pub subject: String,
    /// Text body (the content part, UTF-8).
    pub body: String,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartJson>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Importance.
    #[serde(default)]
    pub importance: Importance,
    /// Armored OpenPGP payload, never decrypted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<String>,
    /// Armored detached signature over the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The serving gateway's verdicts (`senderVerified`, `senderCheck`, `signatureVerified`,
    /// `keySource`): shown to the account's reader; a receiving gateway ignores them.
    #[serde(flatten)]
    pub verdicts: Verdicts,
}

/// Why a body could not become a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A recipient or sender is not an address.
    #[error("bad address {0:?}: {1}")]
    Address(String, String),
    /// A part's data is not base64.
    #[error("part {0:?}: data is not base64")]
    Base64(String),
    /// A date is not RFC 3339.
    #[error("bad date {0:?}")]
    Date(String),
    /// Field-level nonsense.
    #[error("{0}")]
    Invalid(String),
}

/// Any address family (`user@domain`, IMIDs, MMTP's `(user)%(domain)`).
pub fn parse_address(s: &str) -> Result<Address, WireError> {
    Address::parse_any(s).map_err(|e| WireError::Address(s.to_owned(), e.to_string()))
}

/// An address in XHMTP form where it has one, else its IMID.
pub fn format_address(a: &Address) -> String {
    a.to_xhmtp().unwrap_or_else(|_| a.to_string())
}

fn decode_parts(parts: &[PartJson]) -> Result<Vec<Part>, WireError> {
    parts
        .iter()
        .map(|p| {
            if p.name.is_empty() || p.name.len() > 255 || p.media_type.len() > 255 {
                return Err(WireError::Invalid(format!(
                    "part name and type must be 1..255 bytes ({:?})",
                    p.name
                )));
            }
            Ok(Part {
                name: p.name.clone(),
                media_type: p.media_type.clone(),
                data: STANDARD
                    .decode(&p.data)
                    .map_err(|_| WireError::Base64(p.name.clone()))?
                    .into(),
                content: false,
            })
        })
        .collect()
}

fn encode_parts(m: &Message) -> Vec<PartJson> {
    m.parts
        .iter()
        .filter(|p| !p.content)
        .map(|p| PartJson {
            name: p.name.clone(),
            media_type: p.media_type.clone(),
            data: STANDARD.encode(&p.data),
        })
        .collect()
}

impl SubmitRequest {
    /// The message `sender` submits with this request.
    pub fn into_message(self, sender: Address) -> Result<Message, WireError> {
        if self.to.is_empty() {
            return Err(WireError::Invalid("\"to\" lists no recipient".into()));
        }
        let recipients = self
            .to
            .iter()
            .map(|r| parse_address(r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut m = Message::new(sender, recipients, self.subject, self.body);
        m.parts.extend(decode_parts(&self.parts)?);
        m.tags = self.tags;
        m.importance = self.importance;
        Ok(m)
    }
}

impl MessageJson {
    /// The served form of `m`.
    pub fn from_message(m: &Message) -> Self {
        MessageJson {
            id: m.id.to_string(),
            from: format_address(&m.sender),
            to: m.recipients.iter().map(format_address).collect(),
            date: rfc3339(m.received_at),
            subject: m.subject.clone(),
            body: m.body_text(),
            parts: encode_parts(m),
            tags: m.tags.clone(),
            importance: m.importance,
            encrypted: m.security.encrypted.clone(),
            signature: m.security.signature.clone(),
            verdicts: m.security.verdicts(),
        }
    }

    /// A local copy for `recipient`: a new local id, the sender's id kept as `origin_id`.
    pub fn into_message(self, recipient: Address) -> Result<Message, WireError> {
        let sender = parse_address(&self.from)?;
        let mut m = Message::new(sender, vec![recipient], self.subject, self.body);
        m.origin_id = Some(self.id);
        m.parts.extend(decode_parts(&self.parts)?);
        m.tags = self.tags;
        m.importance = self.importance;
        // A claim from the sender's server is not a verification done here.
        m.security = Security {
            encrypted: self.encrypted,
            signature: self.signature,
            ..Security::default()
        };
        Ok(m)
    }
}

/// Parse an RFC 3339 date into ms since the epoch.
pub fn parse_date(s: &str) -> Result<i64, WireError> {
    parse_rfc3339(s).ok_or_else(|| WireError::Date(s.to_owned()))
}

/// Re-export for the handlers: ids in URLs.
pub fn parse_id(s: &str) -> Option<MessageId> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let alice = Address::parse_xhmtp("alice@a.test").unwrap();
        let req = SubmitRequest {
            to: vec!["bob@b.test".into()],
            subject: "hi".into(),
            body: "hello".into(),
            parts: vec![PartJson {
                name: "a.bin".into(),
                media_type: "application/octet-stream".into(),
                data: STANDARD.encode([0u8, 1, 2, 255]),
            }],
            tags: Tags {
                category: vec!["work".into()],
                ..Tags::default()
            },
            importance: Importance::High,
        };
        let m = req.into_message(alice).unwrap();
        let json = MessageJson::from_message(&m);
        let bob = Address::parse_xhmtp("bob@b.test").unwrap();
        let copy = json.clone().into_message(bob.clone()).unwrap();
        assert_eq!(copy.subject, "hi");
        assert_eq!(copy.recipients, vec![bob]);
        assert_eq!(copy.origin_id.as_deref(), Some(json.id.as_str()));
        assert_eq!(copy.parts[1].data.as_ref(), &[0u8, 1, 2, 255]);
        assert_eq!(copy.tags.category, vec!["work".to_owned()]);
        assert_eq!(copy.importance, Importance::High);
    }

    #[test]
    fn bad_bodies_are_refused() {
        let alice = Address::parse_xhmtp("alice@a.test").unwrap();
        let empty = SubmitRequest::default();
        assert!(empty.into_message(alice.clone()).is_err());
        let bad = SubmitRequest {
            to: vec!["not an address".into()],
            ..SubmitRequest::default()
        };
        assert!(matches!(
            bad.into_message(alice.clone()),
            Err(WireError::Address(..))
        ));
        let b64 = SubmitRequest {
            to: vec!["bob@b.test".into()],
            parts: vec![PartJson {
                name: "x".into(),
                media_type: "text/plain".into(),
                data: "!!!".into(),
            }],
            ..SubmitRequest::default()
        };
        assert!(matches!(b64.into_message(alice), Err(WireError::Base64(_))));
    }
}
