//! `[tls] trust`: the certificates this gateway trusts when it connects to other servers,
//! read from their PEM files again whenever a file changes, appears or disappears — so two
//! gateways that trust each other's generated certificates can be started in any order, and a
//! renewed CA file is picked up without a restart.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What tells one version of a file from another: its modification time, length and inode
/// (a file replaced by a rename within one clock tick still has another inode).
type Stamp = (SystemTime, u64, u64);

/// What one look at the files found: their stamps (`None`: missing), and the verifier built
/// from them (or why there is none).
struct Loaded {
    stamps: Vec<Option<Stamp>>,
    verifier: Result<Arc<WebPkiServerVerifier>, String>,
}

/// A server certificate verifier over trust files that are read again when they change.
pub struct FileTrust {
    files: Vec<PathBuf>,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Option<Loaded>>,
}

impl std::fmt::Debug for FileTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTrust")
            .field("files", &self.files)
            .finish()
    }
}

impl FileTrust {
    /// Trust the certificates in `files`. A missing file is a warning, not an error: it is
    /// read when it appears. A file that exists and does not parse is an error.
    pub fn new(files: &[PathBuf], provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let trust = FileTrust {
            files: files.to_vec(),
            provider,
            loaded: Mutex::new(None),
        };
        for (file, stamp) in trust.files.iter().zip(trust.stamps()) {
            if stamp.is_none() {
                tracing::warn!(
                    file = %file.display(),
                    "tls.trust file does not exist yet: servers it would verify are refused until it appears"
                );
            }
        }
        let loaded = trust.load(trust.stamps());
        if let Err(e) = &loaded.verifier {
            if trust.stamps().iter().any(Option::is_some) {
                anyhow::bail!("tls.trust: {e}");
            }
        }
        *trust.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        Ok(trust)
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        #[cfg(unix)]
        fn inode(m: &std::fs::Metadata) -> u64 {
            std::os::unix::fs::MetadataExt::ino(m)
        }
        #[cfg(not(unix))]
        fn inode(_: &std::fs::Metadata) -> u64 {
            0
        }
        self.files
            .iter()
            .map(|f| {
                let m = std::fs::metadata(f).ok()?;
                Some((m.modified().ok()?, m.len(), inode(&m)))
            })
            .collect()
    }

    /// Read the files as they are now.
    fn load(&self, stamps: Vec<Option<Stamp>>) -> Loaded {
        let verifier = self.build();
        match &verifier {
            Ok(_) => tracing::info!(files = ?self.files, "tls.trust loaded"),
            Err(e) => tracing::warn!(error = %e, "tls.trust: no usable certificates"),
        }
        Loaded { stamps, verifier }
    }

    fn build(&self) -> Result<Arc<WebPkiServerVerifier>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for file in self.files.iter().filter(|f| f.exists()) {
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("{} is not a PEM certificate: {e}", file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "no trusted certificate yet (none of {} exists or holds one)",
                self.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| e.to_string())
    }

    /// The verifier for the files as they are now (read again when they changed).
    fn current(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let stamps = self.stamps();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let stale = loaded.as_ref().is_none_or(|l| l.stamps != stamps);
        if stale {
            *loaded = Some(self.load(stamps));
        }
        match loaded.as_ref().map(|l| &l.verifier) {
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(e)) => Err(rustls::Error::General(format!("tls.trust: {e}"))),
            None => Err(rustls::Error::General("tls.trust: not loaded".into())),
        }
    }
}

impl ServerCertVerifier for FileTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client TLS configuration trusting `files` as [`FileTrust`] reads them.
pub fn client_config(files: &[PathBuf]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = crate::tls::provider();
    let verifier = FileTrust::new(files, provider.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dir: &std::path::Path, name: &str) -> (PathBuf, CertificateDer<'static>) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, c.cert.pem()).unwrap();
        (path, c.cert.der().clone())
    }

    fn verify(t: &FileTrust, der: &CertificateDer<'_>, name: &str) -> bool {
        t.verify_server_cert(
            der,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    #[test]
    fn a_missing_file_is_read_when_it_appears_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("peer.pem");
        let trust = FileTrust::new(std::slice::from_ref(&later), crate::tls::provider()).unwrap();
        let (made, der) = cert(dir.path(), "peer.test");
        assert!(!verify(&trust, &der, "peer.test"), "nothing trusted yet");
        std::fs::rename(&made, &later).unwrap();
        assert!(verify(&trust, &der, "peer.test"), "read once it appeared");
        assert!(!verify(&trust, &der, "other.test"));
        // Replaced by another certificate: the old one is no longer trusted.
        let (other, other_der) = cert(dir.path(), "next.test");
        std::fs::rename(&other, &later).unwrap();
        assert!(verify(&trust, &other_der, "next.test"));
        assert!(!verify(&trust, &der, "peer.test"));
        // A file that exists but is not PEM is an error at start.
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(FileTrust::new(&[bad], crate::tls::provider()).is_err());
    }
}
