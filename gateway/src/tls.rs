//! TLS material: the configured PEM pair, or a self-signed pair generated with rcgen into
//! `<data_dir>/tls/` at first start.

use crate::config::Config;
use crate::files::{private_dir, write_private};
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The crypto provider every rustls config in mailgate uses (pure Rust + ring, no C libraries
/// beyond ring's own).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Paths of the certificate and key in use (generated ones when none are configured).
pub fn cert_paths(config: &Config) -> (PathBuf, PathBuf) {
    match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = config.data_dir.join("tls");
            (dir.join("cert.pem"), dir.join("key.pem"))
        }
    }
}

/// Generate a self-signed certificate for `names` unless one is there already.
fn ensure_self_signed(cert: &Path, key: &Path, names: Vec<String>) -> anyhow::Result<()> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    if let Some(dir) = cert.parent() {
        private_dir(dir)?;
    }
    let generated = rcgen::generate_simple_self_signed(names)?;
    // The key first: a certificate without its key is regenerated at the next start.
    write_private(key, generated.key_pair.serialize_pem().as_bytes())?;
    write_private(cert, generated.cert.pem().as_bytes())?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// Server-side TLS: TLS 1.2 and 1.3 (every TLS listener), and TLS 1.3 only (IMMP `UPGRADE TLS3`).
pub struct ServerTls {
    /// TLS 1.2 or newer.
    pub any: Arc<ServerConfig>,
    /// TLS 1.3 only.
    pub tls13: Arc<ServerConfig>,
}

/// The server-side TLS configurations (a self-signed pair generated first when none is
/// configured and none was generated before).
pub fn server_config(config: &Config) -> anyhow::Result<ServerTls> {
    let (cert, key) = cert_paths(config);
    if config.tls.cert.is_none() {
        // The domains, and the names a client on this machine uses: localhost, 127.0.0.1, ::1
        // (rcgen makes the addresses IP SANs).
        let mut names: Vec<String> = config.domains.clone();
        for local in ["localhost", "127.0.0.1", "::1"] {
            if !names.iter().any(|n| n == local) {
                names.push(local.into());
            }
        }
        ensure_self_signed(&cert, &key, names)?;
    }
    load_pair(&cert, &key)
}

/// The server-side TLS configurations of the PEM pair at `cert` and `key`.
fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<ServerTls> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls.cert: cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "tls.cert: {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert: {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "tls.key: cannot read a PEM private key from {}",
            key.display()
        )
    })?;
    let any = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .context("tls: certificate and key do not match")?;
    let tls13 = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    Ok(ServerTls {
        any: Arc::new(any),
        tls13: Arc::new(tls13),
    })
}

/// What `check-config` finds in the files the configuration names, without changing any:
/// errors (what `serve` would refuse) and notes.
pub fn check_files(config: &Config) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut notes) = (Vec::new(), Vec::new());
    let (cert, key) = cert_paths(config);
    if config.tls.cert.is_none() && !(cert.exists() && key.exists()) {
        notes.push(format!(
            "tls: a self-signed certificate will be generated into {} at first start",
            cert.parent().unwrap_or(Path::new(".")).display()
        ));
    } else if let Err(e) = load_pair(&cert, &key) {
        errors.push(format!("{e:#}"));
    }
    for file in &config.tls.trust {
        if !file.exists() {
            notes.push(format!(
                "tls.trust: {} does not exist yet; serve starts and reads it when it appears",
                file.display()
            ));
        } else {
            match CertificateDer::pem_file_iter(file).map(|certs| certs.collect::<Vec<_>>()) {
                Ok(certs) if certs.iter().all(Result::is_ok) && !certs.is_empty() => {}
                Ok(certs) if certs.is_empty() => errors.push(format!(
                    "tls.trust: {} holds no PEM certificate",
                    file.display()
                )),
                _ => errors.push(format!(
                    "tls.trust: {} is not a PEM certificate file",
                    file.display()
                )),
            }
        }
    }
    for domain in &config.domains {
        let file = mailgate_smtp::dkim::key_file(&config.dkim_dir(), domain);
        if file.exists() {
            if let Err(e) = mailgate_smtp::dkim::public_key(&file) {
                errors.push(format!("DKIM key of {domain}: {e}"));
            }
        }
    }
    (errors, notes)
}

/// A client-side TLS configuration trusting only the certificates in the PEM file `ca` (a CA,
/// or a self-signed server certificate).
pub fn client_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_from(std::slice::from_ref(&ca.to_path_buf()))
}

/// A client-side TLS configuration trusting the certificates in these PEM files.
pub fn client_config_from(files: &[PathBuf]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in files {
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read CA file {}", ca.display()))?
        {
            roots
                .add(cert.with_context(|| format!("{} is not a PEM certificate", ca.display()))?)?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A connector and server name for `host`, trusting `ca`.
pub fn connector(
    ca: &Path,
    host: &str,
) -> anyhow::Result<(
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
)> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
    Ok((tokio_rustls::TlsConnector::from(client_config(ca)?), name))
}
