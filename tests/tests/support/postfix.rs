//! A real Postfix (Debian's package) for a test: its own configuration, queue and maildir
//! under a temporary directory, listening on one loopback address, holding mail for one
//! virtual domain in a single maildir, and relaying other domains as its transport map says.
//! Postfix must run its master as root; the tests skip when Postfix is not installed, except
//! in CI (`CI` set), where its absence fails them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running Postfix instance.
pub struct Postfix {
    dir: PathBuf,
    /// Where its smtpd listens.
    pub addr: SocketAddr,
}

/// Is Postfix here? `false` means skip; in CI it must be.
pub fn available() -> bool {
    let here = Path::new("/usr/sbin/postfix").exists() && Path::new("/usr/bin/swaks").exists();
    if !here && std::env::var_os("CI").is_some() {
        panic!("CI must install postfix and swaks (.ci/run does)");
    }
    if !here {
        eprintln!("skipped: postfix and swaks are not installed");
    }
    here
}

/// A free port on `ip` (bound and let go; Postfix binds it next).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn id(flag: &str) -> String {
    let out = Command::new("id")
        .args([flag, "postfix"])
        .output()
        .expect("id postfix");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Postfix {
    /// Start Postfix on `addr` as the MX of `domain`, with the TLS certificate `cert`/`key`,
    /// trusting `ca` when it relays, and `transport` as its transport map (`inline:{…}`).
    pub fn start(
        dir: &Path,
        addr: SocketAddr,
        domain: &str,
        (cert, key, ca): (&Path, &Path, &Path),
        transport: &str,
    ) -> Postfix {
        let dir = dir.join("postfix");
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // Postfix's daemons run as the postfix user: they must reach the queue and maildir.
        let mut p = dir.clone();
        while p.parent().is_some() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            if mode & 0o005 != 0o005 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o755))
                    .unwrap();
            }
            p = p.parent().unwrap().to_owned();
        }
        let (uid, gid) = (id("-u"), id("-g"));
        let d = dir.display();
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             myhostname = mx.{domain}\n\
             mydomain = {domain}\n\
             mydestination =\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             smtp_bind_address = {ip}\n\
             mynetworks = 127.0.0.0/8\n\
             virtual_mailbox_domains = {domain}\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = static:maildir/\n\
             virtual_uid_maps = static:{uid}\n\
             virtual_gid_maps = static:{gid}\n\
             virtual_minimum_uid = 1\n\
             alias_maps =\n\
             alias_database =\n\
             notify_classes =\n\
             maillog_file_prefixes = {d}\n\
             maillog_file = {d}/maillog\n\
             smtputf8_enable = yes\n\
             smtpd_tls_cert_file = {cert}\n\
             smtpd_tls_key_file = {key}\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_loglevel = 1\n\
             smtp_tls_security_level = may\n\
             smtp_tls_CAfile = {ca}\n\
             smtp_tls_loglevel = 1\n\
             smtp_host_lookup = native\n\
             relay_domains = static:all\n\
             transport_maps = {transport}\n\
             message_size_limit = 20480000\n",
            ip = addr.ip(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.display(),
        );
        std::fs::write(dir.join("conf/main.cf"), main).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
        let master: String = master
            .lines()
            .map(|l| {
                if l.starts_with("smtp      inet") {
                    format!("{addr} inet n - n - - smtpd")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("conf/master.cf"), master + "\n").unwrap();
        for owned in ["data", "mail"] {
            let status = Command::new("chown")
                .args(["postfix", &dir.join(owned).display().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let pf = Postfix { dir, addr };
        let out = pf.postfix(&["start"]);
        assert!(
            out.status.success(),
            "postfix start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            pf.log()
        );
        let what = super::Later(|| format!("postfix listening on {addr}: {}", pf.log()));
        super::eventually(Duration::from_secs(30), what, || {
            std::net::TcpStream::connect(addr).ok()
        });
        pf
    }

    fn postfix(&self, args: &[&str]) -> std::process::Output {
        Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.dir.join("conf"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The files in its one maildir (`new/` and `cur/`), oldest first.
    pub fn maildir(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.join("mail/maildir").join(sub)) {
                out.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
        out.sort();
        out
    }

    /// Wait (bounded) until the maildir holds `n` messages; their contents.
    pub fn wait_for_mail(&self, n: usize) -> Vec<Vec<u8>> {
        let what = super::Later(|| {
            format!(
                "postfix holding {n} messages (it has {}); its log:\n{}",
                self.maildir().len(),
                self.log()
            )
        });
        let files = super::eventually(Duration::from_secs(90), what, || {
            let files = self.maildir();
            (files.len() >= n).then_some(files)
        });
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    /// Wait (bounded) until its log has a line containing every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let what = super::Later(|| format!("a log line with {needles:?}:\n{}", self.log()));
        super::eventually(Duration::from_secs(90), what, || {
            let log = self.log();
            log.lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned)
        })
    }

    /// `swaks` through this Postfix: `args` after `--server`.
    pub fn swaks(&self, args: &[&str]) -> String {
        let out = Command::new("swaks")
            .arg("--server")
            .arg(self.addr.to_string())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "swaks failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix(&["stop"]);
    }
}
