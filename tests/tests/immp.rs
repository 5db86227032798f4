//! IMMP end to end against the real program: in-band TLS upgrade, AUTH SECRET, pushes arriving
//! live on a second connection, and one account across protocols (IMMP in, MMTP out and back).

mod support;

use mailgate_core::Address;
use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
use support::immp::{line, send, upgrade, Conn};
use support::{config_with, Gateway};

/// Connect, upgrade to TLS, authenticate with the shared secret.
async fn login(gw: &Gateway, account: &str, password: &str) -> Conn {
    let tcp = tokio::net::TcpStream::connect(gw.addr("immp.listen"))
        .await
        .unwrap();
    let mut c = upgrade(gw, tcp, "UPGRADE TLS3").await;
    send(&mut c, &format!("AUTH SECRET {account}\n")).await;
    assert!(line(&mut c).await.starts_with("302 "));
    let nonces = line(&mut c).await;
    let (n1, n2) = nonces
        .strip_prefix("303 n1=")
        .and_then(|r| r.split_once(" n2="))
        .unwrap();
    let h = mailgate_immp::auth::derive_h(&Address::parse_imid(account).unwrap(), password);
    let response = mailgate_immp::auth::response(&h, n1, n2);
    send(&mut c, &format!("AUTH RESPONSE {response}\n")).await;
    assert_eq!(
        line(&mut c).await,
        format!("210 Authentication accepted for {account}")
    );
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_arrive_live_on_another_connection_and_mail_crosses_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), Some(&config_with(dir.path(), "a.test", "")));
    gw.add_user("alice@a.test", "alice-pw");
    gw.add_user("bob@a.test", "bob-pw");

    let mut alice = login(&gw, "alice@a.test", "alice-pw").await;
    let mut bob = login(&gw, "bob@a.test", "bob-pw").await;
    send(&mut alice, "PUBLISH news \"Alice's news\"\n").await;
    assert_eq!(line(&mut alice).await, "260 Node news@a.test published.");
    send(&mut bob, "SUBSCRIBE TO news@a.test\n").await;
    assert!(line(&mut bob).await.starts_with("380 "));
    assert_eq!(line(&mut bob).await, "280 Subscribed to: Alice's news");

    // Alice pushes; Bob's idle connection shows it at once.
    send(
        &mut alice,
        "AS n PUBLISH TO news\nAS n DATA NAME alert LENGTH 5\nhello\n",
    )
    .await;
    assert_eq!(line(&mut alice).await, "n: 275 Ready for the push DATA.");
    assert_eq!(line(&mut alice).await, "n: 271 alert Saving part");
    assert!(line(&mut alice)
        .await
        .ends_with("Push delivered to 1 recipients."));
    let push = line(&mut bob).await;
    assert!(push.starts_with("150 PUSH {"), "{push}");
    assert!(push.contains("\"from\":\"news@a.test\"") && push.contains("\"data\":\"hello\""));
    send(&mut bob, "MBOX CHECK /push\n").await;
    assert_eq!(line(&mut bob).await, "240 /push::* u=1 t=1");

    // IMMP in → MMTP out: Alice delivers to Bob; Bob reads it over MMTP.
    send(
        &mut alice,
        "DELIVER TO bob@a.test +IMPORTANT\nDATA NAME subject\nCross-protocol\n\n\nDATA NAME body LENGTH 11 +CONTENT\nhello world\nDONE\n",
    )
    .await;
    for expected in ["270", "271", "272", "271", "272", "273"] {
        let l = line(&mut alice).await;
        assert!(l.starts_with(expected), "{l}");
    }
    let port = gw.addr("mmtp.tls_listen").rsplit_once(':').unwrap().1;
    let tls = mailgate::tls::connector(&gw.dir.join("data/tls/cert.pem"), "localhost").unwrap();
    let mut mmtp = MmtpClient::connect(&format!("localhost:{port}"), Some(tls))
        .await
        .unwrap();
    let bob_addr = Address::parse_mmtp("(bob)%(a.test)").unwrap();
    mmtp.auth(&bob_addr, "bob-pw").await.unwrap();
    let got = mmtp.receive(&bob_addr, None).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"]["subject"], "Cross-protocol");
    assert_eq!(got[0]["content"]["body"], "hello world");
    assert_eq!(got[0]["sender"], "(alice)%(a.test)");

    // MMTP in (an unauthenticated peer) → IMMP out.
    let mut mmtp = MmtpClient::connect(gw.addr("mmtp.listen"), None)
        .await
        .unwrap();
    let difficulty = mmtp.difficulty();
    let b = PacketBuilder::new(
        Address::parse_mmtp("(carol)%(elsewhere.test)").unwrap(),
        Address::parse_mmtp("(alice)%(a.test)").unwrap(),
        "From MMTP",
        "mmtp body",
    );
    let built = tokio::task::spawn_blocking(move || b.build(difficulty))
        .await
        .unwrap()
        .unwrap();
    mmtp.send(&built.text).await.unwrap();
    send(&mut alice, "MBOX INDEX /inbox +JSON\n").await;
    let index = line(&mut alice).await;
    assert!(index.contains("\"subject\":\"From MMTP\""), "{index}");
    assert_eq!(line(&mut alice).await, "250 1 messages");
}

/// `mailgate send|receive --protocol immp` against the real program.
#[test]
fn cli_send_and_receive_over_immp() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), Some(&config_with(dir.path(), "a.test", "")));
    gw.add_user("alice@a.test", "alice-pw");
    gw.add_user("bob@a.test", "bob-pw");
    let port = gw
        .addr("immp.listen")
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let server = format!("localhost:{port}");
    let ca = gw.dir.join("data/tls/cert.pem");
    let ca = ca.to_str().unwrap();
    let out = support::run_ok(
        &[
            "send",
            "--protocol",
            "immp",
            "--server",
            &server,
            "--ca",
            ca,
            "--login",
            "alice@a.test",
            "--from",
            "alice@a.test",
            "--to",
            "bob@a.test",
            "--subject",
            "via the CLI",
            "--body",
            "hello",
            "--tag",
            "priority=high",
        ],
        Some("alice-pw\n"),
        dir.path(),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Message accepted"));
    let out = support::run_ok(
        &[
            "receive",
            "--protocol",
            "immp",
            "--server",
            &server,
            "--ca",
            ca,
            "--login",
            "bob@a.test",
            "--email",
            "bob@a.test",
        ],
        Some("bob-pw\n"),
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"subject\":\"via the CLI\"") && text.contains("\"importance\":\"high\""),
        "{text}"
    );
}
