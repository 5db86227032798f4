//! The relay queue as operators and senders see it: permanent failures and entries older than
//! the maximum age bounce into the sender's INBOX (readable through every front-end), and
//! `mailgate queue list|retry|drop` manages what waits.

mod support;

use mailgate_xhmtp::client::XhmtpClient;
use mailgate_xhmtp::wire::SubmitRequest;
use std::path::Path;
use std::time::{Duration, Instant};
use support::net::{a, dns_server, srv_to};
use support::Gateway;

fn config(dir: &Path, dns: std::net::SocketAddr) -> String {
    format!(
        r#"data_dir = "{data}"
domains = ["e.test"]
[dns]
servers = ["{dns}"]
[relay]
poll_interval_ms = 50
retry_base_secs = 1
retry_max_secs = 1
max_age_secs = 4
[admin]
listen = "127.0.0.8:0"
[mmtp]
listen = "127.0.0.8:0"
tls_listen = "127.0.0.8:0"
[immp]
listen = "127.0.0.8:0"
[xhmtp]
listen = "127.0.0.8:0"
outbound_ip = "127.0.0.8"
"#,
        data = dir.join("data").display()
    )
}

fn queue(gw: &Gateway, args: &[&str]) -> String {
    let config = gw.config.to_str().unwrap().to_owned();
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    all.extend(["--config", &config]);
    let out = support::run_ok(&all, None, &gw.dir);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait until alice's feed has an item titled `title`; return the message behind it.
async fn bounce_for(alice: &XhmtpClient, server: &str, title: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let feed = alice.feed(None).await.unwrap();
        let channel = feed_rs::parser::parse(&feed.body[..]).unwrap();
        if let Some(item) = channel
            .entries
            .iter()
            .find(|e| e.title.as_ref().is_some_and(|t| t.content == title))
        {
            let m = alice
                .fetch_url(&item.links[0].href, server.parse().unwrap())
                .await
                .unwrap();
            return serde_json::to_value(m).unwrap();
        }
        assert!(Instant::now() < deadline, "no bounce titled {title:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    gw.add_user("alice@e.test", "alice-pw");
    let server = gw.addr("xhmtp.listen").to_owned();
    let alice = XhmtpClient::new(
        server.parse().unwrap(),
        "e.test",
        None,
        "xhmtp",
        "alice@e.test",
        "alice-pw",
    );
    let send = |to: &str, subject: &str| SubmitRequest {
        to: vec![to.to_owned()],
        subject: subject.to_owned(),
        body: "b".into(),
        ..SubmitRequest::default()
    };

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
