//! An XHMTP client for a local account: submit a message, read the feed, fetch a message from
//! the URL a feed item links to. Used by `mailgate send/receive --protocol xhmtp`, the tests and
//! the benchmark.

use crate::http::{Call, HttpClient, HttpError, Response};
use crate::service::path;
use crate::wire::{MessageJson, SubmitRequest, SubmitResponse};
use hyper::Method;
use percent_encoding::percent_decode_str;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Transport.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server refused: status and its JSON error message.
    #[error("HTTP {0}: {1}")]
    Status(u16, String),
    /// The answer did not parse.
    #[error("bad answer: {0}")]
    Body(String),
}

/// A logged-in account at one server.
#[derive(Clone)]
pub struct XhmtpClient {
    http: HttpClient,
    server: SocketAddr,
    host: String,
    https: bool,
    prefix: String,
    user: String,
    password: String,
}

fn check(resp: Response) -> Result<Response, ClientError> {
    if resp.status.is_success() || resp.status == 304 {
        return Ok(resp);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).into_owned());
    Err(ClientError::Status(resp.status.as_u16(), message))
}

impl XhmtpClient {
    /// A client for `user` at `server` (`host` names it for TLS and the Host header).
    pub fn new(
        server: SocketAddr,
        host: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        prefix: &str,
        user: &str,
        password: &str,
    ) -> Self {
        XhmtpClient {
            https: tls.is_some(),
            http: HttpClient::new(tls, None, Duration::from_secs(60), 256 * 1024 * 1024),
            server,
            host: host.to_owned(),
            prefix: prefix.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    fn call<'a>(&'a self, method: Method, path: &'a str) -> Call<'a> {
        Call {
            method,
            connect: self.server,
            https: self.https,
            host: &self.host,
            path,
            basic: Some((&self.user, &self.password)),
            headers: Vec::new(),
            json: None,
        }
    }

    /// `POST /<prefix>/submit`.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        let p = path(&self.prefix, &["submit"]);
        let mut call = self.call(Method::POST, &p);
        call.json = Some(serde_json::to_vec(req).map_err(|e| ClientError::Body(e.to_string()))?);
        let resp = check(self.http.send(call).await?)?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// `GET /<prefix>/<user>/feed`, optionally conditional; the raw answer.
    pub async fn feed(&self, if_none_match: Option<&str>) -> Result<Response, ClientError> {
        let p = path(&self.prefix, &[&self.user, "feed"]);
        let mut call = self.call(Method::GET, &p);
        if let Some(tag) = if_none_match {
            call.headers.push(("if-none-match", tag.to_owned()));
        }
        check(self.http.send(call).await?)
    }

    /// Fetch a message from a feed item's link (a sender's URL with credentials in it, or a
    /// link into this account's mailbox), connecting to `connect` (the URL host's address).
    pub async fn fetch_url(
        &self,
        url: &str,
        connect: SocketAddr,
    ) -> Result<MessageJson, ClientError> {
        let u = url::Url::parse(url).map_err(|e| ClientError::Body(format!("url: {e}")))?;
        // A sender's message URL carries its credentials; a link into this account's own
        // mailbox does not, and takes the account's.
        let (user, code) = if u.username().is_empty() {
            (self.user.clone(), self.password.clone())
        } else {
            (
                percent_decode_str(u.username())
                    .decode_utf8_lossy()
                    .into_owned(),
                percent_decode_str(u.password().unwrap_or(""))
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        };
        let host = u.host_str().unwrap_or_default().to_owned();
        let call = Call {
            method: Method::GET,
            connect,
            https: u.scheme() == "https",
            host: &host,
            path: u.path(),
            basic: Some((&user, &code)),
            headers: Vec::new(),
            json: None,
        };
        let resp = check(self.http.send(call).await?)?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Body(e.to_string()))
    }
}
