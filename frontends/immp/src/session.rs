//! One IMMP connection: greeting, then one command line at a time.

use mailgate_core::io::Io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Longest command line (the profile's 8 KiB).
pub const MAX_LINE: usize = 8 * 1024;

/// The IMMP front-end: shared by every connection.
pub struct ImmpServer {
    domain: String,
    tls: TlsAcceptor,
    read_timeout: Duration,
}

enum Line {
    Text(String),
    TooLong,
    Eof,
}

async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else {
                Line::TooLong
            });
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            buf.extend_from_slice(&chunk[..used]);
            if buf.len() > MAX_LINE + 2 {
                too_long = true;
                buf.clear();
            }
        }
        r.consume(used);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            return Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

impl ImmpServer {
    /// A front-end over `core` for `domain`, upgrading with `tls`.
    pub fn new(domain: String, tls: TlsAcceptor, read_timeout: Duration) -> Self {
        ImmpServer {
            domain,
            tls,
            read_timeout,
        }
    }

    /// The multi-line greeting.
    pub fn greeting(&self) -> String {
        format!(
            "100- IMMP/1.0 Server at {d}.\n100- Please upgrade the connection to one of the following:\n100 TLS TLS2 TLS3\n101 p=IMMP v=1.0 d={d}\n",
            d = self.domain
        )
    }

    /// Run one session.
    pub async fn handle<S>(&self, stream: S, peer: SocketAddr, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
        let mut encrypted = false;
        if io
            .get_mut()
            .write_all(self.greeting().as_bytes())
            .await
            .is_err()
        {
            return;
        }
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = io.get_mut().write_all(b"702 Server shutting down.\n").await;
                    break;
                }
                r = tokio::time::timeout(self.read_timeout, read_line(&mut io)) => r,
            };
            let line = match line {
                Err(_) => {
                    let _ = io.get_mut().write_all(b"701 Timeout, closing.\n").await;
                    break;
                }
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => break,
                Ok(Ok(Line::TooLong)) => {
                    if io
                        .get_mut()
                        .write_all(b"700 Line too long.\n")
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                Ok(Ok(Line::Text(t))) => t,
            };
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match keyword.as_str() {
                "" => continue,
                "NOOP" => b"200 OK\n",
                "QUIT" => {
                    let _ = io.get_mut().write_all(b"201 Bye.\n").await;
                    break;
                }
                "UPGRADE" if encrypted => b"403 Connection is already encrypted.\n",
                "UPGRADE" => {
                    let target = words.next().unwrap_or("").to_ascii_uppercase();
                    if !matches!(target.as_str(), "TLS" | "TLS2" | "TLS3") {
                        b"404 Unsupported upgrade; offered: TLS TLS2 TLS3\n"
                    } else {
                        if io
                            .get_mut()
                            .write_all(b"204 Upgrading to TLS.\n")
                            .await
                            .is_err()
                        {
                            break;
                        }
                        if !io.buffer().is_empty() {
                            // Plaintext sent after UPGRADE would be injected into the TLS session.
                            let _ = io
                                .get_mut()
                                .write_all(b"702 Data after UPGRADE before handshake.\n")
                                .await;
                            break;
                        }
                        let plain = io.into_inner();
                        match self.tls.accept(plain).await {
                            Ok(tls) => {
                                io = BufReader::new(Box::new(tls));
                                encrypted = true;
                                continue;
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "immp tls handshake failed");
                                return;
                            }
                        }
                    }
                }
                _ if !encrypted => b"403 Upgrade the connection first.\n",
                _ => b"500 Command not available yet.\n",
            };
            if io.get_mut().write_all(reply).await.is_err() {
                break;
            }
        }
        let _ = io.get_mut().shutdown().await;
    }
}
