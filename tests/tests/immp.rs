//! IMMP end to end against the real program: in-band TLS upgrade, AUTH SECRET, pushes arriving
//! live on a second connection, and one account across protocols (IMMP in, MMTP out and back).

mod support;

use mailgate_core::Address;
use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
use support::immp::{line, login, login_on, send};
use support::{config_with, Gateway};

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
    let tls = mailgate::tls::connector(&gw.dir.join("data/tls/cert.pem"), "localhost").unwrap();
    let mut mmtp = MmtpClient::connect(gw.addr("mmtp.tls_listen"), Some(tls))
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
    // By address (no name look-up): the TLS name defaults to the gateway's first domain.
    let server = gw.addr("immp.listen").to_owned();
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

/// `MBOX INDEX` lists a page at a time (`immp.index_page`) and says where to go on; a reply of
/// several megabytes over TLS reaches a slow reader whole, its last line included (every reply
/// is flushed, not left in the TLS buffer until the next one).
#[tokio::test(flavor = "multi_thread")]
async fn index_pages_and_large_replies_reach_a_slow_reader_whole() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        "localhost",
        "hashcash_difficulty = 1\nrequests_per_sec = 0.0",
    )
    .replace("[immp]\n", "[immp]\nindex_page = 150\n");
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("alice@localhost", "alice-pw");
    // 300 messages with 40 KB subjects: a page of 150 is a ~6 MB reply, more than the
    // kernel buffers between the two ends (the reader's receive buffer is kept small).
    let mut mmtp = MmtpClient::connect(gw.addr("mmtp.listen"), None)
        .await
        .unwrap();
    let subject = "s".repeat(40_000);
    for i in 0..300 {
        let b = PacketBuilder::new(
            Address::parse_mmtp("(carol)%(elsewhere.test)").unwrap(),
            Address::parse_mmtp("(alice)%(localhost)").unwrap(),
            &format!("{i:03} {subject}"),
            "x",
        );
        let built = b.build_with(1, 1).unwrap();
        mmtp.send(&built.text).await.unwrap();
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = socket
        .connect(gw.addr("immp.listen").parse().unwrap())
        .await
        .unwrap();
    let mut c = login_on(&gw, tcp, "alice@localhost", "alice-pw").await;
    let mut seen = Vec::new();
    let mut next = "MBOX INDEX /inbox +JSON".to_owned();
    let mut pages = 0;
    loop {
        send(&mut c, &format!("{next}\n")).await;
        pages += 1;
        // A slow reader: 64 KiB at a time with pauses, so the socket fills up.
        let mut text = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let last = loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(20), c.read(&mut buf))
                .await
                .expect("the rest of the reply in time (flushed)")
                .unwrap();
            assert!(n > 0, "connection closed mid-reply");
            text.extend_from_slice(&buf[..n]);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let s = String::from_utf8_lossy(&text);
            if let Some(l) = s
                .lines()
                .find(|l| l.starts_with("250 ") && l.contains(" messages"))
            {
                break l.to_owned();
            }
        };
        let text = String::from_utf8(text).unwrap();
        for l in text.lines().filter(|l| l.starts_with("250-")) {
            let v: serde_json::Value = serde_json::from_str(&l[4..]).unwrap();
            seen.push(v["subject"].as_str().unwrap()[..3].to_owned());
        }
        match last.split_once("; more after #") {
            Some((count, id)) => {
                assert_eq!(count, "250 150 messages");
                next = format!("MBOX INDEX /inbox#{id} +JSON");
            }
            None => {
                assert_eq!(last, "250 150 messages");
                break;
            }
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 2);
    let want: Vec<String> = (0..300).map(|i| format!("{i:03}")).collect();
    assert_eq!(seen, want, "every message once, in order, over the pages");
    // The counts come from the store's kept totals.
    send(&mut c, "MBOX CHECK /inbox\n").await;
    assert_eq!(line(&mut c).await, "240 /inbox::* u=300 t=300");
}
