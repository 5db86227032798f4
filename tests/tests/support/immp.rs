//! An IMMP connection for tests: read a reply line, send text, upgrade to TLS.

use super::Gateway;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A buffered connection, plain or TLS.
pub type Conn = BufReader<Box<dyn mailgate_core::io::Io>>;

/// The next reply line, without its line end (20 s at most).
pub async fn line(c: &mut Conn) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_line(&mut l))
        .await
        .expect("reply in time")
        .unwrap();
    l.trim_end().to_owned()
}

/// Send `text` as it is.
pub async fn send(c: &mut Conn, text: &str) {
    c.get_mut().write_all(text.as_bytes()).await.unwrap();
}

/// Read the greeting, `UPGRADE` with `command` (`UPGRADE TLS`, `UPGRADE TLS3`), and do the
/// handshake against the gateway's self-signed certificate.
pub async fn upgrade(gw: &Gateway, tcp: tokio::net::TcpStream, command: &str) -> Conn {
    let mut c: Conn = BufReader::new(Box::new(tcp));
    for _ in 0..4 {
        line(&mut c).await;
    }
    send(&mut c, &format!("{command}\n")).await;
    assert_eq!(line(&mut c).await, "204 Upgrading to TLS.");
    let (connector, name) =
        mailgate::tls::connector(&gw.dir.join("data/tls/cert.pem"), "localhost").unwrap();
    let tls = connector.connect(name, c.into_inner()).await.unwrap();
    BufReader::new(Box::new(tls))
}
