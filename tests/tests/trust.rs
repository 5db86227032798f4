//! Federation trust against a real DNS server (in-process hickory): connections a stranger can
//! make the gateway open go only where they were verified to go, never into the deny list.

mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    support::eventually_async(
        Duration::from_secs(60),
        "the fetch at the verified address",
        || async { (attacker.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
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
    support::eventually(Duration::from_secs(60), "the denied fetch counted", || {
        let (_, m) = gw.admin_get("/metrics");
        m.contains("event=\"xhmtp_fetch\",outcome=\"denied_address\"")
            .then_some(())
    });
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

/// One MMTP request on a plain connection made from `source`; the reply.
async fn mmtp_from(source: &str, target: &str, request: &str) -> serde_json::Value {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let s = connect_from(source.parse().unwrap(), target).await.unwrap();
    let mut s = BufReader::new(s);
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap(); // the welcome
    s.get_mut()
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    line.clear();
    tokio::time::timeout(Duration::from_secs(30), s.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

/// A SEND of a packet signed with `secret`, from `source`.
async fn signed_send(
    source: &str,
    target: &str,
    from: &str,
    to: &str,
    subject: &str,
    secret: &str,
) -> serde_json::Value {
    use mailgate_mmtp::client::PacketBuilder;
    let mut b = PacketBuilder::new(
        mailgate_core::Address::parse_mmtp(from).unwrap(),
        mailgate_core::Address::parse_mmtp(to).unwrap(),
        subject,
        "body",
    );
    b.sign_with = Some(secret.to_owned());
    let built = tokio::task::spawn_blocking(move || b.build_with(1, 1).unwrap())
        .await
        .unwrap();
    let request = format!(
        "{{\"action\":\"SEND\",\"data\":{{\"packet\":{}}}}}",
        built.text
    );
    mmtp_from(source, target, &request).await
}

/// MMTP: a remote sender is checked against its domain's servers (`_mmtp._tcp` targets and the
/// domain's addresses) and its key fetched from that domain over verified TLS; a stranger on
/// another address claiming the same sender is marked unverified, and a signature made with
/// any other key does not verify. Keys registered without AUTH (trust on first use, when
/// configured) never make a signature verified.
#[tokio::test(flavor = "multi_thread")]
async fn mmtp_senders_and_keys_are_checked_against_the_sender_domain() {
    use mailgate_core::Address;
    use mailgate_mmtp::client::MmtpClient;
    use support::net::{leaf, srv_to, test_ca};
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = test_ca(ca_dir.path());
    leaf(&ca, ca_dir.path(), "a.test");
    leaf(&ca, ca_dir.path(), "b.test");
    leaf(&ca, ca_dir.path(), "mx.a.test");
    // a.test's MMTP server is mx.a.test (127.0.0.31); B is on 127.0.0.32.
    let dns = dns_server(vec![
        srv_to("mmtp", "a.test", "mx.a.test", 8026),
        a("mx.a.test", [127, 0, 0, 31]),
    ])
    .await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let conf_a = Site {
        ca: Some(ca_dir.path()),
        dns: Some(dns),
        mmtp_tls_port: 8026,
        mmtp: "requests_per_sec = 0.0\ntrust_on_first_use = true",
        ..Site::new(&["a.test"], "127.0.0.31")
    }
    .config(dir_a.path())
    // mx.a.test's certificate, for the name B verifies.
    .replace("a.test.pem", "mx.a.test.pem")
    .replace("a.test.key", "mx.a.test.key");
    let conf_b = Site {
        ca: Some(ca_dir.path()),
        dns: Some(dns),
        mmtp: "requests_per_sec = 0.0\nhashcash_difficulty = 1\noutbound_tls = true",
        ..Site::new(&["b.test"], "127.0.0.32")
    }
    .config(dir_b.path());
    let gw_a = Gateway::start(dir_a.path(), Some(&conf_a));
    let gw_b = Gateway::start(dir_b.path(), Some(&conf_b));
    gw_a.add_user("alice@a.test", "alice-pw");
    gw_a.add_user("carol@a.test", "carol-pw");
    gw_b.add_user("bob@b.test", "bob-pw");
    let alice = Address::parse_mmtp("(alice)%(a.test)").unwrap();
    let (alice_secret, alice_public) = mailgate_core::pgp::generate_key(&alice).unwrap();
    let (mallory_secret, _) = mailgate_core::pgp::generate_key(&alice).unwrap();

    // Alice registers her key at her own server, authenticated.
    let tls = mailgate::tls::connector(&ca_dir.path().join("ca.pem"), "mx.a.test").unwrap();
    let mut c = MmtpClient::connect(gw_a.addr("mmtp.tls_listen"), Some(tls))
        .await
        .unwrap();
    c.auth(&alice, "alice-pw").await.unwrap();
    c.register_key(&alice, &alice_public).await.unwrap();

    let b_plain = gw_b.addr("mmtp.listen").to_owned();
    let to = "(bob)%(b.test)";
    // From a.test's server: sender checked, key fetched from a.test, signature verified.
    // From a stranger's address, with a key that is not Alice's: neither.
    // From a sender domain whose DNS answers REFUSED (the test server serves only `test.`): the
    // check cannot run, so the sender is unverified, and the failure is counted as such.
    for (source, from, subject, secret) in [
        ("127.0.0.31", "(alice)%(a.test)", "genuine", &alice_secret),
        ("127.0.0.33", "(alice)%(a.test)", "forged", &mallory_secret),
        (
            "127.0.0.33",
            "(zed)%(refused.example)",
            "refused",
            &mallory_secret,
        ),
    ] {
        let r = signed_send(source, &b_plain, from, to, subject, secret).await;
        assert_eq!(r["status"], "OK", "{subject}: {r}");
    }

    let bob = Address::parse_mmtp(to).unwrap();
    let tls = mailgate::tls::connector(&ca_dir.path().join("ca.pem"), "b.test").unwrap();
    let mut reader = MmtpClient::connect(gw_b.addr("mmtp.tls_listen"), Some(tls))
        .await
        .unwrap();
    reader.auth(&bob, "bob-pw").await.unwrap();
    let got = reader.receive(&bob, None).await.unwrap();
    let messages = &got;
    let by_subject = |s: &str| {
        messages
            .iter()
            .find(|m| m["content"]["subject"] == s)
            .unwrap_or_else(|| panic!("no {s} in {got:?}"))
            .clone()
    };
    let genuine = by_subject("genuine");
    assert_eq!(genuine["meta"]["senderVerified"], true, "{genuine}");
    assert_eq!(genuine["meta"]["senderCheck"], "domain");
    assert_eq!(genuine["meta"]["signatureVerified"], true);
    assert_eq!(genuine["meta"]["keySource"], "sender-domain");
    let refused = by_subject("refused");
    assert_eq!(refused["meta"]["senderCheck"], "unverified", "{refused}");
    assert_eq!(refused["meta"]["signatureVerified"], false);
    let forged = by_subject("forged");
    assert_eq!(forged["meta"]["senderVerified"], false, "{forged}");
    assert_eq!(forged["meta"]["senderCheck"], "unverified");
    assert_eq!(forged["meta"]["signatureVerified"], false);
    assert_eq!(forged["meta"]["keySource"], "sender-domain");
    let (_, metrics) = gw_b.admin_get("/metrics");
    for needle in [
        "event=\"mmtp_sender\",outcome=\"unverified\"} 1",
        "event=\"mmtp_sender\",outcome=\"domain\"} 1",
        "event=\"mmtp_sender\",outcome=\"dns_error\"} 1",
        "event=\"mmtp_signature\",outcome=\"key_fetch_failed\"} 1",
        "event=\"mmtp_signature\",outcome=\"bad_signature\"} 1",
        "event=\"mmtp_signature\",outcome=\"verified\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} not counted:\n{metrics}");
    }

    // Trust on first use (on at A): carol's key registers without AUTH, but her signatures
    // are still not "verified".
    let carol = Address::parse_mmtp("(carol)%(a.test)").unwrap();
    let (carol_secret, carol_public) = mailgate_core::pgp::generate_key(&carol).unwrap();
    let mut plain = MmtpClient::connect(gw_a.addr("mmtp.listen"), None)
        .await
        .unwrap();
    plain.register_key(&carol, &carol_public).await.unwrap();
    let tls = mailgate::tls::connector(&ca_dir.path().join("ca.pem"), "mx.a.test").unwrap();
    let mut c = MmtpClient::connect(gw_a.addr("mmtp.tls_listen"), Some(tls))
        .await
        .unwrap();
    c.auth(&carol, "carol-pw").await.unwrap();
    let mut b =
        mailgate_mmtp::client::PacketBuilder::new(carol.clone(), carol.clone(), "tofu", "x");
    b.sign_with = Some(carol_secret);
    let difficulty = c.difficulty();
    let built = tokio::task::spawn_blocking(move || b.build(difficulty).unwrap())
        .await
        .unwrap();
    c.send(&built.text).await.unwrap();
    let got = c.receive(&carol, None).await.unwrap();
    let m = &got[0];
    assert_eq!(m["meta"]["signatureVerified"], false, "{m}");
    assert_eq!(m["meta"]["keySource"], "first-use");
    assert_eq!(m["meta"]["senderCheck"], "account");
}
