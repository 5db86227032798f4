//! Reaching the database: the `postgres://` URL with libpq's `sslmode` and `sslrootcert`,
//! TLS through rustls, the connection pool, and the connection that listens for live events.

use super::pg_error;
use crate::store::{BackendErrorKind, LiveEvent, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How to reach the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=ca.pem`
    /// (any other libpq URL parameter tokio-postgres knows is passed on).
    pub url: String,
    /// Connections in the pool (concurrent transactions of this node).
    pub pool_size: usize,
}

impl PgOptions {
    /// Defaults for `url`: a pool of 16 connections.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            pool_size: 16,
        }
    }
}

/// libpq's `sslmode`, the values mailgate supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (or a Unix socket).
    Disable,
    /// TLS when the server offers it, unverified; plain otherwise (libpq's default).
    Prefer,
    /// TLS or nothing, the certificate unverified.
    Require,
    /// TLS, the certificate verified against `sslrootcert` (or the system's roots) and the
    /// host name.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" | "allow" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(config_error(format!(
                "sslmode {other:?} is not supported (disable, prefer, require, verify-full)"
            ))),
        }
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::Backend {
        kind: BackendErrorKind::Other,
        message,
    }
}

/// Where to connect and how.
#[derive(Clone)]
pub(super) struct Target {
    config: Config,
    tls: Option<MakeRustlsConnect>,
}

/// Bounded waits: a database that does not answer is an error, not a hung node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_WAIT: Duration = Duration::from_secs(30);

impl Target {
    pub(super) fn new(opts: &PgOptions) -> Result<Self, StoreError> {
        let mut url =
            url::Url::parse(&opts.url).map_err(|e| config_error(format!("store url: {e}")))?;
        let (mut mode, mut root) = (SslMode::Prefer, None);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| match &*k {
                "sslmode" => {
                    mode = match v.parse() {
                        Ok(m) => m,
                        Err(e) => return Some(Err(e)),
                    };
                    None
                }
                "sslrootcert" => {
                    root = Some(PathBuf::from(&*v));
                    None
                }
                _ => Some(Ok((k.into_owned(), v.into_owned()))),
            })
            .collect::<Result<_, _>>()?;
        url.set_query(None);
        if !kept.is_empty() {
            url.query_pairs_mut().extend_pairs(kept);
        }
        let mut config: Config = url
            .as_str()
            .parse()
            .map_err(|e: tokio_postgres::Error| config_error(format!("store url: {e}")))?;
        // "OK" to a client means durable: whatever the server's default, commits wait for
        // the flush (and for synchronous standbys, where configured).
        config.options("-c synchronous_commit=on");
        config.application_name("mailgate");
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        let tls = match mode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => {
                config.ssl_mode(if mode == SslMode::Require {
                    tokio_postgres::config::SslMode::Require
                } else {
                    tokio_postgres::config::SslMode::Prefer
                });
                Some(MakeRustlsConnect::new(unverified()))
            }
            SslMode::VerifyFull => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(MakeRustlsConnect::new(verified(root)?))
            }
        };
        Ok(Target { config, tls })
    }

    /// One connection outside the pool, its connection task spawned.
    pub(super) async fn connect_once(&self) -> Result<Client, StoreError> {
        let (client, connection) = match &self.tls {
            None => {
                let (c, conn) = self.config.connect(NoTls).await.map_err(pg_error)?;
                (c, tokio::spawn(drive(conn)))
            }
            Some(tls) => {
                let (c, conn) = self.config.connect(tls.clone()).await.map_err(pg_error)?;
                (c, tokio::spawn(drive(conn)))
            }
        };
        drop(connection);
        Ok(client)
    }

    pub(super) fn pool(&self, size: usize) -> Result<Pool, StoreError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            None => Manager::from_config(self.config.clone(), NoTls, manager_config),
            Some(tls) => Manager::from_config(self.config.clone(), tls.clone(), manager_config),
        };
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| config_error(format!("connection pool: {e}")))
    }

    /// A connection whose notifications are read, and the stream of them.
    async fn listening(
        &self,
        channel: &str,
    ) -> Result<(Client, tokio::sync::mpsc::Receiver<String>), StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(LISTEN_BUFFER);
        let client = match &self.tls {
            None => {
                let (c, conn) = self.config.connect(NoTls).await.map_err(pg_error)?;
                tokio::spawn(forward(conn, tx));
                c
            }
            Some(tls) => {
                let (c, conn) = self.config.connect(tls.clone()).await.map_err(pg_error)?;
                tokio::spawn(forward(conn, tx));
                c
            }
        };
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(pg_error)?;
        Ok((client, rx))
    }
}

const LISTEN_BUFFER: usize = 1024;

async fn drive<S, T>(conn: Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "store connection ended");
    }
}

/// Drive a connection, passing its notifications' payloads on.
async fn forward<S, T>(mut conn: Connection<S, T>, tx: tokio::sync::mpsc::Sender<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => {
                if tx.try_send(n.payload().to_owned()).is_err() && tx.is_closed() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "store event connection failed");
                return;
            }
        }
    }
}

/// Listen for live events for as long as the store is open, reconnecting after failures
/// (events while disconnected are missed; pushes stay listable in the mailbox).
pub(super) async fn listen(
    target: Target,
    channel: &'static str,
    out: broadcast::Sender<LiveEvent>,
) {
    loop {
        match target.listening(channel).await {
            Ok((_client, mut rx)) => {
                while let Some(payload) = rx.recv().await {
                    match serde_json::from_str::<LiveEvent>(&payload) {
                        Ok(event) => {
                            let _ = out.send(event);
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable store event"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for store events"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn verified(root: Option<PathBuf>) -> Result<ClientConfig, StoreError> {
    let path = root.unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| config_error(format!("sslrootcert {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| config_error(format!("sslrootcert {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| config_error(format!("sslrootcert {}: {e}", path.display())))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS that encrypts but takes any certificate (`sslmode=require`, as libpq does).
fn unverified() -> ClientConfig {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
