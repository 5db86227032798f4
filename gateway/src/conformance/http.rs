//! A minimal HTTP/1.1 client on hyper, for the conformance runner's `http` transport and for
//! `mailgate health`.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use tokio::io::{AsyncRead, AsyncWrite};

/// A response: status, lower-case header names with values, body.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (last value wins).
    pub headers: BTreeMap<String, String>,
    /// Body bytes.
    pub body: Bytes,
}

/// Send one request over `io` (a fresh connection) and read the whole response.
pub async fn send<S>(
    io: S,
    host: &str,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: Vec<u8>,
) -> anyhow::Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `GET path` from `addr` (host:port) over plain HTTP; returns status and body text.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("cannot connect to {addr}"))?;
    let r = send(tcp, addr, "GET", path, &BTreeMap::new(), Vec::new()).await?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}
