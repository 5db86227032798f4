//! MMTP end to end against the real program: frames made by the original client's library
//! (openpgp.js + JSON.stringify, fixtures in tests/fixtures/mmtp) are accepted, stored, returned
//! unchanged with their signature verified; replays are refused across a restart; limits hold.

mod support;

use mailgate_core::Address;
use mailgate_mmtp::client::{ClientError, MmtpClient, PacketBuilder};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{config_with, Gateway};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mmtp/");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}{name}")).unwrap()
}

/// The fixtures' stamps were minted when they were made: accept any age.
const FIXTURE_SETTINGS: &str = "hashcash_window_secs = 3153600000\nrequests_per_sec = 0.0";

fn addr(s: &str) -> Address {
    Address::parse_any(s).unwrap()
}

async fn tls_client(gw: &Gateway) -> MmtpClient {
    let ca = gw.dir.join("data/tls/cert.pem");
    let tls = mailgate::tls::connector(&ca, "localhost").unwrap();
    MmtpClient::connect(gw.addr("mmtp.tls_listen"), Some(tls))
        .await
        .unwrap()
}

/// The raw text of `content` inside a frame's packet.
fn raw_content(packet: &str) -> String {
    let p: HashMap<String, Box<RawValue>> = serde_json::from_str(packet).unwrap();
    p["content"].get().to_owned()
}

fn fixture_packet(name: &str) -> String {
    let frame: HashMap<String, Box<RawValue>> = serde_json::from_str(&fixture(name)).unwrap();
    let data: HashMap<String, Box<RawValue>> = serde_json::from_str(frame["data"].get()).unwrap();
    data["packet"].get().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn original_client_frames_are_stored_returned_unchanged_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "a.test", FIXTURE_SETTINGS);
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("alice@a.test", "alice-pw");
    gw.add_user("bob@a.test", "bob-pw");

    // Without AUTH, Alice's key is refused (trust on first use is off by default).
    let mut plain = MmtpClient::connect(gw.addr("mmtp.listen"), None)
        .await
        .unwrap();
    let tofu = plain
        .register_key(
            &addr("(alice)%(a.test)"),
            &fixture("(alice)%(a.test).pub.asc"),
        )
        .await;
    assert!(matches!(tofu, Err(ClientError::Refused(m)) if m.contains("AUTH as")));
    // An unauthenticated peer cannot send as Alice: the original client's frames are refused
    // on a plain connection...
    let forged = plain
        .request_text(&fixture("send-plain.json"))
        .await
        .unwrap();
    assert_eq!(forged["status"], "ERROR");
    assert!(forged["message"].as_str().unwrap().contains("authenticate"));
    // ...and taken, byte for byte, from Alice authenticated over TLS, who registers her
    // openpgp.js key.
    let mut plain = tls_client(&gw).await;
    plain
        .auth(&addr("(alice)%(a.test)"), "alice-pw")
        .await
        .unwrap();
    plain
        .register_key(
            &addr("(alice)%(a.test)"),
            &fixture("(alice)%(a.test).pub.asc"),
        )
        .await
        .unwrap();
    // The exact bytes the original client writes, one frame per file.
    for (name, id, encrypted, signed) in [
        ("send-plain.json", "fixture-plain-0001", false, false),
        ("send-signed.json", "fixture-signed-0001", false, true),
        ("send-encrypted.json", "fixture-encrypted-0001", true, true),
    ] {
        let reply = plain.request_text(&fixture(name)).await.unwrap();
        assert_eq!(reply["status"], "OK", "{name}: {reply}");
        assert_eq!(reply["messageId"], id);
        assert_eq!(reply["encrypted"], encrypted);
        assert_eq!(reply["signed"], signed);
    }
    // Replay of an accepted frame: refused, and the connection still works.
    let replay = plain
        .request_text(&fixture("send-plain.json"))
        .await
        .unwrap();
    assert_eq!(replay["status"], "ERROR");
    assert!(replay["message"]
        .as_str()
        .unwrap()
        .contains("already spent"));
    assert_eq!(
        plain
            .call("GET_TAG_CATEGORIES", serde_json::json!({}))
            .await
            .unwrap()["status"],
        "OK"
    );

    // A key for Alice from someone who is not Alice cannot replace hers.
    let bob_key = mailgate_core::pgp::generate_key(&addr("(alice)%(a.test)"))
        .unwrap()
        .1;
    let mut plain = MmtpClient::connect(gw.addr("mmtp.listen"), None)
        .await
        .unwrap();
    let err = plain
        .register_key(&addr("(alice)%(a.test)"), &bob_key)
        .await;
    assert!(matches!(err, Err(ClientError::Refused(m)) if m.contains("different key")));

    // Bob reads over TLS with AUTH.
    let mut bob = tls_client(&gw).await;
    bob.auth(&addr("(bob)%(a.test)"), "bob-pw").await.unwrap();
    let check = bob.check(&addr("(bob)%(a.test)")).await.unwrap();
    assert_eq!(check["totalCount"], 3);
    let reply = bob
        .request_text(r#"{"action":"RECEIVE","data":{"email":"(bob)%(a.test)"}}"#)
        .await
        .unwrap();
    assert_eq!(reply["count"], 3);
    let messages = reply["messages"].as_array().unwrap();
    for (i, name) in ["send-plain.json", "send-signed.json", "send-encrypted.json"]
        .iter()
        .enumerate()
    {
        let sent = fixture_packet(name);
        let sent_v: Value = serde_json::from_str(&sent).unwrap();
        // Unchanged: every field as sent, except the server's verdicts: on the signature
        // (checked against the key Alice registered herself) and on the sender (Alice,
        // authenticated).
        let mut expected = sent_v.clone();
        let verified = *name == "send-signed.json";
        expected["meta"]["signatureVerified"] = Value::Bool(verified);
        expected["meta"]["senderVerified"] = Value::Bool(true);
        expected["meta"]["senderCheck"] = Value::from("account");
        // (An encrypted message's signature covers the plaintext, which the server never
        // sees: it is not checked, so there is no key to name.)
        if verified {
            expected["meta"]["keySource"] = Value::from("local-owner");
        }
        assert_eq!(messages[i], expected, "{name}");
        // And the content text byte for byte (what the hash and signature cover).
        assert_eq!(
            serde_json::to_string(&messages[i]["content"]).unwrap(),
            serde_json::to_string(&sent_v["content"]).unwrap()
        );
    }
    // Byte-exact content on the wire: read the raw reply of a fresh RECEIVE after resending.
    let mut alice = tls_client(&gw).await;
    alice
        .auth(&addr("(alice)%(a.test)"), "alice-pw")
        .await
        .unwrap();
    let difficulty = alice.difficulty();
    let mut b = PacketBuilder::new(
        addr("(alice)%(a.test)"),
        addr("(bob)%(a.test)"),
        "é \u{2028}",
        "\u{1}\u{7f}</x>",
    );
    b.sign_with = Some(fixture("(alice)%(a.test).priv.asc"));
    let built = tokio::task::spawn_blocking(move || b.build(difficulty))
        .await
        .unwrap()
        .unwrap();
    alice.send(&built.text).await.unwrap();
    drop(bob);
    let raw = raw_receive(&gw, "(bob)%(a.test)", "bob-pw").await;
    assert!(
        raw.contains(&raw_content(&built.text)),
        "content bytes changed:\n{raw}"
    );
    assert!(raw.contains("\"signatureVerified\":true"));

    // Everything handed out is gone; nothing is handed out twice, also after a restart.
    let (status, _) = gw.stop();
    assert!(status.success());
    let gw = Gateway::start(dir.path(), Some(&config));
    let mut plain = tls_client(&gw).await;
    plain
        .auth(&addr("(alice)%(a.test)"), "alice-pw")
        .await
        .unwrap();
    for name in ["send-plain.json", "send-signed.json", "send-encrypted.json"] {
        let reply = plain.request_text(&fixture(name)).await.unwrap();
        assert_eq!(
            reply["status"], "ERROR",
            "{name} accepted again after restart"
        );
        assert!(reply["message"].as_str().unwrap().contains("already spent"));
    }
    let mut bob = tls_client(&gw).await;
    bob.auth(&addr("(bob)%(a.test)"), "bob-pw").await.unwrap();
    assert_eq!(
        bob.check(&addr("(bob)%(a.test)")).await.unwrap()["totalCount"],
        0
    );
    // Alice's key survived the restart.
    assert!(plain
        .request_key(&addr("(alice)%(a.test)"))
        .await
        .unwrap()
        .contains("BEGIN PGP PUBLIC KEY BLOCK"));
}

/// RECEIVE over TLS and return the reply line as it came off the wire.
async fn raw_receive(gw: &Gateway, email: &str, password: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let port = gw.addr("mmtp.tls_listen").rsplit_once(':').unwrap().1;
    let (connector, name) =
        mailgate::tls::connector(&gw.dir.join("data/tls/cert.pem"), "localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut s = BufReader::new(connector.connect(name, tcp).await.unwrap());
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    let auth =
        format!(r#"{{"action":"AUTH","data":{{"email":"{email}","password":"{password}"}}}}"#);
    s.get_mut().write_all(auth.as_bytes()).await.unwrap();
    line.clear();
    s.read_line(&mut line).await.unwrap();
    assert!(line.contains("\"OK\""), "{line}");
    let req = format!(r#"{{"action":"RECEIVE","data":{{"email":"{email}"}}}}"#);
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    line.clear();
    s.read_line(&mut line).await.unwrap();
    line
}

fn welcome_then_eof(addr: &str) -> (bool, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    (n > 0, s.write_all(b"{}").is_ok())
}

#[test]
fn per_ip_connection_limit_releases_slots_and_request_rate_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(
        dir.path(),
        "a.test",
        "requests_per_sec = 1.0\nrequest_burst = 3",
    );
    config = config.replace("[admin]", "[limits]\nmax_connections_per_ip = 2\n[admin]");
    let gw = Gateway::start(dir.path(), Some(&config));
    let target = gw.addr("mmtp.listen").to_owned();
    let first = TcpStream::connect(&target).unwrap();
    let second = TcpStream::connect(&target).unwrap();
    for s in [&first, &second] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        assert!((&*s).read(&mut buf).unwrap() > 0, "welcome expected");
    }
    // The third concurrent connection from this address is closed without a welcome.
    let third = welcome_then_eof(&target);
    assert!(!third.0, "third connection got a welcome");
    // Closing one frees its slot (the original server never released refused slots).
    drop(first);
    support::eventually(Duration::from_secs(10), "the slot released", || {
        welcome_then_eof(&target).0.then_some(())
    });
    drop(second);

    // Request rate: a burst of 3, then ERROR replies; the connection stays open.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Slots of the connections just closed are released as the server notices the close.
        let mut c = support::eventually_async(Duration::from_secs(10), "a free slot", || async {
            MmtpClient::connect(&target, None).await.ok()
        })
        .await;
        let mut refused = 0;
        for _ in 0..6 {
            let r = c
                .request_text(r#"{"action":"GET_TAG_CATEGORIES","data":{}}"#)
                .await
                .unwrap();
            if r["status"] == "ERROR" {
                assert!(r["message"].as_str().unwrap().contains("rate limit"));
                refused += 1;
            }
        }
        assert!(refused >= 2, "rate limit never applied");
    });
}

/// "OK" means on disk: SEND from many connections, SIGKILL the gateway mid-stream, restart it on
/// the same data directory, and find every acknowledged message in the recipient's mailbox.
#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_send_survives_sigkill() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        "a.test",
        "hashcash_difficulty = 1\nrequests_per_sec = 0.0",
    );
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@a.test", "bob-pw");
    let target = gw.addr("mmtp.listen").to_owned();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (target, acked) = (target.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = MmtpClient::connect(&target, None).await.unwrap();
            for i in 0..2000 {
                let b = PacketBuilder::new(
                    addr("(load)%(sender.test)"),
                    addr("(bob)%(a.test)"),
                    &format!("task {t} message {i}"),
                    &"x".repeat(1024 + i % 2048),
                );
                let built = b.build_with(1, 1).unwrap();
                match c.send(&built.text).await {
                    Ok(reply) => acked
                        .lock()
                        .unwrap()
                        .push(reply["messageId"].as_str().unwrap().to_owned()),
                    Err(_) => return, // the gateway died under us
                }
            }
        }));
    }
    support::eventually_every(
        Duration::from_secs(60),
        Duration::from_millis(5),
        "400 acknowledgements",
        || async { (acked.lock().unwrap().len() >= 400).then_some(()) },
    )
    .await;
    gw.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let gw = Gateway::start(dir.path(), Some(&config));
    let mut bob = tls_client(&gw).await;
    bob.auth(&addr("(bob)%(a.test)"), "bob-pw").await.unwrap();
    let mut stored = std::collections::HashSet::new();
    loop {
        let batch = bob
            .receive(&addr("(bob)%(a.test)"), Some(500))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            stored.insert(m["meta"]["messageId"].as_str().unwrap().to_owned());
        }
    }
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost",
        lost.len(),
        acked.len()
    );
    assert!(stored.len() >= acked.len());
}

/// The CLI client end to end, and `legacy_open_mailboxes` for original clients without AUTH.
#[test]
fn cli_send_and_receive_and_legacy_open_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "a.test", "legacy_open_mailboxes = true");
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@a.test", "bob-pw");
    let server = gw.addr("mmtp.listen").to_owned();
    let out = support::run_ok(
        &[
            "send",
            "--server",
            &server,
            "--from",
            "(alice)%(elsewhere.test)",
            "--to",
            "(bob)%(a.test)",
            "--subject",
            "from the CLI",
            "--body",
            "hi",
            "--tag",
            "category=work",
        ],
        None,
        dir.path(),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("M hashes/s"));
    // No AUTH: allowed only because legacy_open_mailboxes is on.
    let out = support::run_ok(
        &["receive", "--server", &server, "--email", "(bob)%(a.test)"],
        None,
        dir.path(),
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let m: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(m["content"]["subject"], "from the CLI");
    assert_eq!(m["meta"]["tags"]["category"][0], "work");
    // With TLS and a login, too (by address; the TLS name is the gateway's first domain).
    let ca = gw.dir.join("data/tls/cert.pem");
    let out = support::run_ok(
        &[
            "receive",
            "--server",
            gw.addr("mmtp.tls_listen"),
            "--tls",
            "--ca",
            ca.to_str().unwrap(),
            "--login",
            "(bob)%(a.test)",
            "--email",
            "(bob)%(a.test)",
        ],
        Some("bob-pw\n"),
        dir.path(),
    );
    assert!(out.stdout.is_empty(), "RECEIVE removed what it returned");
}
