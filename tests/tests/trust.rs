//! Federation trust against a real DNS server (in-process hickory): connections a stranger can
//! make the gateway open go only where they were verified to go, never into the deny list.

mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::net::{a, dns_server};
use support::site::Site;
use support::{connect_from, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on `ip:port` that counts connections and answers 404 to everything.
async fn counting_server(ip: &str, port: u16) -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port))
        .await
        .unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (port, hits)
}

/// POST a notification from `from` to the gateway; the status code.
async fn notify(gw: &Gateway, from: &str, url: &str) -> u16 {
    notify_as(gw, from, url, "carol@evil.test").await
}

/// [`notify`] naming `sender` as the message's `from`.
async fn notify_as(gw: &Gateway, from: &str, url: &str, sender: &str) -> u16 {
    let mut s = connect_from(from.parse().unwrap(), gw.addr("xhmtp.listen"))
        .await
        .unwrap();
    let body = serde_json::json!({ "url": url, "from": sender }).to_string();
    let req = format!(
        "POST /xhmtp/bob@b.test HTTP/1.1\r\nHost: b.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut answer)).await;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn fetches_go_only_to_the_verified_notifier_and_never_into_the_deny_list() {
    // evil.test has two addresses: an internal service (127.0.0.5) and the attacker (127.0.0.12).
    // inside.test is an address of the deny list itself.
    let (port, internal) = counting_server("127.0.0.5", 0).await;
    let (_, attacker) = counting_server("127.0.0.12", port).await;
    let (_, denied) = counting_server("127.0.0.6", port).await;
    let dns = dns_server(vec![
        a("evil.test", [127, 0, 0, 5]),
        a("evil.test", [127, 0, 0, 12]),
        a("inside.test", [127, 0, 0, 6]),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = Site {
        dns: Some(dns),
        deny: r#"["127.0.0.5/32", "127.0.0.6/32"]"#,
        ..Site::new(&["b.test"], "127.0.0.3")
    }
    .config(dir.path());
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@b.test", "pw");

    // From the attacker's own address: verified (it is an address of evil.test), so accepted;
    // the fetch goes to that address only, never to the other record.
    let url = format!("http://bob%40b.test:code@evil.test:{port}/xhmtp/carol/1");
    assert_eq!(notify(&gw, "127.0.0.12", &url).await, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while attacker.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the fetch never reached the verified address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A message on evil.test "from" another domain is refused: evil.test does not host a.test.
    let url = format!("http://bob%40b.test:code@evil.test:{port}/xhmtp/carol/3");
    assert_eq!(
        notify_as(&gw, "127.0.0.12", &url, "alice@a.test").await,
        403
    );
    let (_, m) = gw.admin_get("/metrics");
    assert!(m.contains("outcome=\"sender_domain_mismatch\""), "{m}");
    // From an address in the deny list: verified, but never fetched from.
    let url = format!("http://bob%40b.test:code@inside.test:{port}/xhmtp/carol/2");
    assert_eq!(
        notify_as(&gw, "127.0.0.6", &url, "carol@inside.test").await,
        202
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = gw.admin_get("/metrics");
        if m.contains("event=\"xhmtp_fetch\",outcome=\"denied_address\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the denied fetch was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        internal.load(Ordering::SeqCst),
        0,
        "the internal service was reached"
    );
    assert_eq!(
        denied.load(Ordering::SeqCst),
        0,
        "a denied address was reached"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_call_backs_never_reach_denied_addresses_and_say_nothing_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::net::test_ca(dir.path());
    support::net::leaf(&ca, dir.path(), "b.test");
    let (port, internal) = counting_server("127.0.0.5", 0).await;
    let dns = dns_server(vec![
        support::net::srv_to("immp", "evil.test", "evil.test", port),
        a("evil.test", [127, 0, 0, 5]),
    ])
    .await;
    let config = Site {
        dns: Some(dns),
        ca: Some(dir.path()),
        deny: r#"["127.0.0.5/32"]"#,
        ..Site::new(&["b.test"], "127.0.0.3")
    }
    .config(dir.path());
    let gw = Gateway::start(dir.path(), Some(&config));
    let tcp = tokio::net::TcpStream::connect(gw.addr("immp.listen"))
        .await
        .unwrap();
    let mut c = {
        use support::immp::{line, send, Conn};
        use tokio::io::BufReader;
        let mut c: Conn = BufReader::new(Box::new(tcp));
        for _ in 0..4 {
            line(&mut c).await;
        }
        send(&mut c, "UPGRADE TLS\n").await;
        assert_eq!(line(&mut c).await, "204 Upgrading to TLS.");
        let (connector, name) =
            mailgate::tls::connector(&dir.path().join("ca.pem"), "b.test").unwrap();
        let tls = connector.connect(name, c.into_inner()).await.unwrap();
        let c: Conn = BufReader::new(Box::new(tls));
        c
    };
    use support::immp::{line, send};
    let mut limited = false;
    for _ in 0..12 {
        send(
            &mut c,
            "AUTH COOKIE 00112233445566778899aabbccddeeff evil.test\n",
        )
        .await;
        let first = line(&mut c).await;
        if first.starts_with("429 ") {
            limited = true;
            break;
        }
        assert!(first.starts_with("301 "), "{first}");
        // Only that verification failed: nothing of what (or who) answered at the other end.
        assert_eq!(line(&mut c).await, "411 Cookie verification failed.");
    }
    assert!(limited, "cookie checks were not rate limited");
    assert_eq!(
        internal.load(Ordering::SeqCst),
        0,
        "the call-back reached a denied address"
    );
}
