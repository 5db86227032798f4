//! A small outbound HTTP/1.1 client (hyper) for notifications, fetches and the CLI client:
//! one request per connection, optional TLS (rustls), an optional source address, a time limit
//! on the whole exchange and a size limit on the answer.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mailgate_core::io::BoxedIo;
use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// Why an exchange failed before a status arrived.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, TLS or the exchange failed.
    #[error("{0}")]
    Io(String),
    /// The whole exchange took too long.
    #[error("timed out")]
    Timeout,
    /// The answer was larger than allowed.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// HTTPS asked for, but no trusted CAs are configured.
    #[error("https needs [tls] trust to verify the peer")]
    NoTrust,
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// Method.
    pub method: Method,
    /// Where to connect.
    pub connect: SocketAddr,
    /// Speak TLS, verifying the certificate for `host`.
    pub https: bool,
    /// Host name (Host header and TLS server name).
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// HTTP Basic credentials.
    pub basic: Option<(&'a str, &'a str)>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// JSON body.
    pub json: Option<Vec<u8>>,
}

/// The client.
#[derive(Clone)]
pub struct HttpClient {
    tls: Option<Arc<rustls::ClientConfig>>,
    source: Option<IpAddr>,
    timeout: Duration,
    max_response: usize,
}

impl HttpClient {
    /// A client trusting `tls` (none: HTTPS refused), leaving from `source`.
    pub fn new(
        tls: Option<Arc<rustls::ClientConfig>>,
        source: Option<IpAddr>,
        timeout: Duration,
        max_response: usize,
    ) -> Self {
        HttpClient {
            tls,
            source,
            timeout,
            max_response,
        }
    }

    async fn connect(&self, call: &Call<'_>) -> Result<BoxedIo, HttpError> {
        let io = |e: std::io::Error| HttpError::Io(format!("connect {}: {e}", call.connect));
        let tcp = match self.source {
            Some(src) => {
                let socket = if call.connect.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(io)?;
                socket.bind(SocketAddr::new(src, 0)).map_err(io)?;
                socket.connect(call.connect).await.map_err(io)?
            }
            None => TcpStream::connect(call.connect).await.map_err(io)?,
        };
        let _ = tcp.set_nodelay(true);
        if !call.https {
            return Ok(Box::new(tcp));
        }
        let config = self.tls.clone().ok_or(HttpError::NoTrust)?;
        let name = ServerName::try_from(call.host.to_owned())
            .map_err(|e| HttpError::Io(format!("server name {:?}: {e}", call.host)))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Io(format!("tls with {}: {e}", call.host)))?;
        Ok(Box::new(tls))
    }

    async fn exchange(&self, call: Call<'_>) -> Result<Response, HttpError> {
        let stream = self.connect(&call).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = if call.connect.port() == if call.https { 443 } else { 80 } {
            call.host.to_owned()
        } else {
            format!("{}:{}", call.host, call.connect.port())
        };
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(call.path)
            .header(HOST, host)
            .header(
                "user-agent",
                concat!("mailgate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some((user, pass)) = call.basic {
            req = req.header(
                AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(format!("{user}:{pass}"))),
            );
        }
        for (k, v) in &call.headers {
            req = req.header(*k, v);
        }
        let body = match call.json {
            Some(j) => {
                req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Full::new(Bytes::from(j))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| HttpError::Io(format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, self.max_response)
            .collect()
            .await
            .map_err(|_| HttpError::TooLarge(self.max_response))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Run `call` within the time limit.
    pub async fn send(&self, call: Call<'_>) -> Result<Response, HttpError> {
        tokio::time::timeout(self.timeout, self.exchange(call))
            .await
            .map_err(|_| HttpError::Timeout)?
    }
}
