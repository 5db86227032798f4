//! IMMP shared-secret authentication (the draft's H and K).
//!
//! `h = hex(PBKDF2-HMAC-SHA256(password, salt = "immp:" + lower-case account, 100000, 32 bytes))`
//! is stored for each account when its password is set; a login proves knowledge of `h` by
//! answering `hex(SHA-1(h ‖ n1 ‖ n2))` over the ASCII strings, for nonces `n1` (a UUID) and `n2`
//! (Unix seconds) the server chose for this attempt.
//!
//! `h` is password-equivalent — whoever holds it can log in over IMMP without the password (the
//! draft's own note). The store keeps it in `account_secrets`, never logs it, and never sends it;
//! protect the database file and its backups like a password file.

use mailgate_core::router::SecretDeriver;
use mailgate_core::Address;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Secret kind under which `h` is stored.
pub const SECRET_KIND: &str = "immp.h";
/// PBKDF2 iterations.
pub const ITERATIONS: u32 = 100_000;

/// `h` for an account and password.
pub fn derive_h(account: &Address, password: &str) -> String {
    let salt = format!("immp:{}", account.account_key());
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), salt.as_bytes(), ITERATIONS, &mut out);
    hex::encode(out)
}

/// The expected response `hex(SHA-1(h ‖ n1 ‖ n2))`.
pub fn response(h: &str, n1: &str, n2: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(h.as_bytes());
    sha.update(n1.as_bytes());
    sha.update(n2.as_bytes());
    hex::encode(sha.finalize())
}

/// Compare a client's response with the expected one in constant time (case-insensitive hex).
pub fn check(expected: &str, given: &str) -> bool {
    let given = given.to_ascii_lowercase();
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Registers `h` with the core so it is written whenever a password is set.
pub struct ImmpSecret;

impl SecretDeriver for ImmpSecret {
    fn kind(&self) -> &'static str {
        SECRET_KIND
    }
    fn derive(&self, account: &Address, password: &str) -> Vec<u8> {
        derive_h(account, password).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h_and_response() {
        let a = Address::parse_imid("Noccy@NoccyLabs.info").unwrap();
        let h = derive_h(&a, "secret");
        assert_eq!(h.len(), 64);
        // The salt is the lower-case account: the same h for any spelling.
        assert_eq!(
            h,
            derive_h(
                &Address::parse_imid("noccy@noccylabs.info").unwrap(),
                "secret"
            )
        );
        assert_ne!(h, derive_h(&a, "Secret"));
        let r = response(&h, "24c17bb6-11ef-4cfa-8c5c-440ceadc8431", "1381978910");
        assert_eq!(r.len(), 40);
        assert!(check(&r, &r.to_ascii_uppercase()));
        assert!(!check(&r, &r[..39]));
        assert!(!check(&r, "0000000000000000000000000000000000000000"));
    }
}
