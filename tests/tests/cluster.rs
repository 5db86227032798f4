//! Several `mailgate serve` nodes for one domain over one PostgreSQL database (issue 13): mail
//! stored through one node is read through every protocol on another, single-use state holds
//! across nodes, live pushes fan out, and a node killed under load loses nothing and delivers
//! nothing twice (its relay leases are taken over by the survivor).

mod support;

#[path = "../../core-store/tests/support/pg.rs"]
mod pg;

use mailgate_core::Address;
use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
use mailgate_xhmtp::client::XhmtpClient;
use mailgate_xhmtp::wire::SubmitRequest;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::immp::{line, login, send};
use support::net::{a, dns_server, leaf, srv_to, test_ca};
use support::site::Site;
use support::Gateway;

/// A fresh database for the test, or `None` (outside CI only) when there is no server.
async fn database(test: &str) -> Option<String> {
    let server = pg::server()?;
    Some(server.fresh_database(&pg::database_name(test)).await)
}

/// The `[store]` section for `url`, after the site's own.
fn store(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\npool_size = 8\n")
}

/// An MMTP connection over TLS to `node`, logged in as `who`.
async fn mmtp(node: &Gateway, who: &Address, password: &str) -> MmtpClient {
    let mut c = MmtpClient::connect(node.addr("mmtp.tls_listen"), Some(node.connector()))
        .await
        .unwrap();
    c.auth(who, password).await.unwrap();
    c
}

/// Messages in `who`'s INBOX, as MMTP CHECK on `node` counts them.
async fn inbox_count(node: &Gateway, who: &Address, password: &str) -> u64 {
    mmtp(node, who, password).await.check(who).await.unwrap()["totalCount"]
        .as_u64()
        .unwrap()
}

/// Wait until `who`'s INBOX on `node` holds `n` messages.
async fn wait_inbox(node: &Gateway, who: &Address, password: &str, n: u64, what: &str) {
    let have = support::eventually_async(Duration::from_secs(60), what, || async {
        let have = inbox_count(node, who, password).await;
        (have >= n).then_some(have)
    })
    .await;
    assert_eq!(have, n, "{what}: too many");
}

fn addr(s: &str) -> Address {
    Address::parse_any(s).unwrap()
}

/// A port free on `ip` now (for listeners other gateways' routes must name in advance).
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `[[route]]` lines.
fn route(domain: &str, protocol: &str, host: &str, port: u16) -> String {
    format!(
        "[[route]]\ndomain = \"{domain}\"\nprotocol = \"{protocol}\"\nhost = \"{host}\"\nport = {port}\ntls = false\n"
    )
}

/// Two nodes of a.test (127.0.0.2, .3) on one database, and d.test/x.test (127.0.0.4, its
/// own SQLite store) beside them. Node 1 relays to d.test (IMMP) and x.test (XHMTP); node 2's
/// routes there lead nowhere, so what arrives was sent by node 1 — and d.test's call-backs
/// (IMMP COOKIE CHECK, XHMTP fetch) go to node 2, which must accept what node 1 issued.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_share_mail_single_use_state_site_keys_and_live_pushes() {
    let Some(url) = database("nodes_share_mail").await else {
        return;
    };
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    let ca = test_ca(ca_path);
    leaf(&ca, ca_path, "a.test");
    leaf(&ca, ca_path, "d.test");
    // Both nodes listen on the same ports (on their own addresses): the URLs node 1 puts in
    // XHMTP notifications name its port, and d.test's route to a.test leads to node 2.
    let (immp_port, xhmtp_port) = (free_port("127.0.0.3"), free_port("127.0.0.3"));
    let (d_immp, d_xhmtp) = (free_port("127.0.0.4"), free_port("127.0.0.4"));
    let tail1 = store(&url)
        + &route("d.test", "immp", "127.0.0.4", d_immp)
        + &route("x.test", "xhmtp", "127.0.0.4", d_xhmtp);
    let tail2 = store(&url)
        + &route("d.test", "immp", "127.0.0.9", d_immp)
        + &route("x.test", "xhmtp", "127.0.0.9", d_xhmtp);
    // DNS names every node of a.test (x.test checks a notifier against it).
    let dns = dns_server(vec![
        a("a.test", [127, 0, 0, 2]),
        a("a.test", [127, 0, 0, 3]),
    ])
    .await;
    let (x1, x2) = (
        "outbound_ip = \"127.0.0.2\"".to_owned(),
        "outbound_ip = \"127.0.0.3\"".to_owned(),
    );
    let site = |ip, tail, xhmtp| Site {
        ca: Some(ca_path),
        immp_port,
        xhmtp_port,
        xhmtp,
        mmtp: "hashcash_difficulty = 1\nrequests_per_sec = 0.0",
        tail,
        ..Site::new(&["a.test"], ip)
    };
    let (d1, d2, dd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // Both nodes start at once against the empty database: one migrates, the other waits.
    let c1 = site("127.0.0.2", &tail1, &x1).config(d1.path());
    let c2 = site("127.0.0.3", &tail2, &x2).config(d2.path());
    let (p1, p2) = (d1.path().to_owned(), d2.path().to_owned());
    let starting = std::thread::spawn(move || Gateway::start(&p2, Some(&c2)));
    let n1 = Gateway::start(&p1, Some(&c1)).with_ca(ca_path, "a.test");
    let n2 = starting.join().unwrap().with_ca(ca_path, "a.test");
    let d_tail = route("a.test", "immp", "127.0.0.3", immp_port)
        + &route("a.test", "xhmtp", "127.0.0.3", xhmtp_port);
    let d_config = Site {
        ca: Some(ca_path),
        dns: Some(dns),
        immp_port: d_immp,
        xhmtp_port: d_xhmtp,
        tail: &d_tail,
        ..Site::new(&["d.test", "x.test"], "127.0.0.4")
    }
    .config(dd.path());
    let gd = Gateway::start(dd.path(), Some(&d_config)).with_ca(ca_path, "d.test");
    n1.add_user("alice@a.test", "alice-pw");
    n1.add_user("bob@a.test", "bob-pw");
    gd.add_user("dave@d.test", "dave-pw");
    gd.add_user("xena@x.test", "xena-pw");
    let bob = addr("bob@a.test");

    // Stored over IMMP on node 1 …
    let mut a1 = login(&n1, "alice@a.test", "alice-pw").await;
    send(
        &mut a1,
        "DELIVER TO bob@a.test\nDATA NAME subject\nAcross nodes\n\n\nDATA NAME body LENGTH 5 +CONTENT\nhello\nDONE\n",
    )
    .await;
    for expected in ["270", "271", "272", "271", "272", "273"] {
        let l = line(&mut a1).await;
        assert!(l.starts_with(expected), "{l}");
    }
    // … read on node 2 over IMMP, MMTP and XHMTP.
    let mut b2 = login(&n2, "bob@a.test", "bob-pw").await;
    send(&mut b2, "MBOX INDEX /inbox +JSON\n").await;
    let mut index = String::new();
    loop {
        let l = line(&mut b2).await;
        index.push_str(&l);
        if l.starts_with("250 ") {
            break;
        }
    }
    assert!(index.contains("Across nodes"), "IMMP on node 2: {index}");
    assert_eq!(inbox_count(&n2, &bob, "bob-pw").await, 1, "MMTP on node 2");
    let feed = XhmtpClient::new(
        n2.addr("xhmtp.listen").parse().unwrap(),
        "a.test",
        None,
        "xhmtp",
        "bob@a.test",
        "bob-pw",
    )
    .feed(None)
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&feed.body).contains("Across nodes"),
        "XHMTP feed on node 2"
    );

    // A HashCash stamp spent on node 1 is refused on node 2.
    let mut m1 = MmtpClient::connect(n1.addr("mmtp.listen"), None)
        .await
        .unwrap();
    let packet = PacketBuilder::new(addr("(carol)%(elsewhere.test)"), bob.clone(), "stamp", "x")
        .build(m1.difficulty())
        .unwrap();
    m1.send(&packet.text)
        .await
        .expect("node 1 accepts the packet");
    let mut m2 = MmtpClient::connect(n2.addr("mmtp.listen"), None)
        .await
        .unwrap();
    let replay = m2.send(&packet.text).await;
    assert!(
        replay.is_err(),
        "node 2 took a stamp node 1 spent: {replay:?}"
    );
    assert_eq!(inbox_count(&n1, &bob, "bob-pw").await, 2);

    // The site's secrets are one: the same access key and domain key on both nodes.
    for f in ["xhmtp-access.key", "domain-key.asc"] {
        assert_eq!(
            std::fs::read(d1.path().join("data").join(f)).unwrap(),
            std::fs::read(d2.path().join("data").join(f)).unwrap(),
            "{f}"
        );
    }
    // IMMP to d.test: node 1 issues the cookie, d.test checks it with node 2.
    send(
        &mut a1,
        "DELIVER TO dave@d.test\nDATA NAME subject\nCookie\n\n\nDATA NAME body LENGTH 2 +CONTENT\nhi\nDONE\n",
    )
    .await;
    for expected in ["270", "271", "272", "271", "272", "273"] {
        let l = line(&mut a1).await;
        assert!(l.starts_with(expected), "{l}");
    }
    wait_inbox(
        &gd,
        &addr("dave@d.test"),
        "dave-pw",
        1,
        "IMMP relay with node 1's cookie",
    )
    .await;
    // XHMTP to x.test: node 1 notifies with its access code, x.test fetches from node 2.
    XhmtpClient::new(
        n1.addr("xhmtp.listen").parse().unwrap(),
        "a.test",
        None,
        "xhmtp",
        "alice@a.test",
        "alice-pw",
    )
    .submit(&SubmitRequest {
        to: vec!["xena@x.test".into()],
        subject: "hosted".into(),
        body: "sender-hosted".into(),
        ..SubmitRequest::default()
    })
    .await
    .unwrap();
    wait_inbox(
        &gd,
        &addr("xena@x.test"),
        "xena-pw",
        1,
        "XHMTP fetch with node 1's code",
    )
    .await;

    // A push stored on node 1 is shown live to a subscriber connected to node 2.
    send(&mut a1, "PUBLISH news \"Alice's news\"\n").await;
    assert_eq!(line(&mut a1).await, "260 Node news@a.test published.");
    send(&mut b2, "SUBSCRIBE TO news@a.test\n").await;
    let l = line(&mut b2).await;
    assert!(l.starts_with("380 "), "{l}");
    assert_eq!(line(&mut b2).await, "280 Subscribed to: Alice's news");
    send(
        &mut a1,
        "PUBLISH TO news\nDATA NAME alert LENGTH 5\nhello\n",
    )
    .await;
    assert!(line(&mut a1).await.starts_with("275"));
    assert!(line(&mut a1).await.starts_with("271"));
    assert!(line(&mut a1)
        .await
        .ends_with("Push delivered to 1 recipients."));
    let push = line(&mut b2).await;
    assert!(
        push.starts_with("150 PUSH {") && push.contains("\"data\":\"hello\""),
        "{push}"
    );
}

/// Cluster node config for the load test: relay to b.test by DNS (SRV), short leases.
fn load_site<'a>(ip: &'a str, ca: &'a Path, dns: std::net::SocketAddr, tail: &'a str) -> Site<'a> {
    Site {
        ca: Some(ca),
        dns: Some(dns),
        relay: "poll_interval_ms = 50\nretry_base_secs = 1\nretry_max_secs = 1\nlease_secs = 3",
        mmtp: "hashcash_difficulty = 1\nrequests_per_sec = 0.0",
        tail,
        ..Site::new(&["a.test"], ip)
    }
}

/// MMTP senders on both nodes; node 1 is SIGKILLed mid-run. Every acknowledged message is
/// found — local mail in bob's INBOX, relayed mail at b.test — exactly once: node 1's leased
/// deliveries are taken over by node 2 when their leases run out.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_under_load_loses_nothing_and_delivers_nothing_twice() {
    let Some(url) = database("a_node_killed_under_load").await else {
        return;
    };
    let dns = dns_server(vec![
        srv_to("mmtp", "b.test", "b.test", 8025),
        a("b.test", [127, 0, 0, 5]),
    ])
    .await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    let ca = test_ca(ca_path);
    leaf(&ca, ca_path, "a.test");
    leaf(&ca, ca_path, "b.test");
    let tail = store(&url);
    let (d1, d2, db) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let n1 = Gateway::start(
        d1.path(),
        Some(&load_site("127.0.0.2", ca_path, dns, &tail).config(d1.path())),
    )
    .with_ca(ca_path, "a.test");
    let n2 = Gateway::start(
        d2.path(),
        Some(&load_site("127.0.0.3", ca_path, dns, &tail).config(d2.path())),
    )
    .with_ca(ca_path, "a.test");
    let b_site = Site {
        mmtp_port: 8025,
        mmtp: "requests_per_sec = 0.0",
        ..load_site("127.0.0.5", ca_path, dns, "")
    };
    let b_config = Site {
        domains: &["b.test"],
        ..b_site
    }
    .config(db.path());
    let gb = Gateway::start(db.path(), Some(&b_config)).with_ca(ca_path, "b.test");
    n1.add_user("alice@a.test", "alice-pw");
    n1.add_user("bob@a.test", "bob-pw");
    gb.add_user("carol@b.test", "carol-pw");
    let (alice, bob, carol) = (
        addr("alice@a.test"),
        addr("bob@a.test"),
        addr("carol@b.test"),
    );

    // Two senders per node, alternating local (bob) and relayed (carol) mail, until told to
    // stop or their node dies; each counts what was acknowledged.
    const PER_SENDER: u64 = 150;
    let acked_local = Arc::new(AtomicU64::new(0));
    let acked_relayed = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (node, n) in [(&n1, 1), (&n1, 2), (&n2, 3), (&n2, 4)] {
        let mut c = mmtp(node, &alice, "alice-pw").await;
        let (alice, bob, carol) = (alice.clone(), bob.clone(), carol.clone());
        let (local, relayed) = (acked_local.clone(), acked_relayed.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                let to = if i % 2 == 0 { &bob } else { &carol };
                let packet =
                    PacketBuilder::new(alice.clone(), to.clone(), &format!("s{n} m{i}"), "x")
                        .build(c.difficulty())
                        .unwrap();
                let sent =
                    tokio::time::timeout(Duration::from_secs(20), c.send(&packet.text)).await;
                match sent {
                    Ok(Ok(_)) if i % 2 == 0 => local.fetch_add(1, Ordering::SeqCst),
                    Ok(Ok(_)) => relayed.fetch_add(1, Ordering::SeqCst),
                    // The node died: what it did not acknowledge is the sender's to resend.
                    _ => return,
                };
            }
        }));
    }
    // Kill node 1 once relaying is under way.
    support::eventually_every(
        Duration::from_secs(60),
        Duration::from_millis(20),
        "relaying under way",
        || async { (inbox_count(&gb, &carol, "carol-pw").await >= 5).then_some(()) },
    )
    .await;
    n1.kill();
    for s in senders {
        s.await.unwrap();
    }
    let (local, relayed) = (
        acked_local.load(Ordering::SeqCst),
        acked_relayed.load(Ordering::SeqCst),
    );
    assert!(
        local + relayed < 4 * PER_SENDER,
        "node 1 finished before the kill: nothing was tested"
    );
    // Node 2 alone: every acknowledged local message is there, and every acknowledged relayed
    // one arrives at b.test, node 1's leased ones after their lease (3 s) ran out.
    assert!(inbox_count(&n2, &bob, "bob-pw").await >= local);
    let what = format!("all {relayed} acknowledged relayed messages at b.test");
    support::eventually_async(Duration::from_secs(120), &what, || async {
        (inbox_count(&gb, &carol, "carol-pw").await >= relayed).then_some(())
    })
    .await;
    // Let any late repeat arrive, then count distinct subjects: nothing twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (node, who, pw, acked) in [
        (&n2, &bob, "bob-pw", local),
        (&gb, &carol, "carol-pw", relayed),
    ] {
        let mut c = mmtp(node, who, pw).await;
        let mut subjects = Vec::new();
        loop {
            let batch = c.receive(who, Some(500)).await.unwrap();
            if batch.is_empty() {
                break;
            }
            subjects.extend(batch.iter().map(|m| {
                m["content"]["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            }));
        }
        let total = subjects.len() as u64;
        subjects.sort();
        subjects.dedup();
        assert_eq!(
            subjects.len() as u64,
            total,
            "{who}: a message arrived twice"
        );
        // Unacknowledged sends may have been stored (the kill came between commit and
        // answer), never the other way round.
        assert!(
            total >= acked,
            "{who}: {total} stored for {acked} acknowledged"
        );
        assert!(
            total <= acked + 2,
            "{who}: {total} stored for {acked} acknowledged"
        );
    }
    eprintln!("acknowledged: {local} local, {relayed} relayed");
}

/// An operator moving up: a SQLite gateway is stopped, `mailgate store migrate` copies its
/// store into PostgreSQL, and the site started on the database (as a new node, with an empty
/// data directory) has every account, message and spent stamp of the old one.
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_site_moves_to_postgres_with_store_migrate() {
    let Some(url) = database("a_sqlite_site_moves").await else {
        return;
    };
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path();
    leaf(&test_ca(ca_path), ca_path, "a.test");
    let site = |ip, tail| Site {
        ca: Some(ca_path),
        mmtp: "hashcash_difficulty = 1\nrequests_per_sec = 0.0",
        tail,
        ..Site::new(&["a.test"], ip)
    };
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = Gateway::start(
        old_dir.path(),
        Some(&site("127.0.0.2", "").config(old_dir.path())),
    )
    .with_ca(ca_path, "a.test");
    old.add_user("alice@a.test", "alice-pw");
    old.add_user("bob@a.test", "bob-pw");
    let (alice, bob) = (addr("alice@a.test"), addr("bob@a.test"));
    let mut c = mmtp(&old, &alice, "alice-pw").await;
    let mut packets = Vec::new();
    for i in 0..10 {
        let packet = PacketBuilder::new(alice.clone(), bob.clone(), &format!("m{i}"), "x")
            .build(c.difficulty())
            .unwrap();
        c.send(&packet.text).await.unwrap();
        packets.push(packet.text);
    }
    drop(c);
    let (status, _) = old.stop();
    assert!(status.success());

    let sqlite = format!(
        "sqlite:{}",
        old_dir.path().join("data/mailgate.db").display()
    );
    let out = support::run_ok(
        &["store", "migrate", "--from", &sqlite, "--to", &url],
        None,
        old_dir.path(),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("every count matches"), "{printed}");

    let tail = store(&url);
    let new = Gateway::start(
        new_dir.path(),
        Some(&site("127.0.0.3", &tail).config(new_dir.path())),
    )
    .with_ca(ca_path, "a.test");
    assert_eq!(inbox_count(&new, &bob, "bob-pw").await, 10);
    // A stamp spent before the move stays spent after it.
    let replay = mmtp(&new, &alice, "alice-pw")
        .await
        .request_text(&format!(
            "{{\"action\":\"SEND\",\"data\":{{\"packet\":{}}}}}",
            packets[0]
        ))
        .await
        .unwrap();
    assert_eq!(replay["status"], "ERROR", "{replay}");
    assert!(
        replay["message"].as_str().unwrap().contains("spent"),
        "{replay}"
    );
    assert_eq!(inbox_count(&new, &bob, "bob-pw").await, 10);
    // Migrating into the now used database again is refused.
    let again = support::run(
        &["store", "migrate", "--from", &sqlite, "--to", &url],
        None,
        old_dir.path(),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty store"));
}

/// TMTP members logged in on two nodes of one site: presence notices and posts cross from one
/// node to the other through the shared store.
#[tokio::test(flavor = "multi_thread")]
async fn tmtp_members_on_two_nodes_hear_each_others_presence_and_posts() {
    use mailgate_tmtp::client::TmtpClient;
    use serde_json::json;
    let Some(url) = database("tmtp_two_nodes").await else {
        return;
    };
    let tail = store(&url);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c1 = Site {
        tail: &tail,
        ..Site::new(&["a.test"], "127.0.0.2")
    }
    .config(d1.path());
    let n1 = Gateway::start(d1.path(), Some(&c1));
    let c2 = Site {
        tail: &tail,
        ..Site::new(&["a.test"], "127.0.0.3")
    }
    .config(d2.path());
    let n2 = Gateway::start(d2.path(), Some(&c2));
    n1.add_user("alice@a.test", "alice-pw");
    n1.add_user("bob@a.test", "bob-pw");
    let (alice, alice_node) = n1.add_tmtp_node("alice@a.test", "device");
    let (bob, bob_node) = n2.add_tmtp_node("bob@a.test", "device");
    let login = |gw: &Gateway, uid: String, secret: String| {
        let (tls, name) = gw.connector();
        let addr = gw.addr("tmtp.listen").to_owned();
        async move {
            let mut c = TmtpClient::connect(&addr, tls, name).await.unwrap();
            c.rev().await.unwrap();
            c.login(&uid, &secret).await.unwrap();
            c
        }
    };
    let mut a = login(&n1, alice.clone(), alice_node).await;
    let mut b = login(&n2, bob.clone(), bob_node).await;
    // Alice, on node 1, tells Bob, on node 2, that she is online.
    a.send(
        &json!({"op": 4, "id": "o1", "type": "add", "for": [{"id": bob}]}),
        &[],
    )
    .await
    .unwrap();
    let ohi = b.expect_op("ohi").await.unwrap();
    assert_eq!(
        (ohi.str("from"), ohi.head["status"].as_u64()),
        (alice.as_str(), Some(1))
    );
    // Her Post reaches Bob's node on the other gateway.
    a.post("p1", &[&bob], "across nodes", "hello")
        .await
        .unwrap();
    let delivery = b.expect_op("delivery").await.unwrap();
    assert_eq!(delivery.str("from"), alice);
    assert!(delivery.data.ends_with(b"hello"));
    b.ack(delivery.str("id")).await.unwrap();
    // Her last node goes offline: Bob hears it on node 2.
    a.quit().await.unwrap();
    let ohi = b.expect_op("ohi").await.unwrap();
    assert_eq!(ohi.head["status"].as_u64(), Some(2));
    drop((n1, n2));
}
