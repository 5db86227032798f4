//! OpenPGP with sequoia (pure-Rust crypto), shared by every front-end: key checks and
//! detached-signature verification for servers; signing, encryption and key generation for
//! clients and for the gateway's own domain key. Servers never decrypt mail.

use crate::address::Address;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Signer};
use openpgp::serialize::SerializeInto;
use openpgp::types::SignatureType;
use openpgp::{Cert, KeyHandle};
use sequoia_openpgp as openpgp;
use std::io::Write;

/// Largest armored key accepted.
pub const MAX_KEY_LEN: usize = 256 * 1024;

/// Why an OpenPGP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The text is not an OpenPGP certificate.
    #[error("not an OpenPGP public key: {0}")]
    BadKey(String),
    /// The key has no user id with the address's email.
    #[error("the key has no user id with the email {0}")]
    WrongUserId(String),
    /// The key carries secret key material.
    #[error("that is a private key; register only the public key")]
    SecretKey,
    /// Signing or encryption failed (client side).
    #[error("OpenPGP operation failed: {0}")]
    Operation(String),
}

/// A checked public key, ready for the key directory.
#[derive(Debug, Clone)]
pub struct CheckedKey {
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// The key re-armored (public parts only).
    pub armored: String,
}

fn parse_cert(armored: &str) -> Result<Cert, PgpError> {
    if armored.len() > MAX_KEY_LEN {
        return Err(PgpError::BadKey("key too large".into()));
    }
    Cert::from_bytes(armored.as_bytes()).map_err(|e| PgpError::BadKey(e.to_string()))
}

/// Parse a public key and check it carries a user id whose email is `local@domain` of
/// `address` (domain compared case-insensitively).
pub fn check_public_key(armored: &str, address: &Address) -> Result<CheckedKey, PgpError> {
    let cert = parse_cert(armored)?;
    if cert.is_tsk() {
        return Err(PgpError::SecretKey);
    }
    let want = format!("{}@{}", address.local, address.domain);
    let matches = cert.userids().any(|u| {
        u.userid()
            .email()
            .ok()
            .flatten()
            .is_some_and(|e| e.eq_ignore_ascii_case(&want))
    });
    if !matches {
        return Err(PgpError::WrongUserId(want));
    }
    let armored = cert
        .armored()
        .to_vec()
        .map_err(|e| PgpError::BadKey(e.to_string()))?;
    Ok(CheckedKey {
        fingerprint: cert.fingerprint().to_hex(),
        armored: String::from_utf8_lossy(&armored).into_owned(),
    })
}

/// The public half of a key (secret or public), with its fingerprint.
pub fn public_key(armored: &str) -> Result<CheckedKey, PgpError> {
    let cert = parse_cert(armored)?;
    let public = cert
        .armored()
        .to_vec()
        .map_err(|e| PgpError::BadKey(e.to_string()))?;
    Ok(CheckedKey {
        fingerprint: cert.fingerprint().to_hex(),
        armored: String::from_utf8_lossy(&public).into_owned(),
    })
}

struct Helper {
    cert: Cert,
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(vec![self.cert.clone()])
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure.into_iter() {
            if let MessageLayer::SignatureGroup { results } = layer {
                if results.iter().any(Result::is_ok) {
                    return Ok(());
                }
            }
        }
        Err(openpgp::Error::InvalidOperation("no valid signature".into()).into())
    }
}

/// Does `signature` (armored, detached) by the holder of `public_key` cover `data`?
/// Text-mode signatures are checked with OpenPGP's line-ending normalisation.
pub fn verify_detached(public_key: &str, signature: &str, data: &[u8]) -> bool {
    let Ok(cert) = parse_cert(public_key) else {
        return false;
    };
    let policy = StandardPolicy::new();
    let verifier = DetachedVerifierBuilder::from_bytes(signature.as_bytes())
        .and_then(|b| b.with_policy(&policy, None, Helper { cert }));
    match verifier {
        Ok(mut v) => v.verify_bytes(data).is_ok(),
        Err(_) => false,
    }
}

fn op<E: std::fmt::Display>(e: E) -> PgpError {
    PgpError::Operation(e.to_string())
}

/// Make an armored, detached, text-mode signature over `data` (as openpgp.js does for the
/// original client) with the first usable signing key of an unprotected secret key.
pub fn sign_detached_text(secret_key: &str, data: &[u8]) -> Result<String, PgpError> {
    let cert = parse_cert(secret_key)?;
    let policy = StandardPolicy::new();
    let keypair = cert
        .keys()
        .unencrypted_secret()
        .with_policy(&policy, None)
        .supported()
        .alive()
        .revoked(false)
        .for_signing()
        .next()
        .ok_or_else(|| PgpError::Operation("no usable unprotected signing key".into()))?
        .key()
        .clone()
        .into_keypair()
        .map_err(op)?;
    let mut sink = Vec::new();
    let message = Message::new(&mut sink);
    let message = Armorer::new(message)
        .kind(openpgp::armor::Kind::Signature)
        .build()
        .map_err(op)?;
    let mut signer = Signer::with_template(
        message,
        keypair,
        openpgp::packet::signature::SignatureBuilder::new(SignatureType::Text),
    )
    .map_err(op)?
    .detached()
    .build()
    .map_err(op)?;
    signer.write_all(data).map_err(op)?;
    signer.finalize().map_err(op)?;
    String::from_utf8(sink).map_err(op)
}

/// Encrypt `data` to the holder of `public_key`; returns an armored OpenPGP message.
pub fn encrypt_to(public_key: &str, data: &[u8]) -> Result<String, PgpError> {
    let cert = parse_cert(public_key)?;
    let policy = StandardPolicy::new();
    let recipients: Vec<_> = cert
        .keys()
        .with_policy(&policy, None)
        .supported()
        .alive()
        .revoked(false)
        .for_transport_encryption()
        .collect();
    if recipients.is_empty() {
        return Err(PgpError::Operation(
            "the key has no encryption subkey".into(),
        ));
    }
    let mut sink = Vec::new();
    let message = Message::new(&mut sink);
    let message = Armorer::new(message).build().map_err(op)?;
    let message = Encryptor::for_recipients(message, recipients)
        .build()
        .map_err(op)?;
    let mut w = LiteralWriter::new(message).build().map_err(op)?;
    w.write_all(data).map_err(op)?;
    w.finalize().map_err(op)?;
    String::from_utf8(sink).map_err(op)
}

/// A fresh key pair (Ed25519/Cv25519) whose user id carries `address`'s `local@domain`, as
/// the original client's keys do: returns (armored secret key, armored public key).
pub fn generate_key(address: &Address) -> Result<(String, String), PgpError> {
    let email = format!("<{}@{}>", address.local, address.domain);
    let (cert, _) = openpgp::cert::CertBuilder::general_purpose(Some(email))
        .generate()
        .map_err(op)?;
    let secret = cert.as_tsk().armored().to_vec().map_err(op)?;
    let public = cert.armored().to_vec().map_err(op)?;
    Ok((
        String::from_utf8(secret).map_err(op)?,
        String::from_utf8(public).map_err(op)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/mmtp/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIX}{name}")).unwrap()
    }

    #[test]
    fn openpgp_js_keys_check_and_sign_round_trip() {
        let alice = Address::parse_mmtp("(alice)%(a.test)").unwrap();
        let bob = Address::parse_mmtp("(bob)%(a.test)").unwrap();
        let pubkey = fixture("(alice)%(a.test).pub.asc");
        let checked = check_public_key(&pubkey, &alice).unwrap();
        assert_eq!(checked.fingerprint.len(), 40);
        assert!(matches!(
            check_public_key(&pubkey, &bob),
            Err(PgpError::WrongUserId(_))
        ));
        assert!(matches!(
            check_public_key(&fixture("(alice)%(a.test).priv.asc"), &alice),
            Err(PgpError::SecretKey)
        ));
        assert!(matches!(
            check_public_key("not a key", &alice),
            Err(PgpError::BadKey(_))
        ));
        // sequoia signs with openpgp.js's key; sequoia verifies.
        let sig = sign_detached_text(&fixture("(alice)%(a.test).priv.asc"), b"{\"a\":1}").unwrap();
        assert!(verify_detached(&pubkey, &sig, b"{\"a\":1}"));
        assert!(!verify_detached(&pubkey, &sig, b"{\"a\":2}"));
        assert!(!verify_detached(
            &fixture("(bob)%(a.test).pub.asc"),
            &sig,
            b"{\"a\":1}"
        ));
        assert!(!verify_detached(&pubkey, "garbage", b"{\"a\":1}"));
        let (secret, public) = generate_key(&bob).unwrap();
        check_public_key(&public, &bob).unwrap();
        let sig = sign_detached_text(&secret, b"x").unwrap();
        assert!(verify_detached(&public, &sig, b"x"));
        let enc = encrypt_to(&fixture("(bob)%(a.test).pub.asc"), b"secret").unwrap();
        assert!(enc.starts_with("-----BEGIN PGP MESSAGE-----"));
    }
}
