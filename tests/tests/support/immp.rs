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
/// handshake, verifying the gateway's certificate ([`Gateway::trust`]).
pub async fn upgrade(gw: &Gateway, tcp: tokio::net::TcpStream, command: &str) -> Conn {
    let mut c: Conn = BufReader::new(Box::new(tcp));
    for _ in 0..4 {
        line(&mut c).await;
    }
    send(&mut c, &format!("{command}\n")).await;
    assert_eq!(line(&mut c).await, "204 Upgrading to TLS.");
    let (connector, name) = gw.connector();
    let tls = connector.connect(name, c.into_inner()).await.unwrap();
    BufReader::new(Box::new(tls))
}

/// Connect, upgrade to TLS, authenticate with the shared secret.
pub async fn login(gw: &Gateway, account: &str, password: &str) -> Conn {
    let tcp = tokio::net::TcpStream::connect(gw.addr("immp.listen"))
        .await
        .unwrap();
    login_on(gw, tcp, account, password).await
}

/// [`login`] on a connection made already.
pub async fn login_on(
    gw: &Gateway,
    tcp: tokio::net::TcpStream,
    account: &str,
    password: &str,
) -> Conn {
    let mut c = upgrade(gw, tcp, "UPGRADE TLS3").await;
    send(&mut c, &format!("AUTH SECRET {account}\n")).await;
    assert!(line(&mut c).await.starts_with("302 "));
    let nonces = line(&mut c).await;
    let (n1, n2) = nonces
        .strip_prefix("303 n1=")
        .and_then(|r| r.split_once(" n2="))
        .unwrap();
    let h = mailgate_immp::auth::derive_h(
        &mailgate_core::Address::parse_imid(account).unwrap(),
        password,
    );
    let response = mailgate_immp::auth::response(&h, n1, n2);
    send(&mut c, &format!("AUTH RESPONSE {response}\n")).await;
    assert_eq!(
        line(&mut c).await,
        format!("210 Authentication accepted for {account}")
    );
    c
}
