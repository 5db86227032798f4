//! mailgate and a real Postfix exchange mail both ways, over TLS.
//!
//! mailgate serves `a.test` on 127.0.0.9; Postfix serves `legacy.test` on 127.0.0.10 into a
//! maildir and relays `a.test` to mailgate's SMTP listener. mailgate routes `legacy.test` to
//! Postfix by a static `[[route]]` (opportunistic STARTTLS) in one test and by MX records in the
//! in-process DNS server (verified STARTTLS, `[smtp] require_tls`) in the other. Mail sent by
//! MMTP, IMMP and XHMTP users arrives in the maildir with its headers, body and attachment,
//! and with a DKIM signature that verifies against the key `mailgate dkim generate` made and
//! the DNS server publishes; mail `swaks` hands to Postfix reaches mailgate and is read through
//! MMTP, IMMP and XHMTP. Postfix's own log shows TLS in both directions.

mod support;

use mail_parser::{MessageParser, MimeHeaders};
use mailgate_core::Address;
use std::net::SocketAddr;
use std::path::Path;
use support::clients::{immp_client, mmtp_client, send, wait_immp_index, xhmtp_client};
use support::net::{a, dns_server, leaf, mx, test_ca, txt};
use support::postfix::{available, free_port, Postfix};
use support::site::Site;
use support::Gateway;

const MAILGATE_IP: &str = "127.0.0.9";
const POSTFIX_IP: &str = "127.0.0.10";

/// `mailgate dkim generate a.test` for the config at `dir`; the TXT record's name and value.
fn dkim_generate(dir: &Path, config: &str) -> (String, String) {
    let path = dir.join("mailgate.toml");
    std::fs::write(&path, config).unwrap();
    let out = support::run_ok(
        &[
            "dkim",
            "generate",
            "a.test",
            "--config",
            path.to_str().unwrap(),
        ],
        None,
        dir,
    );
    let record = String::from_utf8_lossy(&out.stdout).into_owned();
    // mailgate._domainkey.a.test. IN TXT ( "v=DKIM1; k=rsa; p=…" "…" )
    let (name, rest) = record.split_once(" IN TXT ").expect("a TXT record");
    let value: String = rest
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat();
    assert!(value.starts_with("v=DKIM1; k=rsa; p="), "{record}");
    (name.trim_end_matches('.').to_owned(), value)
}

struct Pair {
    dir: tempfile::TempDir,
    gw: Gateway,
    postfix: Postfix,
    dns: SocketAddr,
}

/// mailgate (alice, bob, carol on a.test) and Postfix for legacy.test; `route` says how
/// mailgate finds Postfix: `"static"` or `"mx"`.
async fn pair(route: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca(dir.path());
    leaf(&ca, dir.path(), "a.test");
    leaf(&ca, dir.path(), "legacy.test");
    let postfix_addr: SocketAddr = format!("{POSTFIX_IP}:{}", free_port(POSTFIX_IP))
        .parse()
        .unwrap();
    let port = postfix_addr.port();
    let tail = match route {
        "static" => format!(
            "[[route]]\ndomain = \"legacy.test\"\nprotocol = \"smtp\"\nhost = \"{POSTFIX_IP}\"\nport = {port}\n"
        ),
        _ => format!("mx_port = {port}\nrequire_tls = true\n"),
    };
    // The DKIM key first (its record goes into the zone), then the DNS server, then mailgate.
    let site = |dns: Option<SocketAddr>| Site {
        ca: Some(dir.path()),
        dns,
        tail: &tail,
        ..Site::new(&["a.test"], MAILGATE_IP)
    };
    let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (dkim_name, dkim_value) =
        dkim_generate(dir.path(), &site(Some(placeholder)).config(dir.path()));
    let dns = dns_server(vec![
        txt(&dkim_name, &dkim_value),
        txt("a.test", "v=spf1 ip4:127.0.0.9 -all"),
        txt("legacy.test", "v=spf1 ip4:127.0.0.10 -all"),
        mx("legacy.test", 10, "mx.legacy.test"),
        a("mx.legacy.test", [127, 0, 0, 10]),
    ])
    .await;
    let config = site(Some(dns)).config(dir.path());
    let gw = Gateway::start(dir.path(), Some(&config)).with_ca(dir.path(), "a.test");
    for who in ["alice", "bob", "carol"] {
        gw.add_user(&format!("{who}@a.test"), &format!("{who}-pw"));
    }
    let smtp = gw.addr("smtp.listen").to_owned();
    let d = dir.path();
    let postfix = Postfix::start(
        d,
        postfix_addr,
        "legacy.test",
        (
            &d.join("legacy.test.pem"),
            &d.join("legacy.test.key"),
            &d.join("ca.pem"),
        ),
        &format!(
            "inline:{{ a.test=smtp:[{}]:{} }}",
            MAILGATE_IP,
            smtp.rsplit(':').next().unwrap()
        ),
    );
    Pair {
        dir,
        gw,
        postfix,
        dns,
    }
}

/// The DKIM verdict of `raw` as a receiver checking against `dns` finds it.
async fn dkim_verifies(raw: &[u8], dns: SocketAddr) -> bool {
    let auth =
        mailgate_smtp::auth::authenticator(&[dns], std::time::Duration::from_secs(5)).unwrap();
    let message = mail_auth::AuthenticatedMessage::parse(raw).expect("parses");
    let results = auth.verify_dkim(&message).await;
    assert!(!results.is_empty(), "no DKIM-Signature");
    results
        .iter()
        .all(|r| matches!(r.result(), mail_auth::DkimResult::Pass))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_both_ways_between_mailgate_and_postfix_over_a_static_route() {
    if !available() {
        return;
    }
    let p = pair("static").await;
    let ca = p.dir.path().to_owned();
    let bob_legacy = Address::parse_any("bob@legacy.test").unwrap();
    // One message out through each of mailgate's front-ends.
    for (via, who) in [("mmtp", "alice"), ("immp", "bob"), ("xhmtp", "carol")] {
        let from = Address::parse_any(&format!("{who}@a.test")).unwrap();
        send(
            &p.gw,
            &ca,
            "a.test",
            via,
            &from,
            &format!("{who}-pw"),
            &bob_legacy,
            &format!("from {via}"),
            &format!("Hello from {via}\n"),
            format!("attachment {via}").as_bytes(),
            "",
        )
        .await;
    }
    let mail = p.postfix.wait_for_mail(3);
    let mut seen = Vec::new();
    for raw in &mail {
        let m = MessageParser::default().parse(&raw[..]).expect("MIME");
        let subject = m.subject().unwrap().to_owned();
        let via = subject.strip_prefix("from ").expect("subject").to_owned();
        let from = m
            .from()
            .unwrap()
            .first()
            .unwrap()
            .address()
            .unwrap()
            .to_owned();
        assert!(from.ends_with("@a.test"), "{from}");
        assert_eq!(
            m.to().unwrap().first().unwrap().address(),
            Some("bob@legacy.test")
        );
        assert!(m.message_id().is_some());
        assert_eq!(
            m.body_text(0).unwrap().trim_end(),
            format!("Hello from {via}")
        );
        let attachment = m.attachments().next().expect("the attachment");
        assert_eq!(attachment.attachment_name(), Some("file.bin"));
        assert_eq!(
            attachment.contents(),
            format!("attachment {via}").as_bytes()
        );
        assert!(m.header("Received").is_some(), "Postfix's trace field");
        assert!(dkim_verifies(raw, p.dns).await, "DKIM of the {via} message");
        seen.push(via);
    }
    seen.sort();
    assert_eq!(seen, ["immp", "mmtp", "xhmtp"]);
    // Postfix received over TLS from mailgate.
    p.postfix
        .wait_for_log(&["smtpd", "TLS connection established from"]);

    // The other way: swaks → Postfix → mailgate, read through every protocol.
    p.postfix.swaks(&[
        "--from",
        "dave@legacy.test",
        "--to",
        "alice@a.test",
        "--header",
        "Subject: from postfix",
        "--body",
        "Hello alice, from the legacy world",
        "--attach-type",
        "application/pdf",
        "--attach-name",
        "report.pdf",
        "--attach",
        "@/etc/hostname",
    ]);
    p.postfix
        .wait_for_log(&["smtp[", "TLS connection established to", MAILGATE_IP]);
    p.postfix
        .wait_for_log(&["to=<alice@a.test>", "status=sent"]);
    let alice = Address::parse_any("alice@a.test").unwrap();
    let index = wait_immp_index(&p.gw, &ca, "a.test", &alice, "alice-pw", 1).await;
    assert_eq!(index[0]["subject"], "from postfix", "{index:?}");
    // SPF passed for Postfix's address: the sender's domain is checked, and every protocol
    // shows the authentication results.
    let mut c = immp_client(&p.gw, &ca, "a.test", &alice, "alice-pw").await;
    let id = index[0]["id"].as_str().unwrap();
    c.send_raw(format!("MBOX FETCH /inbox#{id} +JSON\n").as_bytes())
        .await
        .unwrap();
    let reply = c.reply().await.unwrap();
    c.quit().await;
    let fetched: serde_json::Value = reply
        .lines
        .iter()
        .find_map(|l| serde_json::from_str(l.trim_start_matches("250- ")).ok())
        .unwrap_or_else(|| panic!("{reply:?}"));
    let results = fetched["authentication"].as_str().unwrap_or_default();
    assert!(
        results.starts_with("a.test; ") && results.contains("spf=pass"),
        "{index:?}"
    );
    assert!(
        results.contains("smtp.mailfrom=dave@legacy.test"),
        "{results}"
    );
    assert_eq!(fetched["senderCheck"], "domain", "{fetched}");
    let x = xhmtp_client(&p.gw, "a.test", "alice@a.test", "alice-pw");
    let feed = x.feed(None).await.unwrap();
    let parsed = feed_rs::parser::parse(&feed.body[..]).expect("RSS parses");
    assert_eq!(parsed.entries.len(), 1);
    let link = &parsed.entries[0].links[0].href;
    let m = x
        .fetch_url(link, p.gw.addr("xhmtp.listen").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(m.subject, "from postfix");
    assert_eq!(m.verdicts.authentication.as_deref(), Some(results));
    // MMTP RECEIVE last: it removes what it returns.
    let mut m = mmtp_client(&p.gw, &ca, "a.test", &alice, "alice-pw").await;
    let packets = m.receive(&alice, None).await.unwrap();
    assert_eq!(packets.len(), 1, "{packets:?}");
    let packet = packets[0].to_string();
    assert!(
        packet.contains("Hello alice, from the legacy world"),
        "{packet}"
    );
    assert!(packet.contains("spf=pass"), "{packet}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_records_route_to_postfix_over_verified_tls() {
    if !available() {
        return;
    }
    let p = pair("mx").await;
    let ca = p.dir.path().to_owned();
    let alice = Address::parse_any("alice@a.test").unwrap();
    send(
        &p.gw,
        &ca,
        "a.test",
        "mmtp",
        &alice,
        "alice-pw",
        &Address::parse_any("bob@legacy.test").unwrap(),
        "by MX",
        "found through DNS\n",
        b"x",
        "",
    )
    .await;
    let mail = p.postfix.wait_for_mail(1);
    let m = MessageParser::default().parse(&mail[0][..]).unwrap();
    assert_eq!(m.subject(), Some("by MX"));
    assert!(dkim_verifies(&mail[0], p.dns).await);
    p.postfix
        .wait_for_log(&["smtpd", "TLS connection established from"]);
}
