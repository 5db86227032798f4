//! A PostgreSQL server for tests: the one `MAILGATE_TEST_PG` names (a `postgres://` URL to a
//! server where the user may create databases; `.ci/run` starts one), or else a throw-away
//! cluster this test process makes with `initdb` and runs until it exits — as the `postgres`
//! user when the tests run as root, because PostgreSQL refuses to run as root.
//!
//! When neither is possible the PostgreSQL cases say why and pass without running, except
//! under CI (`CI` set), where they fail: they must never be skipped silently there.
//! Each test gets a database of its own.

#![allow(dead_code)] // Each test crate that includes this file uses part of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A server to test against.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// URL of the server's `postgres` database (TCP on 127.0.0.1).
    pub url: String,
    /// The CA certificate of the server's TLS certificate, when it has TLS.
    pub ca: Option<PathBuf>,
}

impl PgServer {
    /// The URL of database `name` (TCP, TLS as the server's default allows).
    pub fn database_url(&self, name: &str) -> String {
        let mut url = url::Url::parse(&self.url).expect("MAILGATE_TEST_PG is a URL");
        url.set_path(&format!("/{name}"));
        url.to_string()
    }

    /// Create a fresh database (dropping one of that name first); its URL.
    pub async fn fresh_database(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url));
        tokio::spawn(conn);
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name} TEMPLATE template0"),
        ] {
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        self.database_url(name)
    }

    /// Create the database `name` unless it exists; its URL.
    pub async fn database(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url));
        tokio::spawn(conn);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .unwrap()
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
                .await
                .unwrap_or_else(|e| panic!("cannot create database {name}: {e:?}"));
        }
        self.database_url(name)
    }
}

/// A database name for `key` (a test's directory, a test's name).
pub fn database_name(key: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("t_{:016x}", h.finish())
}

/// The server, or `None` (with the reason printed) when there is none and none can be
/// started outside CI.
pub fn server() -> Option<PgServer> {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let found = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("MAILGATE_TEST_PG") {
            let ca = std::env::var_os("MAILGATE_TEST_PG_CA").map(PathBuf::from);
            return Ok(PgServer { url, ca });
        }
        start_cluster()
    });
    match found {
        Ok(s) => Some(s.clone()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("no PostgreSQL server for the PostgreSQL tests under CI: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: PostgreSQL cases need MAILGATE_TEST_PG or initdb/postgres: {why}");
            None
        }
    }
}

/// The directory of the newest PostgreSQL server binaries on the machine.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install Debian's postgresql)"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| "no server under /usr/lib/postgresql".into())
}

/// The uid and gid to run the server as: ours, or the `postgres` user's when we are root.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| "running as root and there is no postgres user to run the server as".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54329)
}

/// Make a cluster in a temp directory and run its server until this process exits.
fn start_cluster() -> Result<PgServer, String> {
    let bin = bin_dir()?;
    let user = run_as()?;
    let dir = std::env::temp_dir().join(format!("mailgate-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let data = dir.join("data");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    write_certificate(&cert, &key)?;
    if let Some((uid, gid)) = user {
        for p in [&dir, &cert, &key] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args([
            "-A",
            "trust",
            "-U",
            "mailgate",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut initdb, user);
    let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let port = free_port();
    let (tx, rx) = std::sync::mpsc::channel();
    let bin2 = bin.clone();
    let dir2 = dir.clone();
    // The server is a child of a thread that lives as long as the process: it gets SIGTERM
    // when the process exits (the parent-death signal follows the spawning thread).
    std::thread::spawn(move || {
        let mut cmd = Command::new(bin2.join("postgres"));
        cmd.arg("-D")
            .arg(dir2.join("data"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("port={port}"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir2.display()))
            .args(["-c", "ssl=on", "-c"])
            .arg(format!(
                "ssl_cert_file={}",
                dir2.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!(
                "ssl_key_file={}",
                dir2.join("server.key").display()
            ))
            .args(["-c", "max_connections=300", "-c", "fsync=on"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut cmd, user);
        // SAFETY: prctl is async-signal-safe; it runs in the child after the uid change.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(format!("postgres: {e}")));
            }
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let url = format!("postgres://mailgate@127.0.0.1:{port}/postgres?sslmode=disable");
    wait_ready(&bin, port, Duration::from_secs(30))?;
    Ok(PgServer {
        url,
        ca: Some(cert),
    })
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn wait_ready(bin: &Path, port: u16, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let ok = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("the test server on port {port} did not come up"))
}

/// A self-signed certificate for 127.0.0.1 (it is its own CA).
fn write_certificate(cert: &Path, key: &Path) -> Result<(), String> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(|e| e.to_string())?;
    std::fs::write(cert, generated.cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(key, generated.key_pair.serialize_pem()).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
}
