//! DKIM signing of outbound mail (RFC 6376, rsa-sha256, relaxed/relaxed) with mail-auth: one
//! RSA key per local domain, `<dir>/<domain>.pem` (PKCS #8), published under
//! `<selector>._domainkey.<domain>`. `mailgate dkim generate DOMAIN` makes the key with
//! [`generate`] and prints the TXT record [`txt_record`] gives.

use base64::Engine;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The header fields signed, when present (RFC 6376 §5.4.1's recommendation).
const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "MIME-Version",
    "Content-Type",
];

/// Bits of a generated key.
pub const KEY_BITS: usize = 2048;

/// A domain's signer.
type Signer = DkimSigner<RsaKey<Sha256>, Done>;

/// The DKIM keys of the local domains, loaded from `dir` on first use.
pub struct DkimKeys {
    dir: PathBuf,
    selector: String,
    loaded: Mutex<HashMap<String, Option<Arc<Signer>>>>,
}

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DkimError(String);

impl DkimKeys {
    /// Keys in `dir`, published under `selector`.
    pub fn new(dir: impl Into<PathBuf>, selector: impl Into<String>) -> Self {
        DkimKeys {
            dir: dir.into(),
            selector: selector.into(),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The signer of `domain`: `None` when it has no key file.
    fn signer(&self, domain: &str) -> Result<Option<Arc<Signer>>, DkimError> {
        let domain = domain.to_ascii_lowercase();
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = loaded.get(&domain) {
            return Ok(s.clone());
        }
        let path = key_path(&self.dir, &domain);
        let signer = match std::fs::read(&path) {
            Ok(pem) => Some(Arc::new(
                DkimSigner::from_key(load_key(&pem, &path)?)
                    .domain(domain.clone())
                    .selector(self.selector.clone())
                    .headers(SIGNED_HEADERS),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(DkimError(format!("{}: {e}", path.display()))),
        };
        loaded.insert(domain, signer.clone());
        Ok(signer)
    }

    /// `message` with a `DKIM-Signature` field for `domain` in front, or unchanged when the
    /// domain has no key. RSA signing takes a moment, so it runs off the async threads.
    pub async fn sign(&self, domain: &str, message: Vec<u8>) -> Result<Vec<u8>, DkimError> {
        let Some(signer) = self.signer(domain)? else {
            return Ok(message);
        };
        tokio::task::spawn_blocking(move || {
            let signature = signer
                .sign(&message)
                .map_err(|e| DkimError(format!("DKIM signing: {e}")))?;
            let mut out = signature.to_header().into_bytes();
            out.extend_from_slice(&message);
            Ok(out)
        })
        .await
        .map_err(|e| DkimError(format!("DKIM signing: {e}")))?
    }
}

fn key_path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.pem"))
}

fn load_key(pem: &[u8], path: &Path) -> Result<RsaKey<Sha256>, DkimError> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| DkimError(format!("{}: not a PEM private key: {e}", path.display())))?;
    RsaKey::<Sha256>::from_key_der(der)
        .map_err(|e| DkimError(format!("{}: not an RSA key: {e}", path.display())))
}

/// Make a new key for `domain` in `dir` (mode 0600; an existing key is kept: `Err`) and
/// return its public key as DER (SubjectPublicKeyInfo).
pub fn generate(dir: &Path, domain: &str) -> Result<Vec<u8>, DkimError> {
    let path = key_path(dir, &domain.to_ascii_lowercase());
    if path.exists() {
        return Err(DkimError(format!(
            "{} exists already; remove it first to make a new key",
            path.display()
        )));
    }
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, KEY_BITS)
        .map_err(|e| DkimError(format!("generating the key: {e}")))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| DkimError(format!("encoding the key: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| DkimError(format!("{}: {e}", dir.display())))?;
    write_private(&path, pem.as_bytes())?;
    public_key(&path)
}

/// The public key (SubjectPublicKeyInfo DER) of the key file at `path`.
pub fn public_key(path: &Path) -> Result<Vec<u8>, DkimError> {
    let pem = std::fs::read(path).map_err(|e| DkimError(format!("{}: {e}", path.display())))?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|e| DkimError(format!("{}: not a PKCS #8 key: {e}", path.display())))?;
    let key = rsa::RsaPrivateKey::from_pkcs8_der(der.secret_pkcs8_der())
        .map_err(|e| DkimError(format!("{}: {e}", path.display())))?;
    rsa::RsaPublicKey::from(&key)
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| DkimError(format!("encoding the public key: {e}")))
}

/// The key file of `domain` in `dir`.
pub fn key_file(dir: &Path, domain: &str) -> PathBuf {
    key_path(dir, &domain.to_ascii_lowercase())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DkimError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DkimError(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| DkimError(format!("{}: {e}", path.display())))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DkimError> {
    std::fs::write(path, bytes).map_err(|e| DkimError(format!("{}: {e}", path.display())))
}

/// The TXT record that publishes `public_key` (DER) for `domain` under `selector`, in
/// zone-file syntax, split into strings of at most 255 characters.
pub fn txt_record(domain: &str, selector: &str, public_key: &[u8]) -> String {
    let value = txt_value(public_key);
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        strings.join(" ")
    )
}

/// The value of the TXT record that publishes `public_key` (DER): `v=DKIM1; k=rsa; p=…`.
pub fn txt_value(public_key: &[u8]) -> String {
    format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(public_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_generated_key_signs_and_its_record_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let public = generate(dir.path(), "A.test").unwrap();
        assert!(
            generate(dir.path(), "a.test").is_err(),
            "an existing key is kept"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_file(dir.path(), "a.test"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let record = txt_record("a.test", "mailgate", &public);
        assert!(
            record.starts_with("mailgate._domainkey.a.test. IN TXT ( \"v=DKIM1; k=rsa; p=MII"),
            "{record}"
        );
        let keys = DkimKeys::new(dir.path(), "mailgate");
        let signed = keys
            .sign(
                "a.test",
                b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nbody\r\n".to_vec(),
            )
            .await
            .unwrap();
        let text = String::from_utf8(signed).unwrap();
        assert!(
            text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
            "{text}"
        );
        assert!(
            text.contains("d=a.test") && text.contains("s=mailgate"),
            "{text}"
        );
        // No key, no signature.
        let plain = keys.sign("b.test", b"x\r\n".to_vec()).await.unwrap();
        assert_eq!(plain, b"x\r\n");
    }
}
