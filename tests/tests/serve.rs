//! The `mailgate` program end to end: serve opens every listener, the admin endpoint answers,
//! each front-end greets, the operator commands work while it runs, SIGTERM stops it cleanly.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{config_with, run, run_ok, Gateway};

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

fn first_line(addr: &str) -> String {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn serve_opens_every_listener_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        Some(&config_with(
            dir.path(),
            "e2e.test",
            "requests_per_sec = 1000.0",
        )),
    );
    for key in [
        "admin.listen",
        "mmtp.listen",
        "mmtp.tls_listen",
        "immp.listen",
        "xhmtp.listen",
    ] {
        assert!(
            gw.addrs.contains_key(key),
            "{key} not listening: {:?}",
            gw.addrs
        );
    }

    let (status, body) = http_get(gw.addr("admin.listen"), "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let welcome: serde_json::Value =
        serde_json::from_str(&first_line(gw.addr("mmtp.listen"))).unwrap();
    assert_eq!(welcome["status"], "OK");
    assert!(welcome["message"]
        .as_str()
        .unwrap()
        .contains("MMTP Server Ready"));
    assert_eq!(
        first_line(gw.addr("immp.listen")),
        "100- IMMP/1.0 Server at e2e.test.\n"
    );
    let (status, body) = http_get(gw.addr("xhmtp.listen"), "/xhmtp");
    assert_eq!(status, 200, "{body}");

    let (_, metrics) = http_get(gw.addr("admin.listen"), "/metrics");
    assert!(
        metrics.contains("mailgate_connections_total{protocol=\"mmtp\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailgate_store_commit_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("mailgate_queue_depth 0"), "{metrics}");

    // Operator commands against the same data directory while serve runs.
    let cfg = gw.config.to_str().unwrap().to_owned();
    run_ok(
        &[
            "user",
            "add",
            "alice@e2e.test",
            "--password-stdin",
            "--config",
            &cfg,
        ],
        Some("s3cret\n"),
        dir.path(),
    );
    gw.add_user("bob@e2e.test", "pw2");
    let out = run(&["user", "list", "--config", &cfg], None, dir.path());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice@e2e.test\t(alice)%(e2e.test)\nbob@e2e.test\t(bob)%(e2e.test)\n"
    );
    let backup = dir.path().join("backup.db");
    run_ok(
        &["backup", backup.to_str().unwrap(), "--config", &cfg],
        None,
        dir.path(),
    );
    assert!(backup.exists());
    let health_url = format!("http://{}", gw.addr("admin.listen"));
    let out = run(&["health", "--url", &health_url], None, dir.path());
    assert!(out.status.success());

    // The conformance suites run against a gateway of their own, one test per case
    // (tests/conformance.rs).

    let (status, rest) = gw.stop();
    assert!(status.success(), "exit status {status}");
    assert_eq!(rest.last().map(String::as_str), Some("mailgate: stopped"));
}

#[test]
fn serve_runs_with_embedded_defaults_and_no_config_file() {
    let dir = tempfile::tempdir().unwrap();
    // The default ports are fixed: a network namespace of its own has them free.
    let Some(gw) = Gateway::start_in_own_network(dir.path()) else {
        return;
    };
    let expected = [
        ("admin.listen", "127.0.0.1:9025"),
        ("mmtp.listen", "127.0.0.1:8025"),
        ("mmtp.tls_listen", "127.0.0.1:8026"),
        ("immp.listen", "127.0.0.1:1025"),
        ("xhmtp.listen", "127.0.0.1:8080"),
        ("smtp.listen", "127.0.0.1:2525"),
        ("smtp.submission_listen", "127.0.0.1:2587"),
        ("smtp.submissions_listen", "127.0.0.1:2465"),
        ("tmtp.listen", "127.0.0.1:5443"),
    ];
    for (key, addr) in expected {
        assert_eq!(gw.addr(key), addr);
    }
    // `health` with no configuration finds the admin listener at its default address.
    let health = gw.run_inside(&["health"]);
    assert!(health.status.success(), "{health:?}");
    assert!(dir.path().join("data/mailgate.db").exists());
    assert!(dir.path().join("data/tls/cert.pem").exists());
    let (status, _) = gw.stop();
    assert!(status.success());
}

#[test]
fn check_config_validates_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/mailgate.toml");
    let out = run(&["check-config", "--config", shipped], None, dir.path());
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("listen = \"127.0.0.1:8025\""));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[immp]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let out = run(
        &["check-config", "--config", bad.to_str().unwrap()],
        None,
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_addr"));

    // MAILGATE_CONFIG names a config file too.
    let out = std::process::Command::new(support::mailgate())
        .arg("check-config")
        .env("MAILGATE_CONFIG", &bad)
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Files: a missing certificate and a trust file that is not PEM are errors (each named
    // once); a trust file that does not exist yet is a note; a host name where an address
    // belongs gets a hint.
    let check = |text: &str| {
        std::fs::write(&bad, text).unwrap();
        let out = run(
            &["check-config", "--config", bad.to_str().unwrap()],
            None,
            dir.path(),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::write(dir.path().join("junk.pem"), "junk\n").unwrap();
    let (ok, err) = check("[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\ntrust = [\"junk.pem\", \"later.pem\"]\n");
    assert!(!ok, "{err}");
    assert_eq!(err.matches("/nonexistent/c.pem").count(), 1, "{err}");
    assert!(err.contains("junk.pem holds no PEM certificate"), "{err}");
    assert!(err.contains("later.pem does not exist yet"), "{err}");
    let (ok, err) = check("data_dir = \"./d\"\n[tls]\ntrust = [\"later.pem\"]\n");
    assert!(
        ok && err.contains("note: tls.trust: later.pem does not exist yet"),
        "{err}"
    );
    let (ok, err) = check("[immp]\nlisten = \"localhost:1025\"\n");
    assert!(!ok && err.contains("use an IP address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_print_a_zone_that_check_dns_accepts_and_check_dns_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |dns: &str| {
        format!(
            "data_dir = \"{}\"\ndomains = [\"a.test\"]\n[dns]\nservers = [\"{dns}\"]\ntimeout_secs = 4\n",
            dir.path().join("data").display()
        )
    };
    let path = dir.path().join("mailgate.toml");
    std::fs::write(&path, cfg("127.0.0.1:9")).unwrap();
    let p = path.to_str().unwrap().to_owned();
    let cli = move |args: &[&str]| {
        let mut all = vec!["--config", p.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        let cwd = std::env::temp_dir();
        async move {
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                run(&refs, None, &cwd)
            })
            .await
            .unwrap()
        }
    };
    let out = cli(&["dkim", "generate", "a.test"]).await;
    assert!(out.status.success());
    let printed = cli(&[
        "dns-records",
        "a.test",
        "--host",
        "mx.a.test",
        "--address",
        "192.0.2.7",
    ])
    .await;
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).unwrap();
    for want in [
        "_mmtp._tcp.a.test.",
        "_immp._tcp.a.test.",
        "_xhmtp._tcp.a.test.",
        "_prefix._xhmtp.a.test.",
        "_submission._tcp.a.test.",
        "mailgate._domainkey.a.test.",
        "_dmarc.a.test.",
        "v=spf1 mx ip4:192.0.2.7 -all",
        "MX    10 mx.a.test.",
        "A     192.0.2.7",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let records = support::net::zone(&text);

    // Everything published: check-dns is content.
    let dns = support::net::dns_server(records.clone()).await;
    std::fs::write(&path, cfg(&dns.to_string())).unwrap();
    let args = [
        "check-dns",
        "a.test",
        "--host",
        "mx.a.test",
        "--address",
        "192.0.2.7",
    ];
    let out = cli(&args).await;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(report.contains("are published"), "{report}");

    // DMARC left out and the IMMP SRV on the wrong port: both named, exit 1.
    let mut broken: Vec<_> = records
        .into_iter()
        .filter(|r| !r.name().to_ascii().starts_with("_dmarc."))
        .filter(|r| !r.name().to_ascii().starts_with("_immp."))
        .collect();
    broken.push(support::net::srv_to("immp", "a.test", "mx.a.test", 1999));
    let dns = support::net::dns_server(broken).await;
    std::fs::write(&path, cfg(&dns.to_string())).unwrap();
    let out = cli(&args).await;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{report}");
    let line = |start: &str, name: &str| {
        report
            .lines()
            .any(|l| l.starts_with(start) && l.contains(name))
    };
    assert!(line("MISSING", "_dmarc.a.test."), "{report}");
    assert!(line("WRONG", "_immp._tcp.a.test."), "{report}");
    assert!(line("ok", "mailgate._domainkey.a.test."), "{report}");
    assert!(report.contains("2 of "), "{report}");
}

/// A port on 127.0.0.1 that was free a moment ago (bound and let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// README.md's walkthrough, line by line as written (`cargo run --release --` is this build of
/// mailgate), against `serve` with the embedded defaults — but on ports that were free, given
/// to every command through MAILGATE_CONFIG as a user would.
#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split_once("Create an account and check the gateway:")
        .expect("the walkthrough's heading")
        .1;
    let block = block
        .split_once("```sh\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from("[admin]\n");
    config += &format!("listen = \"127.0.0.1:{}\"\n", free_port());
    for (section, keys) in [
        ("mmtp", &["listen", "tls_listen"][..]),
        ("immp", &["listen"]),
        ("xhmtp", &["listen"]),
        (
            "smtp",
            &["listen", "submission_listen", "submissions_listen"],
        ),
        ("tmtp", &["listen"]),
    ] {
        config += &format!("[{section}]\n");
        for key in keys {
            config += &format!("{key} = \"127.0.0.1:{}\"\n", free_port());
        }
    }
    config += &format!("[dns]\nservers = [\"{}\"]\n", support::empty_dns());
    let gw = Gateway::start(dir.path(), Some(&config));
    let path = gw.config.clone();
    let mut outputs = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let command = line.replace("cargo run --release --", support::mailgate());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(dir.path())
            .env("MAILGATE_CONFIG", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8(out.stdout).unwrap());
    }
    let lines = |i: usize| outputs[i].lines().count();
    // The feed and the IMMP fetch (kept) both show both messages; MMTP's RECEIVE takes both.
    assert_eq!(lines(5), 2, "feed: {}", outputs[5]);
    assert_eq!(lines(6), 2, "immp: {}", outputs[6]);
    assert!(outputs[6].contains("\"subject\":\"Hi\""), "{}", outputs[6]);
    assert_eq!(lines(7), 2, "mmtp: {}", outputs[7]);

    // The generated certificate names 127.0.0.1 too; a sender other than the login is refused
    // where the protocol sends as the login; MMTP cannot --keep.
    let immp = gw.addr("immp.listen").to_owned();
    let client = |args: &[&str]| {
        std::process::Command::new(support::mailgate())
            .args(args)
            .current_dir(dir.path())
            .env("MAILGATE_CONFIG", &path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(b"s3cret\n")?;
                c.wait_with_output()
            })
            .unwrap()
    };
    let args = [
        "receive",
        "--protocol",
        "immp",
        "--server",
        &immp,
        "--tls-name",
        "127.0.0.1",
    ];
    let out = client(&[&args[..], &["--login", "bob@localhost"]].concat());
    assert!(out.status.success(), "{out:?}");
    let out = client(&[
        "send",
        "--protocol",
        "xhmtp",
        "--login",
        "alice@localhost",
        "--from",
        "bob@localhost",
        "--to",
        "bob@localhost",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not the --login account"));
    let out = client(&["receive", "--login", "bob@localhost", "--keep"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep works with"));
    assert!(
        outputs[7].contains("over HTTP") && outputs[7].contains("Hello"),
        "{}",
        outputs[7]
    );
}

/// `backup --archive` while the gateway runs, the data directory wiped, `restore`: accounts,
/// mail, the site's keys, the TLS certificate and a stranger's access code all come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_archive_restores_everything_into_an_empty_data_directory() {
    use mailgate_core::{Address, MessageId};
    use mailgate_xhmtp::access::AccessCodes;
    use mailgate_xhmtp::wire::SubmitRequest;
    let dir = tempfile::tempdir().unwrap();
    // d.test's XHMTP server is down: dave's access grant is made when the relay first tries.
    let config = config_with(dir.path(), "a.test", "")
        + &format!(
            "[[route]]\ndomain = \"d.test\"\nprotocol = \"xhmtp\"\nhost = \"127.0.0.1\"\nport = {}\n",
            free_port()
        );
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("alice@a.test", "alice-pw");
    gw.add_user("bob@a.test", "bob-pw");
    let alice = support::clients::xhmtp_client(&gw, "a.test", "alice@a.test", "alice-pw");
    let receipt = alice
        .submit(&SubmitRequest {
            to: vec!["bob@a.test".into(), "dave@d.test".into()],
            subject: "kept".into(),
            body: "through a restore".into(),
            ..SubmitRequest::default()
        })
        .await
        .unwrap();
    let id: MessageId = receipt.id.parse().unwrap();
    let dave = Address::parse_xhmtp("dave@d.test").unwrap();
    let fetch_as_dave = |gw: &Gateway, key: [u8; 32]| {
        let code = AccessCodes::new(key).code(id, &dave);
        let addr = gw.addr("xhmtp.listen");
        let port = addr.rsplit_once(':').unwrap().1;
        let url = format!("http://dave%40d.test:{code}@a.test:{port}/xhmtp/alice/{id}");
        let client = support::clients::xhmtp_client(gw, "a.test", "bob@a.test", "bob-pw");
        let addr = addr.parse().unwrap();
        async move { client.fetch_url(&url, addr).await }
    };
    let data = dir.path().join("data");
    let key: [u8; 32] = std::fs::read(data.join("xhmtp-access.key"))
        .unwrap()
        .try_into()
        .unwrap();
    support::eventually_async(Duration::from_secs(30), "dave's grant made", || async {
        fetch_as_dave(&gw, key).await.ok()
    })
    .await;
    let files = [
        "domain-key.asc",
        "xhmtp-access.key",
        "tls/cert.pem",
        "tls/key.pem",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(data.join(f)).unwrap())
        .collect();
    let archive = dir.path().join("backup.tar");
    let c = gw.config.to_str().unwrap().to_owned();
    let archive_s = archive.to_str().unwrap().to_owned();
    let cwd = dir.path().to_owned();
    let blocking = |args: Vec<String>| {
        let cwd = cwd.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&refs, None, &cwd)
        })
    };
    let out = blocking(vec![
        "--config".into(),
        c.clone(),
        "backup".into(),
        archive_s.clone(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = gw.stop();
    assert!(status.success());

    // Restoring over what is there is refused and changes nothing.
    let restore = vec![
        "--config".into(),
        c.clone(),
        "restore".into(),
        archive_s.clone(),
    ];
    let out = blocking(restore.clone()).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));

    std::fs::remove_dir_all(&data).unwrap();
    let out = blocking(restore).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(data.join(f)).unwrap())
        .collect();
    assert!(before == after, "a key file changed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("mailgate.db")), 0o600);
    }

    let gw = Gateway::start(dir.path(), Some(&config));
    let bob = support::clients::xhmtp_client(&gw, "a.test", "bob@a.test", "bob-pw");
    let feed = bob.feed(None).await.unwrap();
    assert_eq!(feed.status, 200);
    assert!(String::from_utf8_lossy(&feed.body).contains("kept"));
    // dave's access code, made before the backup, still opens the hosted message.
    let fetched = fetch_as_dave(&gw, key).await.unwrap();
    assert_eq!(fetched.subject, "kept");
}
