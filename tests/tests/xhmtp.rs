//! XHMTP end to end: two gateways (a.test on 127.0.0.2, b.test on 127.0.0.3) find each other
//! through an in-process authoritative DNS server (SRV, TXT, A), notify over HTTPS verified
//! against a test CA, check the notifier's address against DNS, fetch with the access code,
//! and publish the RSS feed; and a peer that is down is caught up with after it returns.

mod support;

use base64::Engine;
use mailgate_core::{Address, Importance, MessageId, Tags};
use mailgate_xhmtp::access::AccessCodes;
use mailgate_xhmtp::client::{ClientError, XhmtpClient};
use mailgate_xhmtp::http::{Call, HttpClient};
use mailgate_xhmtp::wire::{PartJson, SubmitRequest};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::net::{a, dns_server, leaf, srv_to, test_ca, txt};
use support::site::Site;
use support::Gateway;

/// One gateway of a test: its domain, address, XHMTP port, scheme and prefix.
struct Peer {
    domain: &'static str,
    ip: &'static str,
    port: u16,
    https: bool,
    prefix: &'static str,
}

/// A gateway config for `peer`, with its data in `dir`, certificates from `ca`, DNS at `dns`.
fn config(dir: &Path, ca: &Path, peer: &Peer, dns: SocketAddr) -> String {
    let Peer {
        domain,
        ip,
        port,
        https,
        prefix,
    } = *peer;
    let (scheme, http_port, tls) = if https {
        ("https", 0, format!("tls_listen = \"{ip}:{port}\"\n"))
    } else {
        ("http", port, String::new())
    };
    let xhmtp = format!(
        "{tls}prefix = \"{prefix}\"\npublic_url = \"{scheme}://{domain}:{port}\"\n\
         outbound_ip = \"{ip}\"\noutbound_https = {https}"
    );
    Site {
        ca: Some(ca),
        dns: Some(dns),
        xhmtp_port: http_port,
        xhmtp: &xhmtp,
        ..Site::new(&[domain], ip)
    }
    .config(dir)
}

fn tls(ca: &Path) -> Option<Arc<rustls::ClientConfig>> {
    Some(mailgate::tls::client_config(&ca.join("ca.pem")).unwrap())
}

fn client(
    addr: &str,
    host: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    prefix: &str,
    user: &str,
    pw: &str,
) -> XhmtpClient {
    XhmtpClient::new(addr.parse().unwrap(), host, tls, prefix, user, pw)
}

/// Poll `c`'s feed until it has `n` items; returns the parsed feed (feed-rs) and its ETag.
async fn wait_feed(c: &XhmtpClient, n: usize) -> (feed_rs::model::Feed, String) {
    let what = format!("{n} feed items");
    support::eventually_async(Duration::from_secs(60), &what, || async {
        let resp = c.feed(None).await.unwrap();
        let feed = feed_rs::parser::parse(&resp.body[..]).expect("the feed parses with feed-rs");
        (feed.entries.len() >= n).then(|| {
            let etag = resp.headers["etag"].to_str().unwrap().to_owned();
            (feed, etag)
        })
    })
    .await
}

/// Poll an MMTP mailbox (RECEIVE) until it returns `n` messages in total.
async fn wait_mmtp(
    gw: &Gateway,
    ca: &Path,
    who: &str,
    pw: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let addr = Address::parse_xhmtp(who).unwrap();
    let got = std::sync::Mutex::new(Vec::new());
    let what = format!("{n} messages for {who}");
    support::eventually_async(Duration::from_secs(60), &what, || async {
        let mut c = mmtp(gw, ca, &addr, pw).await;
        let new = c.receive(&addr, None).await.unwrap();
        let mut got = got.lock().unwrap();
        got.extend(new);
        (got.len() >= n).then_some(())
    })
    .await;
    got.into_inner().unwrap()
}

/// An MMTP connection (TLS port, the test CA) logged in as `who`.
async fn mmtp(
    gw: &Gateway,
    ca: &Path,
    who: &Address,
    pw: &str,
) -> mailgate_mmtp::client::MmtpClient {
    let tls = mailgate::tls::connector(&ca.join("ca.pem"), &who.domain).unwrap();
    let mut c = mailgate_mmtp::client::MmtpClient::connect(gw.addr("mmtp.tls_listen"), Some(tls))
        .await
        .unwrap();
    c.auth(who, pw).await.unwrap();
    c
}

fn metric(gw: &Gateway, needle: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr("admin.listen")).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_between_two_gateways_over_dns_and_https() {
    let dns = dns_server(vec![
        srv_to("xhmtp", "a.test", "a.test", 8443),
        a("a.test", [127, 0, 0, 2]),
        srv_to("xhmtp", "b.test", "mx.b.test", 8443),
        a("mx.b.test", [127, 0, 0, 3]),
        a("b.test", [127, 0, 0, 3]),
        // b.test serves under its own prefix; a.test has no TXT record (default "xhmtp").
        txt("_prefix._xhmtp.b.test", "mail"),
    ])
    .await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    let ca = test_ca(ca_path);
    leaf(&ca, ca_path, "a.test");
    leaf(&ca, ca_path, "b.test");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw_a = Gateway::start(
        dir_a.path(),
        Some(&config(
            dir_a.path(),
            ca_path,
            &Peer {
                domain: "a.test",
                ip: "127.0.0.2",
                port: 8443,
                https: true,
                prefix: "xhmtp",
            },
            dns,
        )),
    );
    let gw_b = Gateway::start(
        dir_b.path(),
        Some(&config(
            dir_b.path(),
            ca_path,
            &Peer {
                domain: "b.test",
                ip: "127.0.0.3",
                port: 8443,
                https: true,
                prefix: "mail",
            },
            dns,
        )),
    );
    gw_a.add_user("alice@a.test", "alice-pw");
    gw_b.add_user("bob@b.test", "bob-pw");

    // Injection.
    let alice = client(
        "127.0.0.2:8443",
        "a.test",
        tls(ca_path),
        "xhmtp",
        "alice@a.test",
        "alice-pw",
    );
    let attachment = b"\x00\x01binary\xff".to_vec();
    let receipt = alice
        .submit(&SubmitRequest {
            to: vec!["bob@b.test".into()],
            subject: "Lunch?".into(),
            body: "Noon at the usual place.".into(),
            parts: vec![PartJson {
                name: "map.bin".into(),
                media_type: "application/octet-stream".into(),
                data: base64::engine::general_purpose::STANDARD.encode(&attachment),
            }],
            tags: Tags {
                category: vec!["social".into()],
                ..Tags::default()
            },
            importance: Importance::High,
        })
        .await
        .unwrap();
    assert_eq!(receipt.notified, vec!["bob@b.test".to_owned()]);

    // SRV + TXT lookup, POST notify, DNS check of the notifier, feed.
    let bob = client(
        "127.0.0.3:8443",
        "b.test",
        tls(ca_path),
        "mail",
        "bob@b.test",
        "bob-pw",
    );
    let (feed, etag) = wait_feed(&bob, 1).await;
    let item = &feed.entries[0];
    assert_eq!(item.title.as_ref().unwrap().content, "Lunch?");
    assert_eq!(item.id, receipt.id, "guid = message id");
    assert_eq!(item.authors[0].email.as_deref(), Some("alice@a.test"));
    let link = item.links[0].href.clone();
    assert!(
        link.starts_with("https://bob%40b.test:") && link.contains("@a.test:8443/xhmtp/alice/"),
        "{link}"
    );
    // The CLI reads the same feed (`mailgate receive --protocol xhmtp`, plain listener).
    let out = support::run_ok(
        &[
            "receive",
            "--protocol",
            "xhmtp",
            "--server",
            gw_b.addr("xhmtp.listen"),
            "--prefix",
            "mail",
            "--email",
            "bob@b.test",
        ],
        Some("bob-pw\n"),
        dir_b.path(),
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["title"], "Lunch?");
    assert_eq!(line["guid"], receipt.id.as_str());
    // Feed readers poll: an unchanged feed is a 304.
    let again = bob.feed(Some(&etag)).await.unwrap();
    assert_eq!(again.status, 304);

    // The fetched message is in bob's INBOX, readable through MMTP.
    let got = wait_mmtp(&gw_b, ca_path, "bob@b.test", "bob-pw", 1).await;
    let text = got[0].to_string();
    assert!(
        text.contains("Lunch?") && text.contains("Noon at the usual place."),
        "{text}"
    );

    // The reader fetches from the sender's server with the access code in the link.
    let fetched = bob
        .fetch_url(&link, "127.0.0.2:8443".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(fetched.subject, "Lunch?");
    assert_eq!(fetched.importance, Importance::High);
    assert_eq!(fetched.tags.category, vec!["social".to_owned()]);
    let part = base64::engine::general_purpose::STANDARD
        .decode(&fetched.parts[0].data)
        .unwrap();
    assert_eq!(part, attachment);

    // A wrong access code is a 401 with a challenge.
    let mut wrong = url::Url::parse(&link).unwrap();
    wrong.set_password(Some("not-the-code")).unwrap();
    match bob
        .fetch_url(wrong.as_str(), "127.0.0.2:8443".parse().unwrap())
        .await
    {
        Err(ClientError::Status(401, _)) => {}
        other => panic!("wrong code: {other:?}"),
    }

    // A notifier on 127.0.0.4 claiming a message on a.test (127.0.0.2) is refused.
    let rogue = HttpClient::new(
        tls(ca_path),
        Some("127.0.0.4".parse().unwrap()),
        Duration::from_secs(10),
        1 << 20,
    );
    let body = serde_json::json!({
        "url": format!("https://bob%40b.test:forged@a.test:8443/xhmtp/alice/{}", MessageId::new()),
        "from": "alice@a.test",
        "subject": "spoofed",
    });
    let resp = rogue
        .send(Call {
            method: hyper::Method::POST,
            connect: "127.0.0.3:8443".parse().unwrap(),
            https: true,
            host: "b.test",
            path: "/mail/bob@b.test",
            basic: None,
            headers: Vec::new(),
            json: Some(body.to_string().into_bytes()),
        })
        .await
        .unwrap();
    assert_eq!(resp.status, 403, "{:?}", resp.body);
    assert!(String::from_utf8_lossy(&resp.body).contains("notifier_mismatch"));
    assert_eq!(
        wait_feed(&bob, 1).await.0.entries.len(),
        1,
        "nothing new in the feed"
    );
    assert!(
        metric(
            &gw_b,
            "mailgate_events_total{event=\"xhmtp_notify_in\",outcome=\"accepted\"}"
        ) >= 1
    );
    assert!(
        metric(
            &gw_a,
            "mailgate_events_total{event=\"xhmtp_notify_out\",outcome=\"ok\"}"
        ) >= 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_is_down_is_notified_and_fetched_from_after_it_returns() {
    let dns = dns_server(vec![
        srv_to("xhmtp", "c.test", "c.test", 8080),
        a("c.test", [127, 0, 0, 6]),
        srv_to("xhmtp", "d.test", "d.test", 8080),
        a("d.test", [127, 0, 0, 7]),
    ])
    .await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    let ca = test_ca(ca_path);
    leaf(&ca, ca_path, "c.test");
    leaf(&ca, ca_path, "d.test");
    let (dir_c, dir_d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let conf_c = config(
        dir_c.path(),
        ca_path,
        &Peer {
            domain: "c.test",
            ip: "127.0.0.6",
            port: 8080,
            https: false,
            prefix: "xhmtp",
        },
        dns,
    );
    let conf_d = config(
        dir_d.path(),
        ca_path,
        &Peer {
            domain: "d.test",
            ip: "127.0.0.7",
            port: 8080,
            https: false,
            prefix: "xhmtp",
        },
        dns,
    );
    let gw_c = Gateway::start(dir_c.path(), Some(&conf_c));
    gw_c.add_user("carol@c.test", "carol-pw");

    // d.test is down: the notification is queued and retried.
    // Submitted with the CLI client (`mailgate send --protocol xhmtp`).
    let out = support::run_ok(
        &[
            "send",
            "--protocol",
            "xhmtp",
            "--server",
            "127.0.0.6:8080",
            "--login",
            "carol@c.test",
            "--from",
            "carol@c.test",
            "--to",
            "dave@d.test",
            "--subject",
            "while you were out",
            "--body",
            "queued",
        ],
        Some("carol-pw\n"),
        dir_c.path(),
    );
    let receipt: mailgate_xhmtp::wire::SubmitResponse =
        serde_json::from_slice(&out.stdout).expect("send prints the JSON receipt");
    assert_eq!(receipt.notified, vec!["dave@d.test".to_owned()]);
    support::eventually(
        Duration::from_secs(30),
        "the notification was never attempted",
        || {
            (metric(
                &gw_c,
                "mailgate_events_total{event=\"xhmtp_notify_out\",outcome=\"retry\"}",
            ) > 0)
                .then_some(())
        },
    );
    // The sender crashes with the notification queued.
    gw_c.kill();

    // d.test comes up and is notified (by hand, from c.test's address, with the code c.test
    // derives) while c.test is still down: the fetch fails and is retried; the item is in the
    // feed meanwhile.
    let gw_d = Gateway::start(dir_d.path(), Some(&conf_d));
    gw_d.add_user("dave@d.test", "dave-pw");
    let key: [u8; 32] = std::fs::read(dir_c.path().join("data/xhmtp-access.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let id: MessageId = receipt.id.parse().unwrap();
    let dave_addr = Address::parse_xhmtp("dave@d.test").unwrap();
    let code = AccessCodes::new(key).code(id, &dave_addr);
    let url = format!("http://dave%40d.test:{code}@c.test:8080/xhmtp/carol/{id}");
    let notifier = HttpClient::new(
        None,
        Some("127.0.0.6".parse().unwrap()),
        Duration::from_secs(10),
        1 << 20,
    );
    let body =
        serde_json::json!({ "url": url, "from": "carol@c.test", "subject": "while you were out" });
    let resp = notifier
        .send(Call {
            method: hyper::Method::POST,
            connect: "127.0.0.7:8080".parse().unwrap(),
            https: false,
            host: "d.test",
            path: "/xhmtp/dave@d.test",
            basic: None,
            headers: Vec::new(),
            json: Some(body.to_string().into_bytes()),
        })
        .await
        .unwrap();
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    let dave = client(
        "127.0.0.7:8080",
        "d.test",
        None,
        "xhmtp",
        "dave@d.test",
        "dave-pw",
    );
    wait_feed(&dave, 1).await;
    support::eventually(
        Duration::from_secs(30),
        "the fetch was never attempted",
        || {
            (metric(
                &gw_d,
                "mailgate_events_total{event=\"xhmtp_fetch\",outcome=\"retry\"}",
            ) > 0)
                .then_some(())
        },
    );

    // c.test returns: its queued notification goes out (a duplicate for d.test, which keeps one),
    // and d.test's retried fetch succeeds.
    let gw_c = Gateway::start(dir_c.path(), Some(&conf_c));
    let got = wait_mmtp(&gw_d, ca_path, "dave@d.test", "dave-pw", 1).await;
    assert!(got[0].to_string().contains("while you were out"));
    support::eventually(
        Duration::from_secs(30),
        "the queued notification was not sent after the restart",
        || {
            (metric(
                &gw_c,
                "mailgate_events_total{event=\"xhmtp_notify_out\",outcome=\"ok\"}",
            ) > 0)
                .then_some(())
        },
    );
    // Exactly once for the recipient: one feed item, one message. d.test stored the duplicate
    // notification (and kept one) before it answered, which the metric above counted.
    let (feed, _) = wait_feed(&dave, 1).await;
    assert_eq!(feed.entries.len(), 1);
    let mut m = mmtp(&gw_d, ca_path, &dave_addr, "dave-pw").await;
    assert!(
        m.receive(&dave_addr, None).await.unwrap().is_empty(),
        "a second copy arrived"
    );
    drop(gw_c);
}

/// Inside one gateway: `mailgate send --protocol xhmtp` to a local account, then
/// `mailgate receive --protocol xhmtp --fetch` finds it in the feed and fetches it from the
/// account's own mailbox.
#[tokio::test(flavor = "multi_thread")]
async fn local_mail_through_the_cli_feed_and_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        Some(&support::config_with(dir.path(), "e2e.test", "")),
    );
    gw.add_user("alice@e2e.test", "alice-pw");
    gw.add_user("bob@e2e.test", "bob-pw");
    let server = gw.addr("xhmtp.listen");
    support::run_ok(
        &[
            "send",
            "--protocol",
            "xhmtp",
            "--server",
            server,
            "--login",
            "alice@e2e.test",
            "--from",
            "alice@e2e.test",
            "--to",
            "bob@e2e.test",
            "--subject",
            "local",
            "--body",
            "through the feed",
        ],
        Some("alice-pw\n"),
        dir.path(),
    );
    let out = support::run_ok(
        &[
            "receive",
            "--protocol",
            "xhmtp",
            "--server",
            server,
            "--email",
            "bob@e2e.test",
            "--fetch",
        ],
        Some("bob-pw\n"),
        dir.path(),
    );
    let message: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(message["subject"], "local");
    assert_eq!(message["body"], "through the feed");
    assert_eq!(message["from"], "alice@e2e.test");
}
