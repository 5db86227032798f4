//! Start and stop `mailgate serve` (as `mailgate-e2e`) for end-to-end tests.
#![allow(dead_code)] // each test binary uses part of this module

pub mod clients;
pub mod immp;
pub mod net;
pub mod postfix;
pub mod site;
pub mod smtp;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Call `check` until it gives a value, at most until `within` has passed (then fail, saying
/// what did not happen). The one poll loop of the tests.
pub fn eventually<T>(
    within: Duration,
    what: impl std::fmt::Display,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A description made only when it is shown (a log read when a wait fails).
pub struct Later<F: Fn() -> String>(pub F);

impl<F: Fn() -> String> std::fmt::Display for Later<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// [`eventually`] for checks that await, every 100 ms.
pub async fn eventually_async<T, F, Fut>(
    within: Duration,
    what: impl std::fmt::Display,
    check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_every(within, Duration::from_millis(100), what, check).await
}

/// [`eventually_async`], checking every `every`.
pub async fn eventually_every<T, F, Fut>(
    within: Duration,
    every: Duration,
    what: impl std::fmt::Display,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Path of the program under test.
pub fn mailgate() -> &'static str {
    env!("CARGO_BIN_EXE_mailgate-e2e")
}

/// Run a `mailgate` command to completion.
pub fn run(args: &[&str], stdin: Option<&str>, cwd: &Path) -> Output {
    let mut child = Command::new(mailgate())
        .args(args)
        .current_dir(cwd)
        .env_remove("MAILGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mailgate");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

/// Run a `mailgate` command that must succeed (its stderr is shown when it does not).
pub fn run_ok(args: &[&str], stdin: Option<&str>, cwd: &Path) -> Output {
    let out = run(args, stdin, cwd);
    assert!(
        out.status.success(),
        "mailgate {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running gateway.
pub struct Gateway {
    pub child: Child,
    /// Listener key (`mmtp.listen`, …) → bound address.
    pub addrs: HashMap<String, String>,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// What verifies its TLS certificate: the CA file and the name to check (by default its
    /// self-signed certificate, for `localhost`).
    pub trust: (PathBuf, String),
    lines: mpsc::Receiver<String>,
}

/// A config with every listener on 127.0.0.1 port 0, and extra lines in the `[mmtp]` section;
/// its look-ups go to [`empty_dns`].
pub fn config_with(dir: &Path, domain: &str, mmtp_extra: &str) -> String {
    config_with_dns(dir, domain, mmtp_extra, empty_dns())
}

/// An authoritative DNS server for the `test.` zone with no records (every name of it
/// NXDOMAIN, other names refused), one per test binary: look-ups of gateways started with
/// [`config_with`] stay on loopback and are answered at once.
pub fn empty_dns() -> std::net::SocketAddr {
    static DNS: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *DNS.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the test DNS server");
            runtime.block_on(async {
                let _ = tx.send(net::dns_server(Vec::new()).await);
                std::future::pending::<()>().await
            })
        });
        rx.recv().expect("the test DNS server starts")
    })
}

/// [`config_with`], its look-ups going to `dns`.
pub fn config_with_dns(
    dir: &Path,
    domain: &str,
    mmtp_extra: &str,
    dns: std::net::SocketAddr,
) -> String {
    format!(
        r#"data_dir = "{}"
domains = ["{domain}"]
[admin]
listen = "127.0.0.1:0"
[mmtp]
listen = "127.0.0.1:0"
tls_listen = "127.0.0.1:0"
{mmtp_extra}
[immp]
listen = "127.0.0.1:0"
[xhmtp]
listen = "127.0.0.1:0"
[smtp]
listen = "127.0.0.1:0"
submission_listen = "127.0.0.1:0"
submissions_listen = "127.0.0.1:0"
[dns]
servers = ["{dns}"]
[tmtp]
listen = "127.0.0.1:0"
"#,
        dir.join("data").display()
    )
}

impl Gateway {
    /// Start `mailgate serve` with `config` (written to `dir/mailgate.toml`; `None`: no config
    /// file at all) and wait until it says it is ready.
    pub fn start(dir: &Path, config: Option<&str>) -> Gateway {
        Self::start_with(dir, config, |_| {})
    }

    /// [`Gateway::start`], with `adjust` applied to the command first. The gateway's log
    /// (stderr) goes to `dir/mailgate.log`.
    pub fn start_with(
        dir: &Path,
        config: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Gateway {
        let mut cmd = Command::new(mailgate());
        adjust(&mut cmd);
        Self::start_command(dir, config, cmd)
    }

    /// `mailgate serve` with its embedded defaults in a network namespace of its own (`unshare
    /// --net`, loopback up), so the default ports are free whatever runs on this machine.
    /// `None` when namespaces cannot be made here (not root, or no `unshare`).
    pub fn start_in_own_network(dir: &Path) -> Option<Gateway> {
        let works = Command::new("unshare")
            .args(["--net", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to make network namespaces (unshare --net)"
            );
            eprintln!("skipped: cannot make a network namespace here");
            return None;
        }
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
            mailgate(),
        ]);
        Some(Self::start_command(dir, None, cmd))
    }

    /// Run a `mailgate` command inside this gateway's network namespace (see
    /// [`Gateway::start_in_own_network`]).
    pub fn run_inside(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg(mailgate())
            .args(args)
            .current_dir(&self.dir)
            .env_remove("MAILGATE_CONFIG")
            .output()
            .expect("nsenter")
    }

    /// Start `cmd` (a `mailgate`, arguments so far) as `serve`.
    fn start_command(dir: &Path, config: Option<&str>, mut cmd: Command) -> Gateway {
        let path = dir.join("mailgate.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mailgate.log"))
            .expect("open the gateway's log file");
        cmd.current_dir(dir)
            .env_remove("MAILGATE_CONFIG")
            .arg("serve");
        if let Some(text) = config {
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(&path);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mailgate serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = HashMap::new();
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let status = child.wait();
                let log = std::fs::read_to_string(dir.join("mailgate.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "mailgate serve did not become ready ({status:?}); the end of its log:\n{}",
                    tail.join("\n")
                );
            };
            if line == "mailgate: ready" {
                break;
            }
            if let Some(rest) = line.strip_prefix("mailgate: ") {
                if let Some((key, addr)) = rest.split_once(" listening on ") {
                    addrs.insert(key.to_owned(), addr.to_owned());
                }
            }
        }
        Gateway {
            child,
            addrs,
            dir: dir.to_owned(),
            config: path,
            trust: (dir.join("data/tls/cert.pem"), "localhost".to_owned()),
            lines: rx,
        }
    }

    /// Its certificate is `domain`'s from the test CA in `ca_dir` (`Site::ca`).
    pub fn with_ca(mut self, ca_dir: &Path, domain: &str) -> Gateway {
        self.trust = (ca_dir.join("ca.pem"), domain.to_owned());
        self
    }

    /// A TLS connector that verifies this gateway, and the name to verify.
    pub fn connector(
        &self,
    ) -> (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ) {
        mailgate::tls::connector(&self.trust.0, &self.trust.1).unwrap()
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mailgate.log")).unwrap_or_default()
    }

    /// Peak and current resident memory of the gateway process, bytes (`VmHWM`, `VmRSS`).
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// GET a path on the admin listener: status code and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.addr("admin.listen"), path)
    }

    /// The bound address of a listener.
    pub fn addr(&self, key: &str) -> &str {
        self.addrs
            .get(key)
            .unwrap_or_else(|| panic!("no listener {key}"))
    }

    /// Create an account through the CLI (works while serve runs).
    pub fn add_user(&self, address: &str, password: &str) {
        let config = self.config.to_str().unwrap();
        let args = [
            "user",
            "add",
            address,
            "--password-stdin",
            "--config",
            config,
        ];
        run_ok(&args, Some(&format!("{password}\n")), &self.dir);
    }

    /// `mailgate user node add`: a TMTP node for `address`; the printed uid and node secret.
    pub fn add_tmtp_node(&self, address: &str, label: &str) -> (String, String) {
        let config = self.config.to_str().unwrap();
        let out = run_ok(
            &["user", "node", "add", address, label, "--config", config],
            None,
            &self.dir,
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}\t")))
                .unwrap_or_else(|| panic!("no {name} in {text:?}"))
                .to_owned()
        };
        (field("uid"), field("node"))
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit; returns the exit status and remaining stdout lines.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(10)) {
            rest.push(l);
        }
        (status, rest)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`: status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect for GET");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A TCP connection from a chosen loopback source address (127.x.y.z), for tests that need
/// several peers.
pub async fn connect_from(
    source: std::net::IpAddr,
    target: &str,
) -> std::io::Result<tokio::net::TcpStream> {
    let target: std::net::SocketAddr = target.parse().expect("target address");
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(target).await
}
