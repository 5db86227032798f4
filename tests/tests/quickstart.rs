//! docs/federation-quickstart.md, followed step by step as written: its two configuration
//! files, its commands (`mailgate` is this build), its DNS records loaded into a DNS server on
//! 127.0.0.1 — the one thing that is the test's own is that server's port, put where the
//! document says 5353. The gateways listen on 127.0.0.2 and 127.0.0.3 on the document's
//! ports, so no other test in this binary may use those addresses.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::{eventually, mailgate, Gateway};

const DOC: &str = include_str!("../../docs/federation-quickstart.md");

/// The fenced blocks of the document with their language tag, in order.
fn blocks() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let mut rest = DOC;
    while let Some((_, after)) = rest.split_once("```") {
        let (tag, body) = after.split_once('\n').unwrap();
        let (body, next) = body.split_once("```").unwrap();
        out.push((tag, body));
        rest = next;
    }
    out
}

/// Run one line of the document's shell in `dir` (`mailgate` is this build).
fn sh(dir: &Path, line: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(line.replace("mailgate ", &format!("{} ", mailgate())))
        .current_dir(dir)
        .env_remove("MAILGATE_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn sh_ok(dir: &Path, line: &str) -> String {
    let out = sh(dir, line);
    assert!(
        out.status.success(),
        "{line}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_federation_quickstart_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    let blocks = blocks();
    let shell: Vec<&str> = blocks
        .iter()
        .filter(|(t, _)| *t == "sh")
        .map(|(_, b)| *b)
        .collect();
    let tomls: Vec<&str> = blocks
        .iter()
        .filter(|(t, _)| *t == "toml")
        .map(|(_, b)| *b)
        .collect();
    let documented_zone = blocks.iter().find(|(t, _)| *t == "zone").unwrap().1;
    assert_eq!(
        (shell.len(), tomls.len()),
        (6, 2),
        "the document's shape changed"
    );

    // 1. The directories and the two files, with the DNS server's port.
    let dns_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sh_ok(&dir, shell[0].trim());
    for (name, text) in ["a", "b"].iter().zip(&tomls) {
        let text = text.replace("127.0.0.1:5353", &format!("127.0.0.1:{dns_port}"));
        std::fs::write(dir.join(name).join("mailgate.toml"), text).unwrap();
    }
    let checked = sh(&dir, "mailgate --config a/mailgate.toml check-config");
    assert!(checked.status.success());
    assert!(String::from_utf8_lossy(&checked.stderr).contains("does not exist yet"));

    // 2. The records each gateway prints — a's exactly as the document shows them — served
    // by a DNS server; check-dns is content with them.
    let lines: Vec<&str> = shell[1].lines().filter(|l| !l.is_empty()).collect();
    let printed_a = sh_ok(&dir, lines[0]);
    let printed_b = sh_ok(&dir, lines[1]);
    assert_eq!(printed_a.trim(), documented_zone.trim());
    let mut records = support::net::zone(&printed_a);
    records.extend(support::net::zone(&printed_b));
    let bind = format!("127.0.0.1:{dns_port}");
    support::net::dns_server_for("example.", &bind, records).await;
    for line in shell[2].lines().filter(|l| !l.is_empty()) {
        sh_ok(&dir, line);
    }

    // 3. a, then b, as `serve` (the background `&` is the test holding the process).
    let mut gateways = Vec::new();
    for line in shell[3].lines().filter(|l| !l.is_empty()) {
        let config = line
            .split_once("--config ")
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        gateways.push(Gateway::start_with(&dir, None, |c| {
            c.arg("--config").arg(&config);
        }));
    }
    assert!(gateways[0].log().contains("does not exist yet"));

    // 4. Accounts and a message in each protocol.
    for line in shell[4].lines().filter(|l| !l.is_empty()) {
        sh_ok(&dir, line);
    }
    let read = shell[5].trim();
    let inbox = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(60), "three messages at b", || {
            let out = sh_ok(&dir, read);
            ["over IMMP", "over MMTP", "over XHMTP"]
                .iter()
                .all(|s| out.contains(&format!("\"subject\":\"{s}\"")))
                .then_some(out)
        })
    })
    .await
    .unwrap();
    assert_eq!(inbox.lines().count(), 3, "{inbox}");
    // Each left a in the protocol it was sent with.
    let log = gateways[0].log();
    for protocol in ["immp", "mmtp", "xhmtp"] {
        assert!(
            log.lines().any(|l| l.contains("relay attempt")
                && l.contains(&format!("protocol=\"{protocol}\""))
                && l.contains("outcome=\"delivered\"")),
            "no {protocol} delivery in\n{log}"
        );
    }
    drop(gateways);
}
