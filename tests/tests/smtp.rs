//! The SMTP front-end (inbound MX) end to end: a real `mailgate serve`, a bare SMTP client.
//! Mail for local accounts is accepted with `250` only once stored (it survives SIGKILL), is
//! read through MMTP and IMMP, keeps its attachment, and is dot-unstuffed; relaying, unknown
//! users, forged local senders, oversize mail and bad sequences are refused with the right
//! codes; pipelined commands get their replies in order; STARTTLS starts the session over;
//! SPF, DKIM and DMARC are checked against a real DNS server, a DMARC `p=reject` failure
//! refused at `DATA`.

mod support;

use mailgate_core::Address;
use mailgate_mmtp::client::MmtpClient;
use support::net::{dns_server, txt};
use support::smtp::Smtp;
use support::{config_with, config_with_dns, Gateway};

fn gateway(dir: &std::path::Path) -> Gateway {
    let config = config_with(dir, "a.test", "requests_per_sec = 0.0");
    let gw = Gateway::start(dir, Some(&config));
    gw.add_user("bob@a.test", "bob-pw");
    gw
}

async fn ehlo(gw: &Gateway) -> Smtp {
    let (mut s, greeting) = Smtp::connect(gw.addr("smtp.listen")).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    assert!(greeting.text().contains("a.test ESMTP"), "{greeting:?}");
    let r = s.cmd("EHLO client.b.test").await;
    assert_eq!(r.code, 250, "{r:?}");
    s
}

/// A session in a transaction from carol@b.test to bob@a.test (MAIL and RCPT accepted).
async fn in_transaction(gw: &Gateway) -> Smtp {
    let mut s = ehlo(gw).await;
    begin(&mut s).await;
    s
}

/// MAIL from carol@b.test and RCPT to bob@a.test, both accepted.
async fn begin(s: &mut Smtp) {
    assert_eq!(s.cmd("MAIL FROM:<carol@b.test>").await.code, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@a.test>").await.code, 250);
}

/// bob's mail as MMTP RECEIVE returns it (and removes it).
async fn mmtp_inbox(gw: &Gateway) -> Vec<serde_json::Value> {
    let mut c = MmtpClient::connect(gw.addr("mmtp.tls_listen"), Some(gw.connector()))
        .await
        .unwrap();
    let bob = Address::parse_any("bob@a.test").unwrap();
    c.auth(&bob, "bob-pw").await.unwrap();
    c.receive(&bob, None).await.unwrap()
}

const MULTIPART: &str = "From: Carol <carol@b.test>\r\nTo: bob@a.test\r\nSubject: Quarterly report\r\n\
Message-ID: <q1@b.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"xx\"\r\n\r\n\
--xx\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob,\r\n.hidden dot line\r\n\r\n\
--xx\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--xx--";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_mail_is_durable_and_read_through_other_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let mut s = ehlo(&gw).await;
    let r = s.send("carol@b.test", &["bob@a.test"], MULTIPART).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text().starts_with("2.0.0"), "{r:?}");
    // 250 meant stored: a SIGKILL right after loses nothing.
    gw.kill();
    // The original bytes are kept, with this server's trace field in front.
    let db = mailgate_core::store::StoreLocation::Sqlite(dir.path().join("data/mailgate.db"));
    let store = db
        .open(std::sync::Arc::new(mailgate_core::Metrics::new()), 1)
        .await
        .unwrap();
    let bob = store
        .account(&Address::parse_any("bob@a.test").unwrap())
        .await
        .unwrap()
        .unwrap();
    let entries = store
        .entries(bob.id, "INBOX", Default::default())
        .await
        .unwrap();
    let stored = store.message(entries[0].message).await.unwrap().unwrap();
    let wire = stored.wire.expect("the wire form is kept");
    let text = String::from_utf8_lossy(&wire.bytes);
    // The authentication results on top (RFC 8601 §5), then the trace field.
    let (results, rest) = text.split_once("\r\n").unwrap();
    assert!(
        results.starts_with("Authentication-Results: a.test; spf=none"),
        "{text}"
    );
    assert!(
        rest.starts_with("Received: from client.b.test ([127.0.0.1])\r\n\tby a.test (mailgate) with ESMTP;\r\n\t"),
        "{text}"
    );
    assert!(
        text.ends_with(MULTIPART) || text.ends_with(&format!("{MULTIPART}\r\n")),
        "{text}"
    );
    store.close().await.unwrap();
    drop(store);
    let gw = Gateway::start(
        dir.path(),
        Some(&std::fs::read_to_string(dir.path().join("mailgate.toml")).unwrap()),
    );
    let got = mmtp_inbox(&gw).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"]["subject"], "Quarterly report");
    let body = got[0]["content"]["body"].as_str().unwrap();
    assert!(
        body.contains("Hello Bob,") && body.contains("\n.hidden dot line"),
        "{body:?}"
    );
    assert_eq!(got[0]["sender"], "(carol)%(b.test)");
    let text = got[0].to_string();
    assert!(text.contains("r.pdf"), "the attachment is a part: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_offers_the_profile_and_starttls_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let (mut s, _) = Smtp::connect(gw.addr("smtp.listen")).await;
    let r = s.cmd("EHLO client.b.test").await;
    for keyword in [
        "PIPELINING",
        "SIZE ",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "STARTTLS",
    ] {
        assert!(
            r.lines.iter().any(|l| l.starts_with(keyword)),
            "{keyword}: {r:?}"
        );
    }
    assert!(
        !r.lines.iter().any(|l| l.starts_with("AUTH")),
        "no AUTH on the MX: {r:?}"
    );
    // STARTTLS waits for a transaction to end (as Postfix does), and what was said before it
    // does not survive it.
    assert_eq!(s.cmd("MAIL FROM:<carol@b.test>").await.code, 250);
    assert_eq!(s.cmd("STARTTLS").await.code, 503);
    assert_eq!(s.cmd("RSET").await.code, 250);
    let mut s = s.starttls(gw.connector()).await;
    assert_eq!(
        s.cmd("MAIL FROM:<carol@b.test>").await.code,
        503,
        "EHLO again first"
    );
    let r = s.cmd("EHLO client.b.test").await;
    assert!(!r.lines.iter().any(|l| l == "STARTTLS"), "{r:?}");
    assert_eq!(s.cmd("STARTTLS").await.code, 503);
    let r = s
        .send(
            "carol@b.test",
            &["bob@a.test"],
            "Subject: over TLS\r\n\r\nhi",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(s.cmd("QUIT").await.code, 221);
    let got = mmtp_inbox(&gw).await;
    assert_eq!(got[0]["content"]["subject"], "over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_with_the_right_codes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let mut s = ehlo(&gw).await;
    let cases: &[(&str, u16, &str)] = &[
        ("RCPT TO:<bob@a.test>", 503, "5.5.1"),
        ("DATA", 503, "5.5.1"),
        ("MAIL FROM:<bob@a.test>", 550, "5.7.1"),
        ("MAIL FROM:<carol@b.test> SIZE=999999999999", 552, "5.3.4"),
        ("MAIL FROM:<carol@b.test> FROB=1", 555, "5.5.4"),
        ("MAIL FROM:carol@b.test", 501, "5.5.4"),
        ("FROB", 500, "5.5.1"),
        ("MAIL FROM:<carol@b.test>", 250, "2.1.0"),
        ("MAIL FROM:<carol@b.test>", 503, "5.5.1"),
        ("RCPT TO:<dave@elsewhere.test>", 550, "5.7.1"),
        ("RCPT TO:<nobody@a.test>", 550, "5.1.1"),
        // No postmaster account and no [smtp] postmaster: an unknown user like any other.
        ("RCPT TO:<postmaster@a.test>", 550, "5.1.1"),
        ("DATA", 554, "5.5.1"),
        ("RSET", 250, "2.0.0"),
        ("VRFY bob", 252, "2.5.2"),
        ("NOOP", 250, "2.0.0"),
    ];
    for (line, code, status) in cases {
        let r = s.cmd(line).await;
        assert_eq!(r.code, *code, "{line}: {r:?}");
        assert!(r.text().starts_with(status), "{line}: {r:?}");
    }
    assert!(mmtp_inbox(&gw).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let mut s = ehlo(&gw).await;
    s.write(
        b"MAIL FROM:<carol@b.test>\r\nRCPT TO:<nobody@a.test>\r\nRCPT TO:<bob@a.test>\r\n\
          RCPT TO:<bob+Work@a.test>\r\nDATA\r\n",
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(s.reply().await.code);
    }
    assert_eq!(got, vec![250, 550, 250, 250, 354]);
    s.write(b"Subject: piped\r\n\r\n..two dots\r\n.\r\nNOOP\r\n")
        .await;
    assert_eq!(s.reply().await.code, 250);
    assert_eq!(s.reply().await.code, 250);
    // One copy per recipient address: bob+Work names no folder bob has, so it is INBOX too.
    let got = mmtp_inbox(&gw).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for m in &got {
        assert_eq!(
            m["content"]["body"].as_str().unwrap().trim_end(),
            ".two dots"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_overlong_input_is_refused_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "a.test", "requests_per_sec = 0.0")
        .replace("domains = [", "max_message_size = 1000\ndomains = [");
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@a.test", "bob-pw");
    let mut s = ehlo(&gw).await;
    let long = format!("NOOP {}", "x".repeat(5000));
    assert_eq!(s.cmd(&long).await.code, 500);
    let big = format!("Subject: big\r\n\r\n{}", "y\r\n".repeat(600));
    let r = s.send("carol@b.test", &["bob@a.test"], &big).await;
    assert_eq!(r.code, 552, "{r:?}");
    let r = s
        .send("carol@b.test", &["bob@a.test"], "Subject: small\r\n\r\nok")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // Invalid UTF-8 in a command, then too many errors: the server gives up.
    s.write(b"\xff\xfe\r\n").await;
    assert_eq!(s.reply().await.code, 500);
    let mut last = 0;
    for _ in 0..25 {
        if !s.try_write(b"FROB\r\n").await {
            break;
        }
        match s.read_reply().await {
            Some(r) => last = r.code,
            None => break,
        }
    }
    assert_eq!(last, 421);
    assert_eq!(mmtp_inbox(&gw).await.len(), 1);
}

/// CHUNKING (RFC 3030): a message in BDAT chunks is kept byte for byte (no dot-unstuffing, a
/// chunk may split a CRLF, octets that look like commands are message text); a chunk that takes
/// the message over the limit fails the transaction, chunks pipelined after it are read and
/// refused, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_mail_is_kept_exactly_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "a.test", "requests_per_sec = 0.0")
        .replace("domains = [", "max_message_size = 1000\ndomains = [");
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@a.test", "bob-pw");
    let mut s = ehlo(&gw).await;
    let offered = s.cmd("EHLO client.b.test").await;
    assert!(offered.text().contains("CHUNKING"), "{offered:?}");

    let chunks: [&[u8]; 3] = [
        b"Subject: chunked\r\n\r\nfirst line\r",
        b"\n..two dots stay\r\n.\r\nQUIT\r\n",
        b"last line\r\n",
    ];
    begin(&mut s).await;
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i == chunks.len() - 1 { " LAST" } else { "" };
        s.write(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes())
            .await;
        s.write(chunk).await;
        let r = s.reply().await;
        assert_eq!(r.code, 250, "chunk {i}: {r:?}");
        if last.is_empty() {
            assert_eq!(r.text(), format!("2.0.0 {} octets received", chunk.len()));
        } else {
            assert!(r.text().contains("accepted"), "{r:?}");
        }
    }

    // Over the limit in the second chunk; the third, pipelined, is read and refused.
    let big = "y".repeat(600);
    s.write(
        format!(
            "MAIL FROM:<carol@b.test>\r\nRCPT TO:<bob@a.test>\r\nBDAT 600\r\n{big}\
             BDAT 600\r\n{big}BDAT 5 LAST\r\nhello"
        )
        .as_bytes(),
    )
    .await;
    let codes = [
        s.reply().await.code,
        s.reply().await.code,
        s.reply().await.code,
        s.reply().await.code,
        s.reply().await.code,
    ];
    assert_eq!(codes, [250, 250, 250, 552, 503]);
    assert_eq!(s.cmd("NOOP").await.code, 250);
    // DATA and RCPT do not mix into a chunked message; RSET drops it.
    begin(&mut s).await;
    s.write(b"BDAT 3\r\nabc").await;
    assert_eq!(s.reply().await.code, 250);
    assert_eq!(s.cmd("DATA").await.code, 503);
    assert_eq!(s.cmd("RCPT TO:<bob@a.test>").await.code, 503);
    assert_eq!(s.cmd("RSET").await.code, 250);
    s.write(b"BDAT 1 LAST\r\nz").await;
    assert_eq!(s.reply().await.code, 503);
    // A size that cannot be read ends the session: what follows is not known to be commands.
    s.write(b"BDAT lots\r\n").await;
    assert_eq!(s.reply().await.code, 501);
    assert!(s.read_reply().await.is_none());

    let got = mmtp_inbox(&gw).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"]["subject"], "chunked");
    let body = got[0]["content"]["body"].as_str().unwrap();
    assert!(
        body.starts_with("first line\r\n..two dots stay\r\n.\r\nQUIT\r\nlast line"),
        "{body:?}"
    );
}

/// Peers that stall in the middle of large messages hold their bytes in the shared body
/// budget; another peer's message that does not fit gets a temporary failure (451 4.3.2, the
/// client retries), and fits once the stalled peers are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_bodies_stay_within_the_shared_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "a.test", "requests_per_sec = 0.0")
        .replace("domains = [", "max_message_size = 209715\ndomains = [")
        .replace(
            "[admin]",
            "[limits]\nbody_budget_bytes = 1048576\nbody_budget_wait_ms = 200\n[admin]",
        );
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@a.test", "bob-pw");
    let line = format!("{}\r\n", "z".repeat(998));
    // Six peers announce a 209 KB chunk each (1.25 MB together) and send none of it: they
    // hold nothing, so a message that fits the budget is taken meanwhile.
    let mut announcers = Vec::new();
    for _ in 0..6 {
        let mut a = in_transaction(&gw).await;
        a.write(b"BDAT 209000 LAST\r\n").await;
        announcers.push(a);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let body = format!("Subject: fits\r\n\r\n{}", line.repeat(100));
    let mut s = ehlo(&gw).await;
    let r = s
        .send("carol@b.test", &["bob@a.test"], body.trim_end())
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    drop((announcers, s));

    // Seven peers each stall with 199 KB of a message: about 950 KB of the 1 MiB held.
    let mut stallers = Vec::new();
    for _ in 0..7 {
        let mut staller = in_transaction(&gw).await;
        assert_eq!(staller.cmd("DATA").await.code, 354);
        staller.write(line.repeat(199).as_bytes()).await;
        stallers.push(staller);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let body = format!("Subject: fits later\r\n\r\n{}", line.repeat(100));
    let mut s = ehlo(&gw).await;
    let r = s
        .send("carol@b.test", &["bob@a.test"], body.trim_end())
        .await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text().starts_with("4.3.2"), "{r:?}");
    drop(stallers);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = s
        .send("carol@b.test", &["bob@a.test"], body.trim_end())
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(mmtp_inbox(&gw).await.len(), 2);
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Submission (587): no AUTH before TLS, AUTH PLAIN after it with the same failed-login
/// limits, then mail as oneself only, to anywhere; the MX port offers no AUTH at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_authenticates_after_tls_and_sends_as_oneself() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    gw.add_user("alice@a.test", "alice-pw");
    // The MX listener: no AUTH.
    let mut mx = ehlo(&gw).await;
    let r = mx
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@a.test\0alice-pw")))
        .await;
    assert_eq!(r.code, 503, "{r:?}");
    // Submission before TLS: STARTTLS offered, AUTH neither offered nor taken, MAIL refused.
    let (mut s, greeting) = Smtp::connect(gw.addr("smtp.submission_listen")).await;
    assert_eq!(greeting.code, 220);
    let r = s.cmd("EHLO client").await;
    assert!(r.lines.iter().any(|l| l == "STARTTLS"), "{r:?}");
    assert!(!r.lines.iter().any(|l| l.starts_with("AUTH")), "{r:?}");
    let r = s
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@a.test\0alice-pw")))
        .await;
    assert_eq!(
        (r.code, r.text().starts_with("5.7.11")),
        (538, true),
        "{r:?}"
    );
    assert_eq!(s.cmd("MAIL FROM:<alice@a.test>").await.code, 530);
    let mut s = s.starttls(gw.connector()).await;
    let r = s.cmd("EHLO client").await;
    assert!(r.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{r:?}");
    assert_eq!(s.cmd("MAIL FROM:<alice@a.test>").await.code, 530);
    let r = s.cmd("AUTH CRAM-MD5").await;
    assert_eq!(r.code, 504, "{r:?}");
    let r = s
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@a.test\0wrong")))
        .await;
    assert_eq!(
        (r.code, r.text().starts_with("5.7.8")),
        (535, true),
        "{r:?}"
    );
    // PLAIN without an initial response gets an empty challenge; "*" cancels.
    let r = s.cmd("AUTH PLAIN").await;
    assert_eq!(r.code, 334, "{r:?}");
    assert_eq!(s.cmd("*").await.code, 501);
    let r = s
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@a.test\0alice-pw")))
        .await;
    assert_eq!(r.code, 235, "{r:?}");
    assert_eq!(s.cmd("AUTH PLAIN =").await.code, 503, "once only");
    let r = s.cmd("MAIL FROM:<bob@a.test>").await;
    assert_eq!(r.code, 553, "not as someone else: {r:?}");
    // As oneself (a folder address of one's own is oneself), to a remote and a local user.
    assert_eq!(s.cmd("MAIL FROM:<alice@a.test>").await.code, 250);
    assert_eq!(
        s.cmd("RCPT TO:<dave@far.test>").await.code,
        250,
        "relaying for a user"
    );
    assert_eq!(s.cmd("RCPT TO:<nobody@a.test>").await.code, 550);
    assert_eq!(s.cmd("RCPT TO:<bob@a.test>").await.code, 250);
    assert_eq!(s.cmd("DATA").await.code, 354);
    s.write(b"Subject: submitted\r\n\r\nfrom alice\r\n.\r\n")
        .await;
    assert_eq!(s.reply().await.code, 250);
    let inbox = mmtp_inbox(&gw).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    // The remote copy waits in the relay queue.
    let config = gw.config.to_str().unwrap().to_owned();
    let out = support::run_ok(&["queue", "list", "--config", &config], None, &gw.dir);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dave@far.test"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Three wrong passwords on one connection close it.
    let (s, _) = Smtp::connect(gw.addr("smtp.submission_listen")).await;
    let mut s = s.starttls(gw.connector()).await;
    s.cmd("EHLO client").await;
    for _ in 0..2 {
        assert_eq!(
            s.cmd(&format!("AUTH PLAIN {}", b64("\0alice@a.test\0x")))
                .await
                .code,
            535
        );
    }
    s.write(format!("AUTH PLAIN {}\r\n", b64("\0alice@a.test\0x")).as_bytes())
        .await;
    assert_eq!(s.reply().await.code, 535);
    assert_eq!(s.reply().await.code, 421);
    assert!(s.read_reply().await.is_none(), "closed");
}

/// Submissions (465): TLS from the first byte, AUTH LOGIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_submission_with_auth_login() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    gw.add_user("alice@a.test", "alice-pw");
    let (mut s, greeting) =
        Smtp::connect_tls(gw.addr("smtp.submissions_listen"), gw.connector()).await;
    assert_eq!(greeting.code, 220);
    let r = s.cmd("EHLO client").await;
    assert!(!r.lines.iter().any(|l| l == "STARTTLS"), "{r:?}");
    assert!(r.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{r:?}");
    let r = s.cmd("AUTH LOGIN").await;
    assert_eq!((r.code, r.text()), (334, "VXNlcm5hbWU6".to_owned()));
    let r = s.cmd(&b64("alice@a.test")).await;
    assert_eq!((r.code, r.text()), (334, "UGFzc3dvcmQ6".to_owned()));
    assert_eq!(s.cmd(&b64("alice-pw")).await.code, 235);
    let r = s
        .send(
            "alice@a.test",
            &["bob@a.test"],
            "Subject: over 465\r\n\r\nhi",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let inbox = mmtp_inbox(&gw).await;
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].to_string().contains("over 465"), "{:?}", inbox[0]);
}

/// `From:` and `Subject:` over a short body.
fn message(from: &str, subject: &str) -> String {
    format!("From: {from}\r\nTo: bob@a.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x.test>\r\n\r\nhello\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_mail_is_checked_with_spf_dkim_and_dmarc() {
    let dir = tempfile::tempdir().unwrap();
    // signed.test signs with DKIM; its SPF record names no server at all.
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let public = mailgate_smtp::dkim::generate(&keys, "signed.test").unwrap();
    let dkim = mailgate_smtp::dkim::DkimKeys::new(&keys, "s1");
    use base64::Engine;
    let dkim_value = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(&public)
    );
    let dns = dns_server(vec![
        txt("spf.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.spf.test", "v=DMARC1; p=reject"),
        txt("forger.test", "v=spf1 -all"),
        txt("_dmarc.forger.test", "v=DMARC1; p=reject"),
        txt("signed.test", "v=spf1 -all"),
        txt("_dmarc.signed.test", "v=DMARC1; p=reject"),
        txt("s1._domainkey.signed.test", &dkim_value),
        txt("lax.test", "v=spf1 -all"),
        txt("_dmarc.lax.test", "v=DMARC1; p=none"),
    ])
    .await;
    let config = config_with_dns(dir.path(), "a.test", "requests_per_sec = 0.0", dns);
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@a.test", "bob-pw");
    let mut s = ehlo(&gw).await;

    // SPF passes for 127.0.0.1 and aligns with From: DMARC passes.
    let r = s
        .send(
            "ann@spf.test",
            &["bob@a.test"],
            &message("ann@spf.test", "spf-pass"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // SPF fails and nothing else saves it: the domain says reject.
    for (envelope, from) in [
        ("eve@forger.test", "eve@forger.test"),
        // The envelope sender has no SPF record; the From domain is the forged one.
        ("eve@b.test", "ceo@forger.test"),
    ] {
        let r = s.cmd(&format!("MAIL FROM:<{envelope}>")).await;
        assert_eq!(r.code, 250, "{r:?}");
        assert_eq!(s.cmd("RCPT TO:<bob@a.test>").await.code, 250);
        assert_eq!(s.cmd("DATA").await.code, 354);
        s.write(format!("{}.\r\n", message(from, "forged")).as_bytes())
            .await;
        let r = s.reply().await;
        assert_eq!(r.code, 550, "{envelope}/{from}: {r:?}");
        assert!(
            r.text().starts_with("5.7.1") && r.text().contains("DMARC"),
            "{r:?}"
        );
    }
    // SPF fails, but a valid DKIM signature of the From domain passes DMARC.
    let signed = dkim
        .sign(
            "signed.test",
            message("news@signed.test", "dkim-pass").into_bytes(),
        )
        .await
        .unwrap();
    let r = s
        .send(
            "bounces@signed.test",
            &["bob@a.test"],
            &String::from_utf8(signed).unwrap(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // DMARC fails with p=none: accepted, and marked as it is.
    let r = s
        .send(
            "x@lax.test",
            &["bob@a.test"],
            &message("x@lax.test", "dmarc-none"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");

    let got = mmtp_inbox(&gw).await;
    let by_subject = |subject: &str| {
        got.iter()
            .find(|p| p["content"]["subject"] == subject)
            .unwrap_or_else(|| panic!("{subject}: {got:?}"))
            .clone()
    };
    assert_eq!(got.len(), 3, "{got:?}");
    let spf = by_subject("spf-pass");
    let results = spf["meta"]["authentication"].as_str().unwrap();
    assert!(results.starts_with("a.test; "), "{results}");
    assert!(
        results.contains("spf=pass") && results.contains("dmarc=pass"),
        "{results}"
    );
    assert_eq!(spf["meta"]["senderCheck"], "domain", "{spf}");
    let dkim = by_subject("dkim-pass");
    let results = dkim["meta"]["authentication"].as_str().unwrap();
    assert!(
        results.contains("dkim=pass") && results.contains("header.d=signed.test"),
        "{results}"
    );
    assert!(
        results.contains("spf=fail") && results.contains("dmarc=pass"),
        "{results}"
    );
    assert_eq!(
        dkim["meta"]["senderCheck"], "unverified",
        "SPF failed: {dkim}"
    );
    let lax = by_subject("dmarc-none");
    let results = lax["meta"]["authentication"].as_str().unwrap();
    assert!(
        results.contains("dmarc=fail") && results.contains("policy.dmarc=none"),
        "{results}"
    );
}
