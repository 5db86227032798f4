//! The bridging matrices.
//!
//! Across gateways: alice@a.test (gateway A, 127.0.0.2) sends through each of A's front-ends
//! (MMTP, IMMP, XHMTP) to an account on gateway B (127.0.0.3) whose domain B's DNS routes
//! through one protocol only — `immp.b.test` (SRV `_immp._tcp`), `mmtp.b.test` (`_mmtp._tcp`),
//! `xhmtp.b.test` (`_xhmtp._tcp`) — all records served by an in-process authoritative DNS
//! server. Every one of the nine messages is then read at B through every front-end and checked
//! for subject, body, attachment, importance, tags, and (sent signed over MMTP) a signature that
//! still verifies.
//!
//! Inside one gateway: submit through X, read through Y, for all nine pairs.

mod support;

use base64::Engine;
use mailgate_core::{Address, Importance};
use mailgate_mmtp::client::PacketBuilder;
use mailgate_xhmtp::wire::{MessageJson, SubmitRequest};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::clients::{mmtp_client, send, wait_immp_index, xhmtp_client};
use support::net::{a, dns_server, leaf, srv_to, test_ca};
use support::site::Site;
use support::Gateway;

const VIA: [&str; 3] = ["mmtp", "immp", "xhmtp"];
const ROUTES: [&str; 3] = ["immp", "mmtp", "xhmtp"];

/// A gateway for `domains` on `ip` with fixed ports (DNS records name them).
fn config(dir: &Path, ca: &Path, domains: &[&str], ip: &str, dns: std::net::SocketAddr) -> String {
    let xhmtp = format!(
        "public_url = \"http://{}:8080\"\noutbound_ip = \"{ip}\"\nnotify_rate_per_sec = 0.0",
        domains[0]
    );
    Site {
        ca: Some(ca),
        dns: Some(dns),
        mmtp_port: 8025,
        immp_port: 1025,
        xhmtp_port: 8080,
        mmtp: "requests_per_sec = 0.0",
        xhmtp: &xhmtp,
        ..Site::new(domains, ip)
    }
    .config(dir)
}

fn attachment(via: &str, route: &str) -> Vec<u8> {
    format!("\u{0}\u{1}attachment {via} {route}\u{ff}").into_bytes()
}

fn subject(via: &str, route: &str) -> String {
    format!("via {via} to {route}")
}

/// Tags the sender can set: IMMP has no syntax for tags at submission.
fn carries_tags(via: &str) -> bool {
    via != "immp"
}

/// Every message of `who`'s feed, fetched (links into B's own mailbox or to the sender's
/// server), keyed by subject.
async fn read_xhmtp(
    gw: &Gateway,
    domain: &str,
    who: &str,
    pw: &str,
    sender_server: &str,
) -> Vec<MessageJson> {
    let c = xhmtp_client(gw, domain, who, pw);
    let feed = c.feed(None).await.unwrap();
    let parsed = feed_rs::parser::parse(&feed.body[..]).expect("RSS parses");
    let mut out = Vec::new();
    for item in parsed.entries {
        let link = &item.links[0].href;
        // A sender's URL carries the access code as credentials; mailbox links do not.
        let connect = if !url::Url::parse(link).unwrap().username().is_empty() {
            sender_server.parse().unwrap()
        } else {
            gw.addr("xhmtp.listen").parse().unwrap()
        };
        out.push(c.fetch_url(link, connect).await.unwrap());
    }
    out
}

fn check_xhmtp(m: &MessageJson, via: &str, route: &str, from: &str) {
    let what = format!("{via}→{route} read over XHMTP");
    assert_eq!(m.from, from, "{what}");
    assert_eq!(m.body, format!("body {via} {route}"), "{what}");
    assert_eq!(m.importance, Importance::High, "{what}");
    let part = m
        .parts
        .iter()
        .find(|p| p.name == "file.bin")
        .expect("attachment");
    let data = base64::engine::general_purpose::STANDARD
        .decode(&part.data)
        .unwrap();
    assert_eq!(data, attachment(via, route), "{what}");
    if carries_tags(via) {
        assert!(
            m.tags.category.contains(&"work".to_owned()),
            "{what}: {:?}",
            m.tags
        );
    }
}

fn check_immp(line: &Value, via: &str, route: &str, from: &str) {
    let what = format!("{via}→{route} read over IMMP: {line}");
    assert_eq!(line["from"], from, "{what}");
    assert_eq!(line["importance"], "high", "{what}");
}

fn check_mmtp(packet: &Value, via: &str, route: &str, public_key: &str) {
    let what = format!("{via}→{route} read over MMTP: {packet}");
    let content = &packet["content"];
    assert_eq!(content["body"], format!("body {via} {route}"), "{what}");
    let att = &content["attachments"][0];
    let data = base64::engine::general_purpose::STANDARD
        .decode(att["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, attachment(via, route), "{what}");
    let tags = &packet["meta"]["tags"];
    assert!(
        tags["priority"]
            .as_array()
            .unwrap()
            .contains(&Value::from("high")),
        "{what}"
    );
    if carries_tags(via) {
        assert!(
            tags["category"]
                .as_array()
                .unwrap()
                .contains(&Value::from("work")),
            "{what}"
        );
    }
    if via == "mmtp" {
        // The sender's signature over the content still verifies at the far end.
        let signature = packet["verification"]["signature"]
            .as_str()
            .expect("signature");
        let text = mailgate_mmtp::jsjson::stringify(content);
        assert!(
            mailgate_core::pgp::verify_detached(public_key, signature, text.as_bytes()),
            "{what}: signature does not verify"
        );
    }
}

/// Gateways A (a.test, 127.0.0.2) and B (127.0.0.3: b.test and immp.b.test, mmtp.b.test,
/// xhmtp.b.test, each routed by DNS through that protocol only), with alice@a.test and
/// bob@<protocol>.b.test.
struct Pair {
    a: Gateway,
    b: Gateway,
    ca: tempfile::TempDir,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Pair {
    async fn start() -> Pair {
        let mut records = vec![
            srv_to("immp", "a.test", "mx.a.test", 1025),
            srv_to("mmtp", "a.test", "mx.a.test", 8025),
            srv_to("xhmtp", "a.test", "mx.a.test", 8080),
            a("mx.a.test", [127, 0, 0, 2]),
            a("a.test", [127, 0, 0, 2]),
            a("mx.b.test", [127, 0, 0, 3]),
            a("b.test", [127, 0, 0, 3]),
        ];
        for (p, port) in [("immp", 1025), ("mmtp", 8025), ("xhmtp", 8080)] {
            records.push(srv_to(p, &format!("{p}.b.test"), "mx.b.test", port));
        }
        let dns = dns_server(records).await;
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = test_ca(ca_dir.path());
        leaf(&ca, ca_dir.path(), "a.test");
        leaf(&ca, ca_dir.path(), "b.test");
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let gw_a = Gateway::start(
            dir_a.path(),
            Some(&config(
                dir_a.path(),
                ca_dir.path(),
                &["a.test"],
                "127.0.0.2",
                dns,
            )),
        );
        let b_domains = ["b.test", "immp.b.test", "mmtp.b.test", "xhmtp.b.test"];
        let gw_b = Gateway::start(
            dir_b.path(),
            Some(&config(
                dir_b.path(),
                ca_dir.path(),
                &b_domains,
                "127.0.0.3",
                dns,
            )),
        );
        gw_a.add_user("alice@a.test", "alice-pw");
        for route in ROUTES {
            gw_b.add_user(&format!("bob@{route}.b.test"), "bob-pw");
        }
        Pair {
            a: gw_a,
            b: gw_b,
            ca: ca_dir,
            _dirs: (dir_a, dir_b),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_by_three_between_two_gateways_over_dns() {
    let pair = Pair::start().await;
    let (gw_a, gw_b, ca_path) = (&pair.a, &pair.b, pair.ca.path());
    let alice = Address::parse_xhmtp("alice@a.test").unwrap();
    let (secret, public) = mailgate_core::pgp::generate_key(&alice).unwrap();

    for via in VIA {
        for route in ROUTES {
            let to = Address::parse_xhmtp(&format!("bob@{route}.b.test")).unwrap();
            send(
                gw_a,
                ca_path,
                "a.test",
                via,
                &alice,
                "alice-pw",
                &to,
                &subject(via, route),
                &format!("body {via} {route}"),
                &attachment(via, route),
                &secret,
            )
            .await;
        }
    }

    // And one OpenPGP-encrypted MMTP message per route: carried opaque, never decrypted.
    let mut sealed = Vec::new();
    for route in ROUTES {
        let to = Address::parse_xhmtp(&format!("bob@{route}.b.test")).unwrap();
        let (_, bob_public) = mailgate_core::pgp::generate_key(&to).unwrap();
        let mut c = mmtp_client(gw_a, ca_path, "a.test", &alice, "alice-pw").await;
        let mut b = PacketBuilder::new(alice.clone(), to, "sealed", "secret body");
        b.encrypt_to = Some(bob_public);
        let difficulty = c.difficulty();
        let built = tokio::task::spawn_blocking(move || b.build(difficulty))
            .await
            .unwrap()
            .unwrap();
        let packet: Value = serde_json::from_str(&built.text).unwrap();
        sealed.push(packet["content"]["encrypted"].as_str().unwrap().to_owned());
        c.send(&built.text).await.unwrap();
    }

    for (r, route) in ROUTES.iter().enumerate() {
        let route = *route;
        let who = format!("bob@{route}.b.test");
        let bob = Address::parse_xhmtp(&who).unwrap();
        // IMMP: the index (not destructive), once all four arrived.
        let index = wait_immp_index(gw_b, ca_path, "b.test", &bob, "bob-pw", 4).await;
        for via in VIA {
            let line = index
                .iter()
                .find(|l| l["subject"] == subject(via, route))
                .unwrap_or_else(|| panic!("{via}→{route} missing over IMMP: {index:?}"));
            check_immp(line, via, route, "alice@a.test");
        }
        // XHMTP: the feed and every message behind it.
        let read = read_xhmtp(gw_b, "b.test", &who, "bob-pw", "127.0.0.2:8080").await;
        assert_eq!(read.len(), 4, "{who}: {read:?}");
        assert!(
            read.iter()
                .any(|m| m.encrypted.as_deref() == Some(sealed[r].as_str())),
            "{who}: the encrypted payload did not arrive intact over XHMTP"
        );
        for via in VIA {
            let m = read
                .iter()
                .find(|m| m.subject == subject(via, route))
                .unwrap_or_else(|| panic!("{via}→{route} missing over XHMTP"));
            check_xhmtp(m, via, route, "alice@a.test");
        }
        // MMTP last: RECEIVE removes what it returns.
        let mut m = mmtp_client(gw_b, ca_path, "b.test", &bob, "bob-pw").await;
        let packets = m.receive(&bob, None).await.unwrap();
        assert_eq!(packets.len(), 4, "{who}: {packets:?}");
        assert!(
            packets
                .iter()
                .any(|p| p["content"]["encrypted"].as_str() == Some(sealed[r].as_str())),
            "{who}: the encrypted payload did not arrive intact over MMTP"
        );
        for via in VIA {
            let p = packets
                .iter()
                .find(|p| p["content"]["subject"] == subject(via, route))
                .unwrap_or_else(|| panic!("{via}→{route} missing over MMTP"));
            check_mmtp(p, via, route, &public);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_by_three_inside_one_gateway() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    let ca = test_ca(ca_path);
    leaf(&ca, ca_path, "one.test");
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_server(Vec::new()).await;
    let gw = Gateway::start(
        dir.path(),
        Some(&config(
            dir.path(),
            ca_path,
            &["one.test"],
            "127.0.0.10",
            dns,
        )),
    );
    let alice = Address::parse_xhmtp("alice@one.test").unwrap();
    gw.add_user("alice@one.test", "alice-pw");
    let (secret, public) = mailgate_core::pgp::generate_key(&alice).unwrap();
    // One reader account per read protocol; each gets a message through every front-end.
    for read in ROUTES {
        gw.add_user(&format!("{read}-reader@one.test"), "pw");
    }
    for via in VIA {
        for read in ROUTES {
            let to = Address::parse_xhmtp(&format!("{read}-reader@one.test")).unwrap();
            send(
                &gw,
                ca_path,
                "one.test",
                via,
                &alice,
                "alice-pw",
                &to,
                &subject(via, read),
                &format!("body {via} {read}"),
                &attachment(via, read),
                &secret,
            )
            .await;
        }
    }
    let reader = |p: &str| Address::parse_xhmtp(&format!("{p}-reader@one.test")).unwrap();
    // Read through IMMP.
    let index = wait_immp_index(&gw, ca_path, "one.test", &reader("immp"), "pw", 3).await;
    for via in VIA {
        let line = index
            .iter()
            .find(|l| l["subject"] == subject(via, "immp"))
            .unwrap_or_else(|| panic!("{via}→immp missing: {index:?}"));
        check_immp(line, via, "immp", "alice@one.test");
    }
    // Read through XHMTP.
    let who = reader("xhmtp").to_string();
    let read = read_xhmtp(&gw, "one.test", &who, "pw", "127.0.0.10:8080").await;
    assert_eq!(read.len(), 3);
    for via in VIA {
        let m = read
            .iter()
            .find(|m| m.subject == subject(via, "xhmtp"))
            .unwrap_or_else(|| panic!("{via}→xhmtp missing"));
        check_xhmtp(m, via, "xhmtp", "alice@one.test");
    }
    // Read through MMTP.
    let bob = reader("mmtp");
    let mut m = mmtp_client(&gw, ca_path, "one.test", &bob, "pw").await;
    let packets = m.receive(&bob, None).await.unwrap();
    assert_eq!(packets.len(), 3);
    for via in VIA {
        let p = packets
            .iter()
            .find(|p| p["content"]["subject"] == subject(via, "mmtp"))
            .unwrap_or_else(|| panic!("{via}→mmtp missing"));
        check_mmtp(p, via, "mmtp", &public);
    }
}

/// Relay throughput A→B per protocol: N messages submitted to A over XHMTP (8 at a time) for
/// bob@<protocol>.b.test, timed until B holds all N. A measurement, not a check: run it with
/// `cargo test --release -p mailgate-tests --test matrix relay_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark; run explicitly"]
async fn relay_throughput() {
    const N: u64 = 1000;
    let pair = Pair::start().await;
    let alice = std::sync::Arc::new(xhmtp_client(&pair.a, "a.test", "alice@a.test", "alice-pw"));
    for route in ROUTES {
        let who = format!("bob@{route}.b.test");
        let bob = Address::parse_xhmtp(&who).unwrap();
        let started = Instant::now();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (alice, next, who) = (alice.clone(), next.clone(), who.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
                    alice
                        .submit(&SubmitRequest {
                            to: vec![who.clone()],
                            subject: format!("bench {i}"),
                            body: "x".repeat(1024),
                            ..SubmitRequest::default()
                        })
                        .await
                        .unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let submitted = started.elapsed();
        let what = format!("{route}: all {N} at b.test");
        support::eventually_every(
            Duration::from_secs(600),
            Duration::from_millis(50),
            &what,
            || async {
                let mut c = mmtp_client(&pair.b, pair.ca.path(), "b.test", &bob, "bob-pw").await;
                let n = c.check(&bob).await.unwrap()["totalCount"].as_u64().unwrap();
                (n >= N).then_some(())
            },
        )
        .await;
        let took = started.elapsed().as_secs_f64();
        println!(
            "relay A→B over {route}: {N} messages (1 KiB bodies) in {took:.2} s = {:.0} msg/s \
             (submitted in {:.2} s)",
            N as f64 / took,
            submitted.as_secs_f64()
        );
    }
}
