//! Access codes (`RS`): the per-recipient secret in a message URL.
//!
//! A code is `base64url(HMAC-SHA256(server key, message id ‖ recipient))`: 256 bits,
//! unguessable without the server key, and re-derivable, so a notification retried after a
//! crash carries the same code without the code itself ever being stored. The store keeps only
//! SHA-256 of each code ([`code_hash`]); requests are checked against that hash in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use mailgate_core::{Address, MessageId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Derives access codes from the server's secret key.
#[derive(Clone)]
pub struct AccessCodes {
    key: [u8; 32],
}

impl std::fmt::Debug for AccessCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessCodes(..)")
    }
}

impl AccessCodes {
    /// Codes under `key` (32 random bytes kept in the data directory).
    pub fn new(key: [u8; 32]) -> Self {
        AccessCodes { key }
    }

    /// The code granting `recipient` access to `message`.
    pub fn code(&self, message: MessageId, recipient: &Address) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(message.0.as_bytes());
        mac.update(recipient.account_key().as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// What the store keeps of a code.
pub fn code_hash(code: &str) -> Vec<u8> {
    Sha256::digest(code.as_bytes()).to_vec()
}

/// Does `code` match `stored` (a [`code_hash`])? Constant time in the code's content.
pub fn matches(code: &str, stored: &[u8]) -> bool {
    bool::from(code_hash(code).ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_distinct_and_long() {
        let codes = AccessCodes::new([7; 32]);
        let id = MessageId::new();
        let bob = Address::parse_xhmtp("bob@b.test").unwrap();
        let carol = Address::parse_xhmtp("carol@b.test").unwrap();
        let a = codes.code(id, &bob);
        assert_eq!(a, codes.code(id, &bob));
        assert_ne!(a, codes.code(id, &carol));
        assert_ne!(a, AccessCodes::new([8; 32]).code(id, &bob));
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len() * 8, 256);
        assert!(matches(&a, &code_hash(&a)));
        assert!(!matches("nope", &code_hash(&a)));
    }
}
