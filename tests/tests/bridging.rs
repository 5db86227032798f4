//! The relay queue as operators and senders see it: permanent failures and entries older than
//! the maximum age bounce into the sender's INBOX (readable through every front-end), and
//! `mailgate queue list|retry|drop` manages what waits.

mod support;

use mailgate_xhmtp::client::XhmtpClient;
use mailgate_xhmtp::wire::SubmitRequest;
use std::path::Path;
use std::time::Duration;
use support::net::{a, dns_server, srv_to};
use support::site::Site;
use support::Gateway;

fn config(dir: &Path, dns: std::net::SocketAddr) -> String {
    Site {
        dns: Some(dns),
        relay: "poll_interval_ms = 50\nretry_base_secs = 1\nretry_max_secs = 1\nmax_age_secs = 4",
        xhmtp: "outbound_ip = \"127.0.0.8\"",
        ..Site::new(&["e.test"], "127.0.0.8")
    }
    .config(dir)
}

fn queue(gw: &Gateway, args: &[&str]) -> String {
    let config = gw.config.to_str().unwrap().to_owned();
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    all.extend(["--config", &config]);
    let out = support::run_ok(&all, None, &gw.dir);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Create alice@e.test and her XHMTP client; the server's XHMTP address.
fn alice(gw: &Gateway) -> (XhmtpClient, String) {
    gw.add_user("alice@e.test", "alice-pw");
    let server = gw.addr("xhmtp.listen").to_owned();
    let client = XhmtpClient::new(
        server.parse().unwrap(),
        "e.test",
        None,
        "xhmtp",
        "alice@e.test",
        "alice-pw",
    );
    (client, server)
}

/// A one-line submission to `to`.
fn send(to: &str, subject: &str) -> SubmitRequest {
    SubmitRequest {
        to: vec![to.to_owned()],
        subject: subject.to_owned(),
        body: "b".into(),
        ..SubmitRequest::default()
    }
}

/// Wait until alice's feed has an item titled `title`; return the message behind it.
async fn bounce_for(alice: &XhmtpClient, server: &str, title: &str) -> serde_json::Value {
    let what = format!("a bounce titled {title:?}");
    let link = support::eventually_async(Duration::from_secs(60), &what, || async {
        let feed = alice.feed(None).await.unwrap();
        let channel = feed_rs::parser::parse(&feed.body[..]).unwrap();
        channel
            .entries
            .iter()
            .find(|e| e.title.as_ref().is_some_and(|t| t.content == title))
            .map(|item| item.links[0].href.clone())
    })
    .await;
    let m = alice
        .fetch_url(&link, server.parse().unwrap())
        .await
        .unwrap();
    serde_json::to_value(m).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_bounce_to_the_sender_and_the_queue_is_manageable() {
    // down.test has a server that never answers; nowhere.test does not exist.
    let dns = dns_server(vec![
        srv_to("xhmtp", "down.test", "down.test", 8080),
        a("down.test", [127, 0, 0, 9]),
        srv_to("xhmtp", "hold.test", "hold.test", 8080),
        a("hold.test", [127, 0, 0, 9]),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), Some(&config(dir.path(), dns)));
    let (alice, server) = alice(&gw);

    // An entry for hold.test waits; the operator sees it, retries it and drops it: no bounce.
    alice.submit(&send("h@hold.test", "held")).await.unwrap();
    let listed = queue(&gw, &["list", "--domain", "hold.test"]);
    let line = listed.lines().next().expect("the entry is listed");
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[2], "xhmtp", "{line}");
    assert_eq!(fields[3], "h@hold.test", "{line}");
    let id = fields[0];
    assert!(queue(&gw, &["retry", id]).contains("1 entries due now"));
    assert!(queue(&gw, &["drop", id]).contains("dropped"));
    assert!(queue(&gw, &["list", "--domain", "hold.test"]).is_empty());

    // No route at all: a permanent failure, bounced at once.
    alice.submit(&send("x@nowhere.test", "lost")).await.unwrap();
    let dsn = bounce_for(&alice, &server, "Undeliverable: lost").await;
    assert_eq!(dsn["from"], "mailer-daemon@e.test");
    let body = dsn["body"].as_str().unwrap();
    assert!(body.contains("Recipient: x@nowhere.test"), "{body}");
    assert!(body.contains("Protocol: none"), "{body}");
    assert!(body.contains("Attempts: 1"), "{body}");
    assert!(body.contains("no route to nowhere.test"), "{body}");
    assert!(body.contains("_xhmtp._tcp"), "{body}");

    // A peer that never answers: retried until the maximum age, then bounced.
    alice.submit(&send("d@down.test", "late")).await.unwrap();
    let dsn = bounce_for(&alice, &server, "Undeliverable: late").await;
    let body = dsn["body"].as_str().unwrap();
    assert!(body.contains("Recipient: d@down.test"), "{body}");
    assert!(body.contains("Protocol: xhmtp"), "{body}");
    assert!(body.contains("gave up after"), "{body}");
    let failed = queue(&gw, &["list", "--domain", "down.test"]);
    assert!(failed.contains("\tfailed\t"), "{failed}");

    // Exactly the two bounces, and `queue retry --all` revives the failed entries.
    let feed = alice.feed(None).await.unwrap();
    let channel = feed_rs::parser::parse(&feed.body[..]).unwrap();
    assert_eq!(channel.entries.len(), 2);
    assert!(queue(&gw, &["retry", "--all"]).contains("entries due now"));
}

/// A resolver that answers REFUSED (the test server is authoritative for `test.` only, and
/// refuses anything else) is a temporary failure: the entry is retried, never bounced; an
/// XHMTP notification whose URL host cannot be looked up gets `503`, not `403`.
#[tokio::test(flavor = "multi_thread")]
async fn dns_errors_are_retried_not_bounced() {
    let dns = dns_server(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Site {
        dns: Some(dns),
        relay:
            "poll_interval_ms = 50\nretry_base_secs = 1\nretry_max_secs = 1\nmax_age_secs = 3600",
        ..Site::new(&["e.test"], "127.0.0.8")
    }
    .config(dir.path());
    let gw = Gateway::start(dir.path(), Some(&config));
    let (alice, server) = alice(&gw);
    alice
        .submit(&send("x@refused.example", "refused"))
        .await
        .unwrap();
    // NODATA (the zone exists, no SRV records) is a real "no route": bounced at once.
    alice
        .submit(&send("y@nodata.test", "nodata"))
        .await
        .unwrap();
    bounce_for(&alice, &server, "Undeliverable: nodata").await;
    let listed = support::eventually(Duration::from_secs(60), "a second attempt", || {
        let listed = queue(&gw, &["list", "--domain", "refused.example"]);
        let fields: Vec<&str> = listed.lines().next().unwrap_or("").split('\t').collect();
        assert_ne!(fields.get(1), Some(&"failed"), "{listed}");
        (fields.get(4).and_then(|n| n.parse::<u32>().ok()) >= Some(2)).then_some(listed.clone())
    });
    assert!(
        listed.contains("REFUSED") || listed.contains("Refused"),
        "{listed}"
    );
    let feed = alice.feed(None).await.unwrap();
    let channel = feed_rs::parser::parse(&feed.body[..]).unwrap();
    assert_eq!(channel.entries.len(), 1, "only the NODATA bounce");

    // A notification whose message URL host our resolver cannot look up: 503, retry later.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = r#"{"url":"http://alice%40e.test:code@host.refused.example/xhmtp/carol/1"}"#;
    write!(
        s,
        "POST /xhmtp/alice@e.test HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
}

/// Gateway config for the crash test: MMTP on a fixed port (the SRV record names it).
fn crash_config(
    dir: &Path,
    ca: &Path,
    domain: &str,
    ip: &str,
    dns: std::net::SocketAddr,
) -> String {
    Site {
        ca: Some(ca),
        dns: Some(dns),
        mmtp_port: 8025,
        relay: "poll_interval_ms = 50\nretry_base_secs = 1\nretry_max_secs = 1",
        mmtp: "requests_per_sec = 0.0",
        ..Site::new(&[domain], ip)
    }
    .config(dir)
}

/// Messages in `who`'s INBOX at `gw` (MMTP CHECK over TLS).
async fn inbox_count(gw: &Gateway, ca: &Path, domain: &str, who: &str, pw: &str) -> u64 {
    let addr = mailgate_core::Address::parse_xhmtp(who).unwrap();
    let tls = mailgate::tls::connector(&ca.join("ca.pem"), domain).unwrap();
    let mut c = mailgate_mmtp::client::MmtpClient::connect(gw.addr("mmtp.tls_listen"), Some(tls))
        .await
        .unwrap();
    c.auth(&addr, pw).await.unwrap();
    c.check(&addr).await.unwrap()["totalCount"]
        .as_u64()
        .unwrap()
}

/// SIGKILL of the sending gateway while its queue is full: after the restart every entry is
/// delivered, and the recipient sees each message exactly once (entries in flight at the kill
/// are sent again; the receiving store drops the repeats by origin id).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_sender_delivers_its_whole_queue_exactly_once_after_restart() {
    use support::net::{leaf, test_ca};
    let dns = dns_server(vec![
        srv_to("mmtp", "bc.test", "bc.test", 8025),
        a("bc.test", [127, 0, 0, 12]),
    ])
    .await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    let ca = test_ca(ca_path);
    leaf(&ca, ca_path, "ac.test");
    leaf(&ca, ca_path, "bc.test");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let conf_a = crash_config(dir_a.path(), ca_path, "ac.test", "127.0.0.11", dns);
    let conf_b = crash_config(dir_b.path(), ca_path, "bc.test", "127.0.0.12", dns);
    let gw_a = Gateway::start(dir_a.path(), Some(&conf_a));
    gw_a.add_user("alice@ac.test", "alice-pw");
    let alice = XhmtpClient::new(
        gw_a.addr("xhmtp.listen").parse().unwrap(),
        "ac.test",
        None,
        "xhmtp",
        "alice@ac.test",
        "alice-pw",
    );
    // B is down while the queue fills.
    const N: u64 = 300;
    for i in 0..N {
        alice
            .submit(&SubmitRequest {
                to: vec!["bob@bc.test".into()],
                subject: format!("message {i}"),
                body: "x".into(),
                ..SubmitRequest::default()
            })
            .await
            .unwrap();
    }
    // B comes up (bob exists before it listens); A is killed as soon as deliveries are under
    // way.
    let conf_b_path = dir_b.path().join("mailgate.toml");
    std::fs::write(&conf_b_path, &conf_b).unwrap();
    support::run_ok(
        &[
            "user",
            "add",
            "bob@bc.test",
            "--password-stdin",
            "--config",
            conf_b_path.to_str().unwrap(),
        ],
        Some("bob-pw\n"),
        dir_b.path(),
    );
    let gw_b = Gateway::start(dir_b.path(), Some(&conf_b));
    support::eventually_every(
        Duration::from_secs(60),
        Duration::from_millis(20),
        "A delivering",
        || async {
            (inbox_count(&gw_b, ca_path, "bc.test", "bob@bc.test", "bob-pw").await > 0)
                .then_some(())
        },
    )
    .await;
    gw_a.kill();
    let before = inbox_count(&gw_b, ca_path, "bc.test", "bob@bc.test", "bob-pw").await;
    assert!(
        before < N,
        "everything was delivered before the kill; nothing was tested"
    );

    let gw_a = Gateway::start(dir_a.path(), Some(&conf_a));
    let what = format!("all {N} delivered after the restart");
    support::eventually_async(Duration::from_secs(120), &what, || async {
        let n = inbox_count(&gw_b, ca_path, "bc.test", "bob@bc.test", "bob-pw").await;
        assert!(n <= N, "{n} messages for {N} sent: a repeat got through");
        (n == N).then_some(())
    })
    .await;
    // Nothing left in A's queue, and no late repeat arrives.
    support::eventually(Duration::from_secs(30), "A's queue drained", || {
        queue(&gw_a, &["list"]).is_empty().then_some(())
    });
    // An entry leaves the list only once its delivery has finished: with nothing waiting or
    // in flight at A, no repeat can still be on its way, so the count is final now.
    assert_eq!(
        inbox_count(&gw_b, ca_path, "bc.test", "bob@bc.test", "bob-pw").await,
        N
    );
    eprintln!("delivered before the kill: {before} of {N}");
}

/// A static `[[route]]` (no DNS records at all for the domain) sends mail over the protocol it
/// names.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_route_names_the_protocol_and_the_server() {
    use support::net::{leaf, test_ca};
    let dns = dns_server(Vec::new()).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    let ca = test_ca(ca_path);
    leaf(&ca, ca_path, "rs.test");
    leaf(&ca, ca_path, "rt.test");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let conf_a = crash_config(dir_a.path(), ca_path, "rs.test", "127.0.0.13", dns)
        + "[[route]]\ndomain = \"rt.test\"\nprotocol = \"mmtp\"\nhost = \"127.0.0.14\"\nport = 8025\n";
    let gw_b = Gateway::start(
        dir_b.path(),
        Some(&crash_config(
            dir_b.path(),
            ca_path,
            "rt.test",
            "127.0.0.14",
            dns,
        )),
    );
    gw_b.add_user("bob@rt.test", "bob-pw");
    let gw_a = Gateway::start(dir_a.path(), Some(&conf_a));
    gw_a.add_user("alice@rs.test", "alice-pw");
    let alice = XhmtpClient::new(
        gw_a.addr("xhmtp.listen").parse().unwrap(),
        "rs.test",
        None,
        "xhmtp",
        "alice@rs.test",
        "alice-pw",
    );
    alice
        .submit(&SubmitRequest {
            to: vec!["bob@rt.test".into()],
            subject: "by static route".into(),
            body: "x".into(),
            ..SubmitRequest::default()
        })
        .await
        .unwrap();
    support::eventually_async(Duration::from_secs(60), "the static route used", || async {
        (inbox_count(&gw_b, ca_path, "rt.test", "bob@rt.test", "bob-pw").await > 0).then_some(())
    })
    .await;
    let listed = queue(&gw_a, &["list"]);
    assert!(listed.is_empty(), "{listed}");
}
