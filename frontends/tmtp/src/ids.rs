//! Member uids, node secrets, message ids and dates as TMTP carries them.

use data_encoding::BASE32_NOPAD;
use mailgate_core::message::{rfc3339, MessageId};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Random octets in a node secret (mnm: 25, 200 bits).
const NODE_SECRET_LEN: usize = 25;
/// Random octets in a uid (mnm: a 20-octet digest).
const UID_LEN: usize = 20;

/// A new permanent uid: 32 base32 characters.
pub fn new_uid() -> String {
    let mut b = [0u8; UID_LEN];
    rand::rng().fill_bytes(&mut b);
    BASE32_NOPAD.encode(&b)
}

/// A new node secret (40 base32 characters) and the hash that is stored.
pub fn new_node_secret() -> (String, Vec<u8>) {
    let mut b = [0u8; NODE_SECRET_LEN];
    rand::rng().fill_bytes(&mut b);
    let secret = BASE32_NOPAD.encode(&b);
    let hash = secret_hash(&secret).expect("base32 of random octets");
    (secret, hash)
}

/// The stored hash of a node secret: SHA-256 of its octets (a 200-bit random secret needs no
/// slow hash); `None` when the text is not base32.
pub fn secret_hash(secret: &str) -> Option<Vec<u8>> {
    let octets = BASE32_NOPAD.decode(secret.as_bytes()).ok()?;
    Some(Sha256::digest(octets).to_vec())
}

/// A new message id: the simple form of a time-ordered UUID (v7), so ids increase across
/// restarts and on every node sharing the store; stored mail keeps its message id.
pub fn new_id() -> String {
    MessageId::new().0.simple().to_string()
}

/// The TMTP id of a stored message.
pub fn message_tmtp_id(id: MessageId) -> String {
    id.0.simple().to_string()
}

/// `posted` as mnm formats it: UTC with milliseconds (`2006-01-02T15:04:05.000Z`).
pub fn posted(ms: i64) -> String {
    let base = rfc3339(ms);
    format!("{}.{:03}Z", &base[..base.len() - 1], ms.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_secrets_verify_and_junk_does_not_decode() {
        let (secret, hash) = new_node_secret();
        assert_eq!(secret.len(), 40);
        assert_eq!(secret_hash(&secret), Some(hash));
        assert_eq!(secret_hash("not base32!"), None);
        assert_eq!(new_uid().len(), 32);
    }

    #[test]
    fn posted_has_milliseconds() {
        assert_eq!(posted(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
