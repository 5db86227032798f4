//! Every conformance case of every suite as its own test, against real `serve` processes: one
//! gateway (e2e.test) for the MMTP (plain and TLS), IMMP and XHMTP suites, one (a.test, a 3 s
//! idle timeout, a postmaster) for the SMTP suite, one (t.test, open registration, short
//! timeouts) for the TMTP suite. A red case is one red line:
//! `cargo test -p mailgate-tests --test conformance -- 'smtp: '` runs one suite.

mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use support::{config_with, run, Gateway};

/// A suite run: the protocol, a name for the report, and how to reach the server.
struct Suite {
    protocol: &'static str,
    label: &'static str,
    args: Vec<String>,
}

/// The gateways under test, started when the first case runs.
struct Servers {
    suites: Vec<Suite>,
    // Before `dir`, so the gateways stop before their directory is removed.
    _gateways: std::sync::Mutex<Vec<Gateway>>,
    dir: tempfile::TempDir,
}

fn start() -> Servers {
    let dir = tempfile::tempdir().unwrap();
    let seeds = dir.path().join("seeds");
    let smtp_dir = dir.path().join("smtp");
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::create_dir_all(&smtp_dir).unwrap();

    let gw = Gateway::start(&seeds, Some(&config_with(&seeds, "e2e.test", "")));
    gw.add_user("alice@e2e.test", "s3cret");
    gw.add_user("bob@e2e.test", "pw2");
    let ca = seeds.join("data/tls/cert.pem").display().to_string();
    let seed_args = |key: &str, tls: bool| {
        let mut a = vec![
            "--target".to_owned(),
            gw.addr(key).to_owned(),
            "--server-name".into(),
            "localhost".into(),
            "--domain".into(),
            "e2e.test".into(),
            "--account".into(),
            "alice@e2e.test:s3cret".into(),
            "--account".into(),
            "bob@e2e.test:pw2".into(),
            "--ca".into(),
            ca.clone(),
        ];
        if tls {
            a.push("--tls".into());
        }
        a
    };
    let mut suites = vec![
        Suite {
            protocol: "mmtp",
            label: "mmtp",
            args: seed_args("mmtp.listen", false),
        },
        Suite {
            protocol: "mmtp",
            label: "mmtp-tls",
            args: seed_args("mmtp.tls_listen", true),
        },
        Suite {
            protocol: "immp",
            label: "immp",
            args: seed_args("immp.listen", false),
        },
        Suite {
            protocol: "xhmtp",
            label: "xhmtp",
            args: seed_args("xhmtp.listen", false),
        },
    ];

    // A short idle timeout, so the SMTP suite's timeout case runs too; a.test has no
    // postmaster account: bob takes its mail.
    let config = config_with(&smtp_dir, "a.test", "requests_per_sec = 0.0")
        .replace("[admin]", "[limits]\nread_timeout_secs = 3\n[admin]")
        .replace("[smtp]\n", "[smtp]\npostmaster = \"bob@a.test\"\n");
    let smtp = Gateway::start(&smtp_dir, Some(&config));
    smtp.add_user("bob@a.test", "bob-pw");
    suites.push(Suite {
        protocol: "smtp",
        label: "smtp",
        args: vec![
            "--target".into(),
            smtp.addr("smtp.listen").to_owned(),
            "--server-name".into(),
            "localhost".into(),
            "--submission".into(),
            smtp.addr("smtp.submission_listen").to_owned(),
            "--idle-secs".into(),
            "3".into(),
            "--domain".into(),
            "a.test".into(),
            "--account".into(),
            "bob@a.test:bob-pw".into(),
            "--ca".into(),
            smtp_dir.join("data/tls/cert.pem").display().to_string(),
        ],
    });
    // TMTP: open registration (each case registers its own members), short login, idle and
    // ack timeouts so the cases about them finish quickly.
    let tmtp_dir = dir.path().join("tmtp");
    std::fs::create_dir_all(&tmtp_dir).unwrap();
    let config = config_with(&tmtp_dir, "t.test", "")
        + "registration = \"open\"\nregistrations_per_hour = 100000\n\
           login_timeout_secs = 3\nidle_timeout_secs = 3\nack_timeout_secs = 2\n";
    let tmtp = Gateway::start(&tmtp_dir, Some(&config));
    suites.push(Suite {
        protocol: "tmtp",
        label: "tmtp",
        args: vec![
            "--target".into(),
            tmtp.addr("tmtp.listen").to_owned(),
            "--server-name".into(),
            "localhost".into(),
            "--tls".into(),
            "--idle-secs".into(),
            "3".into(),
            "--domain".into(),
            "t.test".into(),
            "--ca".into(),
            tmtp_dir.join("data/tls/cert.pem").display().to_string(),
        ],
    });
    Servers {
        suites,
        _gateways: std::sync::Mutex::new(vec![gw, smtp, tmtp]),
        dir,
    }
}

/// The case names of a suite, from `mailgate conformance --describe`.
fn cases(protocol: &str) -> Vec<String> {
    let out = run(
        &["conformance", "--protocol", protocol, "--describe"],
        None,
        Path::new("."),
    );
    assert!(out.status.success(), "{protocol} --describe failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(".toml: ").map(|(_, name)| name.to_owned()))
        .collect()
}

/// Run one case; its output line says how it went.
fn run_case(servers: &Servers, label: &str, name: &str) -> Result<(), Failed> {
    let suite = servers.suites.iter().find(|s| s.label == label).unwrap();
    let mut args = vec![
        "conformance",
        "--protocol",
        suite.protocol,
        "--filter",
        name,
        "--exact",
    ];
    args.extend(suite.args.iter().map(String::as_str));
    let out = run(&args, None, servers.dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.ends_with(name) || l.contains(&format!(": {name}: ")))
        .unwrap_or_default();
    if out.status.success() && (line.starts_with("ok") || line.starts_with("skipped")) {
        Ok(())
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)).into())
    }
}

fn main() {
    let args = Arguments::from_args();
    let servers: Arc<OnceLock<Servers>> = Arc::new(OnceLock::new());
    let mut trials = Vec::new();
    for (protocol, label) in [
        ("mmtp", "mmtp"),
        ("mmtp", "mmtp-tls"),
        ("immp", "immp"),
        ("xhmtp", "xhmtp"),
        ("smtp", "smtp"),
        ("tmtp", "tmtp"),
    ] {
        for name in cases(protocol) {
            let servers = servers.clone();
            trials.push(Trial::test(format!("{label}: {name}"), move || {
                run_case(servers.get_or_init(start), label, &name)
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    // `exit` runs no destructors: stop the gateways (children of this process) and remove
    // their directory first, or every run would leave them behind.
    if let Some(servers) = Arc::into_inner(servers).and_then(OnceLock::into_inner) {
        drop(servers);
    }
    conclusion.exit();
}
