//! TMTP end to end against the real program: a member with two nodes gets, in order, a Post
//! from another member and an IMMP DELIVER to the same account; both are acknowledged by both
//! nodes, leave the nodes' queues, and stay in the INBOX for IMMP. Then what an Ack means
//! across a crash, the resend of an unacknowledged message, and the registration policy.

mod support;

use mailgate_core::store::prelude::*;
use mailgate_core::store::tmtp::TmtpPayload;
use mailgate_core::{Metrics, SqliteOptions, SqliteStore};
use mailgate_tmtp::client::{Incoming, TmtpClient};
use mailgate_tmtp::ids::secret_hash;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::immp::{line, login, send};
use support::{config_with, run_ok, Gateway};

/// A gateway for `a.test` whose TMTP registration is open and whose nodes are sent an
/// unacknowledged message again after `ack_secs`.
fn gateway(dir: &Path, ack_secs: u64) -> Gateway {
    Gateway::start(dir, Some(&config(dir, ack_secs)))
}

fn config(dir: &Path, ack_secs: u64) -> String {
    config_with(dir, "a.test", "")
        + &format!("registration = \"open\"\nack_timeout_secs = {ack_secs}\n")
}

async fn connect(gw: &Gateway) -> TmtpClient {
    let (tls, name) = gw.connector();
    let mut c = TmtpClient::connect(gw.addr("tmtp.listen"), tls, name)
        .await
        .unwrap();
    assert_eq!(c.rev().await.unwrap(), "a.test");
    c
}

async fn node(gw: &Gateway, uid: &str, secret: &str) -> TmtpClient {
    let mut c = connect(gw).await;
    c.login(uid, secret).await.unwrap();
    c
}

/// The next `delivery`, acknowledging the `login` notices that come first.
async fn next_delivery(c: &mut TmtpClient) -> Incoming {
    c.expect_op("delivery").await.unwrap()
}

/// The subject in a delivery's secondary header.
fn subject(m: &Incoming) -> String {
    let head = m.head["datahead"].as_u64().unwrap() as usize;
    let v: serde_json::Value = serde_json::from_slice(&m.data[..head]).unwrap();
    v["subject"].as_str().unwrap().to_owned()
}

/// What is left in a node's queue (read from the store after the gateway stopped, and
/// emptied in the reading).
async fn queue_left(dir: &Path, uid: &str, secret: &str) -> Vec<TmtpPayload> {
    let store = SqliteStore::open(
        SqliteOptions::new(dir.join("data/mailgate.db")),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let (_, node) = store
        .tmtp_verify_node(uid, &secret_hash(secret).unwrap())
        .await
        .unwrap()
        .expect("the node exists");
    let mut left = Vec::new();
    while let Some(item) = store.tmtp_next(node).await.unwrap() {
        store.tmtp_ack(node, item.seq).await.unwrap();
        left.push(item.payload);
    }
    store.close().await.unwrap();
    left
}

/// Only `login` notices (of the member's own logins) are left: no mail.
fn only_login_notices(left: &[TmtpPayload]) {
    for p in left {
        match p {
            TmtpPayload::Frame(f) => {
                let text = String::from_utf8_lossy(f);
                assert!(text.contains(r#""op":"login""#), "{text}");
            }
            TmtpPayload::Message(m) => panic!("message {m:?} still queued"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_get_a_post_and_an_immp_delivery_in_order_and_the_inbox_keeps_both() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 30);
    gw.add_user("alice@a.test", "alice-pw");
    gw.add_user("bob@a.test", "bob-pw");
    let (alice, laptop) = gw.add_tmtp_node("alice@a.test", "laptop");
    let (alice_again, phone) = gw.add_tmtp_node("alice@a.test", "phone");
    assert_eq!(alice, alice_again, "one uid per account");
    let (bob, bob_node) = gw.add_tmtp_node("bob@a.test", "desk");

    // Bob posts over TMTP, then delivers over IMMP, while Alice's nodes are offline.
    let mut b = node(&gw, &bob, &bob_node).await;
    let ack = b
        .post("p1", &[&alice], "First, over TMTP", "hello from bob")
        .await
        .unwrap();
    assert!(!ack.str("msgid").is_empty() && !ack.str("posted").is_empty());
    let mut immp = login(&gw, "bob@a.test", "bob-pw").await;
    send(
        &mut immp,
        "DELIVER TO alice@a.test\nDATA NAME subject\nSecond, over IMMP\n\n\nDATA NAME body LENGTH 11 +CONTENT\nhello again\nDONE\n",
    )
    .await;
    for expected in ["270", "271", "272", "271", "272", "273"] {
        let l = line(&mut immp).await;
        assert!(l.starts_with(expected), "{l}");
    }

    for secret in [&laptop, &phone] {
        let mut a = node(&gw, &alice, secret).await;
        let first = next_delivery(&mut a).await;
        assert_eq!(first.str("from"), bob);
        assert_eq!(first.str("id"), ack.str("msgid"));
        assert_eq!(subject(&first), "First, over TMTP");
        assert!(first.data.ends_with(b"hello from bob"));
        a.ack(first.str("id")).await.unwrap();
        let second = next_delivery(&mut a).await;
        assert_eq!(subject(&second), "Second, over IMMP");
        assert!(second.data.ends_with(b"hello again"));
        a.ack(second.str("id")).await.unwrap();
        a.quit().await.unwrap();
    }

    // Both messages are still in Alice's INBOX for IMMP.
    let mut reader = login(&gw, "alice@a.test", "alice-pw").await;
    send(&mut reader, "MBOX CHECK /inbox\n").await;
    let check = line(&mut reader).await;
    assert!(check.contains("t=2"), "{check}");
    b.quit().await.unwrap();
    gw.stop();
    // And gone from both nodes' queues, where only notices of the nodes' logins are left.
    only_login_notices(&queue_left(dir.path(), &alice, &laptop).await);
    only_login_notices(&queue_left(dir.path(), &alice, &phone).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_message_comes_again_after_the_timeout_and_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 1);
    let mut a = connect(&gw).await;
    let (alice, alice_node) = a.register("laptop", Some("alice-alias")).await.unwrap();
    let mut b = connect(&gw).await;
    let (bob, bob_node) = b.register("desk", None).await.unwrap();
    b.post("p1", &[&alice], "resent", "body").await.unwrap();
    let first = next_delivery(&mut a).await;
    // Not acknowledged: the same message again after the ack timeout.
    let again = next_delivery(&mut a).await;
    assert_eq!(again.str("id"), first.str("id"));
    assert_eq!(again.data, first.data);
    // A crash: the message was never acknowledged, so it comes again after the restart.
    gw.kill();
    let gw = Gateway::start(dir.path(), Some(&config(dir.path(), 1)));
    let mut a = node(&gw, &alice, &alice_node).await;
    let after = next_delivery(&mut a).await;
    assert_eq!(after.str("id"), first.str("id"));
    a.ack(after.str("id")).await.unwrap();
    // Acknowledged, then a crash: it is not sent again; the next post is.
    let mut b = node(&gw, &bob, &bob_node).await;
    b.post("p2", &[&alice], "next", "body").await.unwrap();
    let next = next_delivery(&mut a).await;
    assert_eq!(subject(&next), "next");
    assert!(
        next.str("id") > first.str("id"),
        "ids increase across restarts"
    );
    a.ack(next.str("id")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.kill();
    only_login_notices(&queue_left(dir.path(), &alice, &alice_node).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_refuses_register_and_a_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "a.test", "");
    let gw = Gateway::start(dir.path(), Some(&config));
    let mut c = connect(&gw).await;
    c.send(&json!({"op": 1, "newnode": "x", "newalias": "_"}), &[])
        .await
        .unwrap();
    let quit = c.recv().await.unwrap().unwrap();
    assert_eq!(quit.op(), "quit");
    assert_eq!(quit.str("error"), "registration is closed");
    assert!(c.recv().await.unwrap().is_none(), "closed after quit");

    gw.add_user("alice@a.test", "alice-pw");
    let (uid, _) = gw.add_tmtp_node("alice@a.test", "laptop");
    let (_, other) = gw.add_tmtp_node("alice@a.test", "phone");
    let mut c = connect(&gw).await;
    let wrong = other.chars().rev().collect::<String>();
    c.send(&json!({"op": 2, "uid": uid, "node": wrong}), &[])
        .await
        .unwrap();
    let quit = c.recv().await.unwrap().unwrap();
    assert_eq!(quit.str("error"), "login failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_receive_commands_speak_tmtp() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 30);
    gw.add_user("alice@a.test", "alice-pw");
    gw.add_user("bob@a.test", "bob-pw");
    let (alice, alice_node) = gw.add_tmtp_node("alice@a.test", "laptop");
    let (bob, bob_node) = gw.add_tmtp_node("bob@a.test", "desk");
    let config = gw.config.to_str().unwrap();
    let server = gw.addr("tmtp.listen");
    let sent = run_ok(
        &[
            "send",
            "--protocol",
            "tmtp",
            "--server",
            server,
            "--tls-name",
            "localhost",
            "--login",
            &bob,
            "--to",
            &alice,
            "--subject",
            "From the CLI",
            "--body",
            "typed text",
            "--config",
            config,
        ],
        Some(&format!("{bob_node}\n")),
        &gw.dir,
    );
    let ack: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(ack["op"], "ack");
    let msgid = ack["msgid"].as_str().unwrap().to_owned();
    let receive = |keep: bool| {
        let mut args = vec![
            "receive",
            "--protocol",
            "tmtp",
            "--server",
            server,
            "--tls-name",
            "localhost",
            "--login",
            &alice,
            "--config",
            config,
        ];
        if keep {
            args.push("--keep");
        }
        let out = run_ok(&args, Some(&format!("{alice_node}\n")), &gw.dir);
        String::from_utf8(out.stdout).unwrap()
    };
    // --keep acknowledges nothing: the message is there again.
    for keep in [true, false] {
        let text = receive(keep);
        let delivery = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|m| m["head"]["op"] == "delivery")
            .unwrap_or_else(|| panic!("no delivery in {text}"));
        assert_eq!(delivery["head"]["id"], msgid.as_str());
        assert!(delivery["data"].as_str().unwrap().contains("From the CLI"));
        assert!(delivery["data"].as_str().unwrap().ends_with("typed text"));
    }
    let text = receive(false);
    assert!(!text.contains("\"delivery\""), "acknowledged: {text}");
}

/// IMMP DELIVER from `from` (logged in with `password`) to `to`, accepted.
async fn immp_deliver(gw: &Gateway, from: &str, password: &str, to: &str, subject: &str) {
    let mut immp = login(gw, from, password).await;
    send(
        &mut immp,
        &format!(
            "DELIVER TO {to}\nDATA NAME subject\n{subject}\n\n\nDATA NAME body LENGTH 4 +CONTENT\nbody\nDONE\n"
        ),
    )
    .await;
    for expected in ["270", "271", "272", "271", "272", "273"] {
        let l = line(&mut immp).await;
        assert!(l.starts_with(expected), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_reach_the_nodes_unless_the_account_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 30);
    for (a, p) in [
        ("alice@a.test", "alice-pw"),
        ("bob@a.test", "bob-pw"),
        ("carol@a.test", "carol-pw"),
    ] {
        gw.add_user(a, p);
    }
    let (alice, alice_node) = gw.add_tmtp_node("alice@a.test", "laptop");
    let (bob, bob_node) = gw.add_tmtp_node("bob@a.test", "desk");
    // Carol is no member: by default her mail stays in the INBOX and skips Alice's nodes.
    immp_deliver(
        &gw,
        "carol@a.test",
        "carol-pw",
        "alice@a.test",
        "from a stranger",
    )
    .await;
    let mut b = node(&gw, &bob, &bob_node).await;
    b.post("p1", &[&alice], "from a member", "hi")
        .await
        .unwrap();
    let mut a = node(&gw, &alice, &alice_node).await;
    let first = next_delivery(&mut a).await;
    assert_eq!(subject(&first), "from a member");
    a.ack(first.str("id")).await.unwrap();
    // Alice lets anyone reach her nodes: Carol's next mail comes, from her address.
    let config = gw.config.to_str().unwrap();
    run_ok(
        &[
            "user",
            "node",
            "reach",
            "alice@a.test",
            "anyone",
            "--config",
            config,
        ],
        None,
        &gw.dir,
    );
    immp_deliver(
        &gw,
        "carol@a.test",
        "carol-pw",
        "alice@a.test",
        "welcome now",
    )
    .await;
    let next = next_delivery(&mut a).await;
    assert_eq!(subject(&next), "welcome now");
    assert_eq!(next.str("from"), "carol@a.test");
    // Both of Carol's messages are in the INBOX for IMMP.
    let mut reader = login(&gw, "alice@a.test", "alice-pw").await;
    send(&mut reader, "MBOX CHECK /inbox\n").await;
    let check = line(&mut reader).await;
    assert!(check.contains("t=3"), "{check}");
}
