//! The relay envelope: what IMMP's DELIVER cannot say, carried between servers as one more DATA
//! part named `envelope` with TYPE `application/vnd.mailgate.envelope+json`.
//!
//! It holds the sender, the origin id (the message's id where it was first accepted, which the
//! receiving store uses to drop repeats), tags, the security state (armored payload, detached
//! signature, content hash) and the original wire form (so an MMTP packet relayed over IMMP is
//! returned byte for byte by the far end's MMTP `RECEIVE`, and its signature still verifies).
//! Only a Remotely Authenticated session (AUTH COOKIE) may send one, and only with a sender of
//! the authenticated domain; from a local user the part is an ordinary attachment.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mailgate_core::message::WireForm;
use mailgate_core::{Address, Message, Security, Tags, TraceHop};
use serde::{Deserialize, Serialize};

/// Part name.
pub const ENVELOPE_PART: &str = "envelope";
/// Part TYPE.
pub const ENVELOPE_TYPE: &str = "application/vnd.mailgate.envelope+json";

/// The original wire form, base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireJson {
    /// `mmtp`, `immp`, `xhmtp`.
    pub protocol: String,
    /// The bytes, standard base64.
    pub data: String,
}

/// The envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The sender (IMID form).
    pub from: String,
    /// The id the message had where it was first accepted.
    pub origin: String,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// Armored payload, signature, content hash (a verification claim is not carried).
    #[serde(default)]
    pub security: Security,
    /// Trace so far.
    #[serde(default)]
    pub trace: Vec<TraceHop>,
    /// The original wire form.
    #[serde(default)]
    pub wire: Option<WireJson>,
}

impl Envelope {
    /// The envelope of a stored message.
    pub fn of(m: &Message) -> Self {
        Envelope {
            from: m.sender.to_string(),
            origin: m.origin_id.clone().unwrap_or_else(|| m.id.to_string()),
            tags: m.tags.clone(),
            security: m.security.clone().without_verdicts(),
            trace: m.trace.clone(),
            wire: m.wire.as_ref().map(|w| WireJson {
                protocol: w.protocol.clone(),
                data: STANDARD.encode(&w.bytes),
            }),
        }
    }

    /// Parse an envelope part sent by a server authenticated for `domain`; its sender must be
    /// of that domain.
    pub fn parse(data: &[u8], domain: &str) -> Result<(Envelope, Address), String> {
        let env: Envelope =
            serde_json::from_slice(data).map_err(|e| format!("invalid envelope: {e}"))?;
        let from = Address::parse_any(&env.from).map_err(|e| format!("envelope sender: {e}"))?;
        if !from.domain.eq_ignore_ascii_case(domain) {
            return Err(format!(
                "envelope sender {from} is not of the authenticated domain {domain}"
            ));
        }
        if env.origin.is_empty() || env.origin.len() > 256 {
            return Err("envelope origin must be 1-256 characters".into());
        }
        Ok((env, from))
    }

    /// Put what the envelope carries onto `m` (sender set by the caller).
    pub fn apply(self, m: &mut Message) -> Result<(), String> {
        m.origin_id = Some(self.origin);
        m.tags = self.tags;
        m.security = self.security.without_verdicts();
        let mut trace = self.trace;
        trace.append(&mut m.trace);
        m.trace = trace;
        if let Some(w) = self.wire {
            let bytes = STANDARD
                .decode(&w.data)
                .map_err(|_| "envelope wire form is not base64".to_owned())?;
            m.wire = Some(WireForm::new(w.protocol, bytes.into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_domain_check() {
        let mut m = Message::new(
            Address::parse_imid("alice@a.test").unwrap(),
            vec![Address::parse_imid("bob@b.test").unwrap()],
            "s",
            "b",
        );
        m.tags.category.push("work".into());
        m.security.signature = Some("sig".into());
        m.security.signature_verified = Some(true);
        m.security.sender_check = Some(mailgate_core::SenderCheck::Account);
        m.security.key_source = Some(mailgate_core::KeySource::LocalOwner);
        m.wire = Some(WireForm::new("mmtp", b"{\"x\":1}".to_vec().into()));
        let json = serde_json::to_vec(&Envelope::of(&m)).unwrap();
        assert!(Envelope::parse(&json, "c.test").is_err());
        let (env, from) = Envelope::parse(&json, "A.test").unwrap();
        assert_eq!(from, m.sender);
        let mut copy = Message::new(from, m.recipients.clone(), "s", "b");
        env.apply(&mut copy).unwrap();
        assert_eq!(copy.origin_id, Some(m.id.to_string()));
        assert_eq!(copy.tags, m.tags);
        assert_eq!(copy.security.signature.as_deref(), Some("sig"));
        assert_eq!(copy.security.signature_verified, None);
        assert_eq!(copy.security.sender_check, None);
        assert_eq!(copy.security.key_source, None);
        assert_eq!(copy.wire, m.wire);
        assert!(Envelope::parse(b"{", "a.test").is_err());
    }
}
