//! Clients of a test gateway's front-ends, logged in over TLS with the test CA, and a
//! send helper that submits one message (subject, body, an attachment, tags, importance)
//! through any of them.

use base64::Engine;
use mailgate_core::{Address, Importance, Part, Tags};
use mailgate_immp::client::ImmpClient;
use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
use mailgate_xhmtp::client::XhmtpClient;
use mailgate_xhmtp::wire::{PartJson, SubmitRequest};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

use super::Gateway;

pub async fn mmtp_client(
    gw: &Gateway,
    ca: &Path,
    domain: &str,
    who: &Address,
    pw: &str,
) -> MmtpClient {
    let tls = mailgate::tls::connector(&ca.join("ca.pem"), domain).unwrap();
    let mut c = MmtpClient::connect(gw.addr("mmtp.tls_listen"), Some(tls))
        .await
        .unwrap();
    c.auth(who, pw).await.unwrap();
    c
}

pub async fn immp_client(
    gw: &Gateway,
    ca: &Path,
    domain: &str,
    who: &Address,
    pw: &str,
) -> ImmpClient {
    let (connector, name) = mailgate::tls::connector(&ca.join("ca.pem"), domain).unwrap();
    let mut c = ImmpClient::connect(gw.addr("immp.listen"), connector, name)
        .await
        .unwrap();
    c.auth_secret(who, pw).await.unwrap();
    c
}

pub fn xhmtp_client(gw: &Gateway, domain: &str, who: &str, pw: &str) -> XhmtpClient {
    let addr = gw.addr("xhmtp.listen").parse().unwrap();
    XhmtpClient::new(addr, domain, None, "xhmtp", who, pw)
}

/// Send one message from `from` to `to` through front-end `via` of `gw` (`secret_key`: MMTP
/// signs with it when not empty).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    gw: &Gateway,
    ca: &Path,
    domain: &str,
    via: &str,
    from: &Address,
    pw: &str,
    to: &Address,
    subject: &str,
    body: &str,
    attachment: &[u8],
    secret_key: &str,
) {
    let tags = Tags {
        category: vec!["work".into()],
        ..Tags::default()
    };
    match via {
        "mmtp" => {
            let mut c = mmtp_client(gw, ca, domain, from, pw).await;
            let mut b = PacketBuilder::new(from.clone(), to.clone(), subject, body);
            b.attachments = vec![Part {
                name: "file.bin".into(),
                media_type: "application/octet-stream".into(),
                data: attachment.to_vec().into(),
                content: false,
            }];
            b.tags = tags;
            b.tags.priority.push("high".into());
            b.sign_with = (!secret_key.is_empty()).then(|| secret_key.to_owned());
            let difficulty = c.difficulty();
            let built = tokio::task::spawn_blocking(move || b.build(difficulty))
                .await
                .unwrap()
                .unwrap();
            c.send(&built.text).await.unwrap();
        }
        "immp" => {
            let mut c = immp_client(gw, ca, domain, from, pw).await;
            let parts = [
                Part::text_body(body),
                Part {
                    name: "file.bin".into(),
                    media_type: "application/octet-stream".into(),
                    data: attachment.to_vec().into(),
                    content: false,
                },
            ];
            c.deliver(std::slice::from_ref(to), subject, &parts, Importance::High)
                .await
                .unwrap();
            c.quit().await;
        }
        _ => {
            let c = xhmtp_client(gw, domain, &from.to_string(), pw);
            c.submit(&SubmitRequest {
                to: vec![to.to_string()],
                subject: subject.into(),
                body: body.into(),
                parts: vec![PartJson {
                    name: "file.bin".into(),
                    media_type: "application/octet-stream".into(),
                    data: base64::engine::general_purpose::STANDARD.encode(attachment),
                }],
                tags,
                importance: Importance::High,
            })
            .await
            .unwrap();
        }
    }
}

/// The INBOX index of `who` over IMMP (JSON lines), once it holds `n` messages.
pub async fn wait_immp_index(
    gw: &Gateway,
    ca: &Path,
    domain: &str,
    who: &Address,
    pw: &str,
    n: usize,
) -> Vec<Value> {
    let what = format!("{n} messages for {who}");
    let lines = super::eventually_async(Duration::from_secs(90), &what, || async {
        let mut c = immp_client(gw, ca, domain, who, pw).await;
        c.send_raw(b"MBOX INDEX /inbox +JSON\n").await.unwrap();
        let reply = c.reply().await.unwrap();
        c.quit().await;
        let lines: Vec<Value> = reply
            .lines
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await;
    assert_eq!(
        lines.len(),
        n,
        "more messages than sent for {who}: {lines:?}"
    );
    lines
}
