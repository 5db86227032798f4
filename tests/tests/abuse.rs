//! Bounded attacks on the real program, as a stranger with no account would make them:
//! stalled large payloads, slow handshakes and dribbled bodies, a connection flood from many
//! addresses, password guessing, hostile umasks, a full disk, a closed pipe. Every load loop is
//! bounded in count and time; no timing is asserted, only behaviour (and memory, against the
//! configured budget).

mod support;

use mailgate_core::Address;
use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use support::immp::{line, send, upgrade, Conn};
use support::{config_with, connect_from, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

const MIB: u64 = 1024 * 1024;

/// Read until the server closes; true when it did within `limit` (bytes before are dropped).
async fn closed_within(c: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// IMMP: greeting, UPGRADE TLS, handshake. No login.
async fn immp_tls(gw: &Gateway, from: IpAddr) -> Conn {
    let tcp = connect_from(from, gw.addr("immp.listen")).await.unwrap();
    upgrade(gw, tcp, "UPGRADE TLS").await
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn metric(gw: &Gateway, needle: &str) -> u64 {
    let (_, text) = gw.admin_get("/metrics");
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Connections a listener has dealt with: opened, or refused for any reason but the eviction
/// of another (an evicting connection is opened too).
fn handled(gw: &Gateway, protocol: &str) -> u64 {
    let opened = metric(
        gw,
        &format!("mailgate_connections_total{{protocol=\"{protocol}\"}}"),
    );
    let refused: u64 = ["per_ip", "per_prefix", "full", "accept_error"]
        .iter()
        .map(|reason| {
            metric(
                gw,
                &format!(
                    "mailgate_connections_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
                ),
            )
        })
        .sum();
    opened + refused
}

/// A small MMTP message from a stranger's server to bob, through the plain listener.
async fn small_send(gw: &Gateway, subject: &str) -> serde_json::Value {
    let packet = PacketBuilder::new(
        Address::parse_mmtp("(carol)%(elsewhere.test)").unwrap(),
        Address::parse_mmtp("(bob)%(localhost)").unwrap(),
        subject,
        "a legitimate message",
    )
    .build(4)
    .unwrap();
    let mut c = MmtpClient::connect(gw.addr("mmtp.listen"), None)
        .await
        .unwrap();
    c.request_text(&format!(
        "{{\"action\":\"SEND\",\"data\":{{\"packet\":{}}}}}",
        packet.text
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_large_payloads_stay_within_the_body_budget_and_a_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "localhost", "").replace(
        "[admin]",
        "max_message_size = 4194304\n[limits]\nbody_budget_bytes = 33554432\nbody_budget_wait_ms = 500\n\
         max_connections_per_ip = 64\nmax_connections_per_prefix = 64\n[admin]",
    );
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@localhost", "pw");
    let (hwm_before, _) = gw.memory();

    // 160 MMTP SENDs stalled after 2 MiB (of up to 4 MiB), from four addresses in four /24s.
    let target = gw.addr("mmtp.listen").to_owned();
    let mut attackers = Vec::new();
    for i in 0..160u32 {
        let from = ip(&format!("127.{}.0.2", 10 + i % 4));
        let target = target.clone();
        attackers.push(tokio::spawn(async move {
            let Ok(mut s) = connect_from(from, &target).await else {
                return None;
            };
            let mut head = b"{\"action\":\"SEND\",\"data\":{\"packet\":\"".to_vec();
            head.resize(2 * MIB as usize, b'x');
            let _ = tokio::time::timeout(Duration::from_secs(20), s.write_all(&head)).await;
            Some(s)
        }));
    }
    // 40 IMMP payloads of 20 MiB announced after UPGRADE, with no login, from other addresses.
    let mut immp = Vec::new();
    for i in 0..40u32 {
        let mut c = immp_tls(&gw, ip(&format!("127.{}.0.3", 20 + i % 4))).await;
        send(&mut c, "DATA NAME x LENGTH 20971520\n").await;
        immp.push(c);
    }
    // Served throughout: a small message from a stranger's server, and the admin listener.
    let reply = small_send(&gw, "during the attack").await;
    assert_eq!(reply["status"], "OK", "{reply}");
    assert_eq!(gw.admin_get("/healthz").0, 200);
    let mut held = Vec::new();
    for a in attackers {
        held.push(a.await.unwrap());
    }
    // The unauthenticated IMMP payloads are refused outright: far over the pre-login limit.
    for mut c in immp {
        assert!(line(&mut c).await.starts_with("271 "));
        let reply = line(&mut c).await;
        assert!(reply.starts_with("702 "), "{reply}");
    }
    let reply = small_send(&gw, "after the attack").await;
    assert_eq!(reply["status"], "OK", "{reply}");
    let (hwm, rss) = gw.memory();
    println!(
        "peak RSS before {} MiB, during 160 stalled 2 MiB SENDs + 40 IMMP payloads {} MiB (now {} MiB)",
        hwm_before / MIB,
        hwm / MIB,
        rss / MIB
    );
    // Without the budget the stalled buffers alone are 320 MiB or more.
    assert!(
        hwm < hwm_before + 32 * MIB + 96 * MIB,
        "peak RSS {} MiB grew past the 32 MiB budget plus overhead (was {} MiB)",
        hwm / MIB,
        hwm_before / MIB
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_handshakes_and_dribbled_bodies_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "localhost", "")
        .replace(
            "[admin]",
            "[limits]\nhandshake_timeout_secs = 1\nread_timeout_secs = 300\n[admin]",
        )
        .replace(
            "[xhmtp]\nlisten = \"127.0.0.1:0\"",
            "[xhmtp]\nlisten = \"127.0.0.1:0\"\nbody_timeout_secs = 1",
        );
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@localhost", "pw");

    // UPGRADE TLS, then no handshake at all: closed after the handshake timeout, not the
    // 300 s idle timeout.
    let tcp = tokio::net::TcpStream::connect(gw.addr("immp.listen"))
        .await
        .unwrap();
    let mut c: Conn = BufReader::new(Box::new(tcp));
    for _ in 0..4 {
        line(&mut c).await;
    }
    send(&mut c, "UPGRADE TLS\n").await;
    assert_eq!(line(&mut c).await, "204 Upgrading to TLS.");
    assert!(
        closed_within(&mut c, Duration::from_secs(60)).await,
        "a stalled UPGRADE handshake held its slot"
    );

    // A notification body announced as 1000 bytes, 10 sent: 408, then the connection closes.
    let mut s = tokio::net::TcpStream::connect(gw.addr("xhmtp.listen"))
        .await
        .unwrap();
    s.write_all(
        b"POST /xhmtp/bob@localhost HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"url\":\"h",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a dribbled body held its slot");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_leaves_room_for_clients_and_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "localhost", "")
        .replace("[admin]", "[limits]\nmax_connections = 200\n[admin]");
    let gw = Gateway::start(dir.path(), Some(&config));
    let target = gw.addr("immp.listen").to_owned();
    // 2,500 connections held from 125 addresses in 125 /24s, 20 per address (the default limit
    // is 16).
    let mut flood = Vec::new();
    for i in 0..2500u32 {
        let a = i % 125;
        let from = ip(&format!("127.{}.{}.2", 30 + a % 25, a / 25));
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(5), connect_from(from, &target)).await
        {
            flood.push(s);
        }
    }
    // Let the gateway drain its accept backlog first: a connection that waits in the backlog
    // behind 200 later ones is, by then, the longest idle and rightly evicted.
    support::eventually_async(Duration::from_secs(60), "the flood accepted", || async {
        (handled(&gw, "immp") >= flood.len() as u64).then_some(())
    })
    .await;
    // A client still gets a greeting and an answer; the admin listener still answers.
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(&target).await.unwrap();
    let mut c: Conn = BufReader::new(Box::new(tcp));
    let first = line(&mut c).await;
    assert!(first.starts_with("100-"), "{first:?}");
    for _ in 0..3 {
        line(&mut c).await;
    }
    send(&mut c, "NOOP\n").await;
    assert_eq!(line(&mut c).await, "200 OK");
    println!(
        "client served after {:?} with {} flood connections attempted",
        started.elapsed(),
        flood.len()
    );
    assert_eq!(gw.admin_get("/healthz").0, 200);
    // 80 more from 80 addresses of one /24: the per-prefix limit (64) refuses some.
    for h in 0..80u32 {
        if let Ok(s) = connect_from(ip(&format!("127.99.0.{}", h + 2)), &target).await {
            flood.push(s);
        }
    }
    support::eventually_async(Duration::from_secs(30), "the per-prefix limit", || async {
        let refused = "mailgate_connections_refused_total{protocol=\"immp\",reason=\"per_prefix\"}";
        (metric(&gw, refused) > 0).then_some(())
    })
    .await;
    // The eviction of idle connections made room, counted.
    assert!(
        metric(
            &gw,
            "mailgate_connections_refused_total{protocol=\"immp\",reason=\"evicted_idle\"}"
        ) > 0
    );
    drop(flood);
}

#[tokio::test(flavor = "multi_thread")]
async fn password_guesses_are_banned_logged_and_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), Some(&config_with(dir.path(), "localhost", "")));
    gw.add_user("bob@localhost", "right-password");
    let guesser = ip("127.0.0.9");

    // IMMP: three wrong responses close the connection.
    let mut c = immp_tls(&gw, guesser).await;
    for _ in 0..3 {
        send(&mut c, "AUTH SECRET bob@localhost\n").await;
        assert!(line(&mut c).await.starts_with("302 "));
        assert!(line(&mut c).await.starts_with("303 "));
        send(&mut c, &format!("AUTH RESPONSE {}\n", "0".repeat(40))).await;
        assert_eq!(line(&mut c).await, "410 Authentication failed.");
    }
    assert!(line(&mut c).await.starts_with("702 "));
    // Three more: the fifth is the last free one, the sixth bans the address.
    let mut c = immp_tls(&gw, guesser).await;
    for _ in 0..3 {
        send(&mut c, "AUTH SECRET bob@localhost\n").await;
        assert!(line(&mut c).await.starts_with("302 "));
        line(&mut c).await;
        send(&mut c, &format!("AUTH RESPONSE {}\n", "0".repeat(40))).await;
        assert_eq!(line(&mut c).await, "410 Authentication failed.");
    }
    assert!(line(&mut c).await.starts_with("702 "));
    // Banned: the next attempt is refused before any check.
    let mut c = immp_tls(&gw, guesser).await;
    send(&mut c, "AUTH SECRET bob@localhost\n").await;
    let banned = line(&mut c).await;
    assert!(
        banned.starts_with("429 ") && banned.contains("too many failed logins"),
        "{banned}"
    );
    // Another address is not banned.
    let mut other = immp_tls(&gw, ip("127.0.0.10")).await;
    send(&mut other, "AUTH SECRET bob@localhost\n").await;
    assert!(line(&mut other).await.starts_with("302 "));

    // XHMTP Basic: a wrong password is 401 and closes the connection; from the banned address
    // even the right password gets 429 with Retry-After.
    let basic = |pw: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("bob@localhost:{pw}"))
    };
    let feed = |from: IpAddr, pw: String| {
        let target = gw.addr("xhmtp.listen").to_owned();
        async move {
            let mut s = connect_from(from, &target).await.unwrap();
            let req = format!(
                "GET /xhmtp/bob@localhost/feed HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {pw}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await;
            (
                String::from_utf8_lossy(&answer).into_owned(),
                closed.is_ok(),
            )
        }
    };
    let (text, closed) = feed(ip("127.0.0.11"), basic("wrong")).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(closed, "the connection stayed open after a wrong password");
    let (text, _) = feed(guesser, basic("right-password")).await;
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");

    // Every failure is logged in the fail2ban format, never with the password; no colour codes.
    let log = gw.log();
    assert!(
        log.contains("login failed protocol=immp peer=127.0.0.9 account=bob@localhost"),
        "{log}"
    );
    assert!(log.contains("login failed protocol=xhmtp peer=127.0.0.11 account=bob@localhost"));
    assert!(!log.contains("wrong") && !log.contains("right-password"));
    assert!(
        !log.contains('\u{1b}'),
        "ANSI colour codes in a log that is not a terminal"
    );
    assert!(
        metric(
            &gw,
            "mailgate_events_total{event=\"login_immp\",outcome=\"failed\"}"
        ) >= 5
    );
    assert!(
        metric(
            &gw,
            "mailgate_events_total{event=\"login_immp\",outcome=\"throttled\"}"
        ) >= 1
    );
}

#[cfg(unix)]
#[test]
fn files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "localhost", "");
    let gw = Gateway::start_with(dir.path(), Some(&config), |cmd| {
        // SAFETY: umask is async-signal-safe and only changes the child's creation mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    });
    gw.add_user("bob@localhost", "pw");
    let backup = dir.path().join("backup.db");
    support::run_ok(
        &[
            "backup",
            backup.to_str().unwrap(),
            "--config",
            gw.config.to_str().unwrap(),
        ],
        None,
        dir.path(),
    );
    let data = dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    for f in [
        "mailgate.db",
        "mailgate.db-wal",
        "mailgate.db-shm",
        "tls/key.pem",
        "xhmtp-access.key",
        "domain-key.asc",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&data.join("tls")), 0o700, "tls dir");
    assert_eq!(mode(&backup), 0o600, "backup");
}

/// Mount a small tmpfs (root only); `None` when this machine does not allow it.
fn tmpfs(dir: &std::path::Path, size: &str) -> Option<TmpfsGuard> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| TmpfsGuard(dir.to_owned()))
}

struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_turns_health_red_and_never_leaves_a_broken_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_mount) = tmpfs(&data, "16m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs for the full-disk test"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    // A first start on a full disk fails cleanly, and leaves no empty key behind.
    let filler = data.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=32"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let config = config_with(dir.path(), "localhost", "");
    std::fs::write(dir.path().join("mailgate.toml"), &config).unwrap();
    let out = support::run(
        &[
            "serve",
            "--config",
            dir.path().join("mailgate.toml").to_str().unwrap(),
        ],
        None,
        dir.path(),
    );
    assert!(!out.status.success(), "serve started on a full disk");
    for key in [
        "tls/key.pem",
        "tls/cert.pem",
        "xhmtp-access.key",
        "domain-key.asc",
    ] {
        let p = data.join(key);
        assert!(
            !p.exists() || std::fs::metadata(&p).unwrap().len() > 0,
            "{key} was left empty"
        );
    }
    std::fs::remove_file(&filler).unwrap();

    // With room again it starts; then the disk fills up while it runs.
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@localhost", "pw");
    assert_eq!(gw.admin_get("/healthz").0, 200);
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=32"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut refused = false;
    for i in 0..200 {
        let reply = rt.block_on(small_send(
            &gw,
            &format!("filling {i} {}", "x".repeat(4000)),
        ));
        if reply["status"] == "ERROR" {
            assert!(
                reply["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("temporary"),
                "{reply}"
            );
            refused = true;
            break;
        }
    }
    assert!(refused, "every write succeeded on a full disk");
    let (status, body) = gw.admin_get("/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store cannot commit"), "{body}");
    assert!(metric(&gw, "mailgate_store_write_failures_total") >= 1);
    // Room again: health recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    support::eventually(Duration::from_secs(30), "health recovered", || {
        (gw.admin_get("/healthz").0 == 200).then_some(())
    });
    drop(gw);
}

#[test]
fn commands_end_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), Some(&config_with(dir.path(), "localhost", "")));
    let script = format!(
        "'{}' conformance --protocol immp --target {} --domain localhost --ca {} 2>{}/err | head -c 10 > /dev/null",
        support::mailgate(),
        gw.addr("immp.listen"),
        gw.dir.join("data/tls/cert.pem").display(),
        dir.path().display()
    );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    assert!(!err.contains("panicked"), "{err}");
}

#[cfg(unix)]
#[test]
fn the_open_file_limit_is_raised_to_what_the_listeners_need() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "localhost", "");
    let gw = Gateway::start_with(dir.path(), Some(&config), |cmd| {
        // SAFETY: setrlimit is async-signal-safe; it lowers only the child's soft limit.
        unsafe {
            cmd.pre_exec(|| {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                lim.rlim_cur = 256;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                Ok(())
            });
        }
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    // Four public listeners of 1024, the admin listener's 32, and 1024 to spare.
    assert!(soft >= hard.min(4 * 1024 + 32 + 1024), "soft limit {soft}");
    assert!(soft > 256, "the open-file limit was not raised");
}
