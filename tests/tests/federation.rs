//! Two gateways, a.test on 127.0.0.2 and b.test on 127.0.0.3, relay to each other over IMMP:
//! each issues a cookie, the other verifies it by calling back (COOKIE CHECK), and the mail
//! lands in the other's mailbox. TLS between them is verified against a test CA made here.

mod support;

use mailgate_core::{Address, Importance, Part};
use mailgate_immp::client::ImmpClient;
use std::path::Path;
use std::time::Duration;
use support::net::{a, dns_server, leaf, srv, test_ca};
use support::site::Site;
use support::Gateway;

/// A gateway on `ip` for `domain` (IMMP on port 1025) with a static IMMP route to its peer:
/// a.test writes it as `[[route]]`, b.test in the deprecated `[[immp.routes]]` table (still
/// read, with a warning).
fn config(dir: &Path, ca_dir: &Path, domain: &str, ip: &str, peer: &str, peer_ip: &str) -> String {
    let (immp, tail) = if domain == "b.test" {
        let old = format!("[[immp.routes]]\ndomain = \"{peer}\"\naddress = \"{peer_ip}:1025\"\n");
        (old, String::new())
    } else {
        let route = format!(
            "[[route]]\ndomain = \"{peer}\"\nprotocol = \"immp\"\nhost = \"{peer_ip}\"\nport = 1025\n"
        );
        (String::new(), route)
    };
    Site {
        ca: Some(ca_dir),
        immp_port: 1025,
        immp: &immp,
        tail: &tail,
        ..Site::new(&[domain], ip)
    }
    .config(dir)
}

/// The same without routes, finding peers through `dns`.
fn dns_config(
    dir: &Path,
    ca_dir: &Path,
    domain: &str,
    ip: &str,
    dns: std::net::SocketAddr,
) -> String {
    Site {
        ca: Some(ca_dir),
        dns: Some(dns),
        immp_port: 1025,
        ..Site::new(&[domain], ip)
    }
    .config(dir)
}

async fn login(ca: &Path, gw: &Gateway, domain: &str, account: &str, password: &str) -> ImmpClient {
    let (connector, name) = mailgate::tls::connector(&ca.join("ca.pem"), domain).unwrap();
    let mut c = ImmpClient::connect(gw.addr("immp.listen"), connector, name)
        .await
        .unwrap();
    c.auth_secret(&Address::parse_imid(account).unwrap(), password)
        .await
        .unwrap();
    c
}

/// Poll a mailbox until it holds `n` messages.
async fn wait_for(
    ca: &Path,
    gw: &Gateway,
    domain: &str,
    account: &str,
    password: &str,
    n: usize,
) -> String {
    let what = format!("{n} messages for {account}");
    support::eventually_async(Duration::from_secs(60), &what, || async {
        let mut c = login(ca, gw, domain, account, password).await;
        c.send_raw(b"MBOX INDEX /inbox +JSON\n").await.unwrap();
        let index = c.reply().await.unwrap();
        (index.lines.len() > n).then(|| index.lines.join("\n"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_relay_over_immp_with_cookie_authentication() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = test_ca(ca_dir.path());
    leaf(&ca, ca_dir.path(), "a.test");
    leaf(&ca, ca_dir.path(), "b.test");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(
        dir_a.path(),
        Some(&config(
            dir_a.path(),
            ca_dir.path(),
            "a.test",
            "127.0.0.2",
            "b.test",
            "127.0.0.3",
        )),
    );
    let b = Gateway::start(
        dir_b.path(),
        Some(&config(
            dir_b.path(),
            ca_dir.path(),
            "b.test",
            "127.0.0.3",
            "a.test",
            "127.0.0.2",
        )),
    );
    a.add_user("alice@a.test", "alice-pw");
    b.add_user("bob@b.test", "bob-pw");
    let ca_path = ca_dir.path();

    // A bogus cookie is refused by its supposed issuer.
    let (connector, name) = mailgate::tls::connector(&ca_path.join("ca.pem"), "b.test").unwrap();
    let mut c = ImmpClient::connect(b.addr("immp.listen"), connector, name)
        .await
        .unwrap();
    assert!(c
        .auth_cookie("00112233445566778899aabbccddeeff", "a.test")
        .await
        .is_err());

    // alice@a.test → bob@b.test: queued at A, relayed with AUTH COOKIE, verified by call-back.
    let mut alice = login(ca_path, &a, "a.test", "alice@a.test", "alice-pw").await;
    let body = Part::text_body("over the federation");
    alice
        .deliver(
            &[Address::parse_imid("bob@b.test").unwrap()],
            "A to B",
            &[body],
            Importance::High,
        )
        .await
        .unwrap();
    let index = wait_for(ca_path, &b, "b.test", "bob@b.test", "bob-pw", 1).await;
    assert!(index.contains("\"subject\":\"A to B\""), "{index}");
    // The relay envelope carries the sender.
    assert!(index.contains("\"from\":\"alice@a.test\""), "{index}");
    assert!(index.contains("\"importance\":\"high\""), "{index}");

    // And back: bob@b.test → alice@a.test.
    let mut bob = login(ca_path, &b, "b.test", "bob@b.test", "bob-pw").await;
    bob.deliver(
        &[Address::parse_imid("alice@a.test").unwrap()],
        "B to A",
        &[Part::text_body("reply")],
        Importance::Normal,
    )
    .await
    .unwrap();
    let index = wait_for(ca_path, &a, "a.test", "alice@a.test", "alice-pw", 1).await;
    assert!(index.contains("\"subject\":\"B to A\""), "{index}");
    // b.test's old route table worked, and it was told it is deprecated.
    assert!(
        b.log().contains("[[immp.routes]] is deprecated"),
        "{}",
        b.log()
    );
    assert!(!a.log().contains("deprecated"));

    // Publish/subscribe across domains: bob subscribes (B tells A, cookie-authenticated, on
    // his behalf); alice publishes on A; A relays the push; it lands in bob's PUSH folder.
    alice.send_raw(b"PUBLISH news \"A news\"\n").await.unwrap();
    assert_eq!(alice.reply().await.unwrap().code, 260);
    bob.send_raw(b"SUBSCRIBE TO news@a.test\n").await.unwrap();
    assert_eq!(bob.reply().await.unwrap().code, 380);
    let subscribed = bob.reply().await.unwrap();
    assert_eq!(subscribed.code, 280, "{subscribed:?}");
    assert_eq!(subscribed.lines, vec!["Subscribed to: A news".to_string()]);
    alice
        .send_raw(b"PUBLISH TO news\nDATA NAME alert LENGTH 5\nhello\n")
        .await
        .unwrap();
    for code in [275, 271, 274] {
        assert_eq!(alice.reply().await.unwrap().code, code);
    }
    let bob = std::sync::Arc::new(tokio::sync::Mutex::new(bob));
    support::eventually_async(Duration::from_secs(60), "the push at bob's", || async {
        let mut bob = bob.lock().await;
        bob.send_raw(b"MBOX CHECK /push\n").await.unwrap();
        let check = bob.reply().await.unwrap();
        (check.lines == vec!["/push::* u=1 t=1".to_string()]).then_some(())
    })
    .await;
}

/// The same relay, with both servers found through DNS SRV records served by an in-process
/// authoritative DNS server instead of configured routes.
#[tokio::test(flavor = "multi_thread")]
async fn gateways_find_each_other_through_dns_srv() {
    let dns = dns_server(vec![
        srv("a.test", 1025),
        a("mx.a.test", [127, 0, 0, 4]),
        srv("b.test", 1025),
        a("mx.b.test", [127, 0, 0, 5]),
    ])
    .await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = test_ca(ca_dir.path());
    leaf(&ca, ca_dir.path(), "a.test");
    leaf(&ca, ca_dir.path(), "b.test");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_gw = Gateway::start(
        dir_a.path(),
        Some(&dns_config(
            dir_a.path(),
            ca_dir.path(),
            "a.test",
            "127.0.0.4",
            dns,
        )),
    );
    let b_gw = Gateway::start(
        dir_b.path(),
        Some(&dns_config(
            dir_b.path(),
            ca_dir.path(),
            "b.test",
            "127.0.0.5",
            dns,
        )),
    );
    a_gw.add_user("alice@a.test", "alice-pw");
    b_gw.add_user("bob@b.test", "bob-pw");
    let ca_path = ca_dir.path();
    let mut alice = login(ca_path, &a_gw, "a.test", "alice@a.test", "alice-pw").await;
    alice
        .deliver(
            &[Address::parse_imid("bob@b.test").unwrap()],
            "found by SRV",
            &[Part::text_body("hello")],
            Importance::Normal,
        )
        .await
        .unwrap();
    let index = wait_for(ca_path, &b_gw, "b.test", "bob@b.test", "bob-pw", 1).await;
    assert!(index.contains("\"subject\":\"found by SRV\""), "{index}");
    // The relay envelope carries the sender.
    assert!(index.contains("\"from\":\"alice@a.test\""), "{index}");
}
