//! `mailgate conformance`: run a protocol's suite (embedded from `tests/conformance/<protocol>/`)
//! against any server and print one line per case and a final `N passed, M failed` line.

pub mod case;
pub mod http;
mod tmtp;

use anyhow::{bail, Context};
use base64::Engine;
use case::{Case, CaseFile, HttpRequest, PacketSpec, Step, SuiteInfo, Transport, When};
use clap::Args;
use include_dir::{include_dir, Dir};
use regex::Regex;
use rustls::pki_types::ServerName;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::listener::Conn;

static SUITES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../tests/conformance");

/// Time allowed for one reply.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for one whole case.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply line read.
const MAX_REPLY: u64 = 16 * 1024 * 1024;

/// `mailgate conformance` options.
#[derive(Args)]
#[command(after_help = "\
What each suite expects of the server under test (also in tests/conformance/<protocol>/suite.toml):
  mmtp   MMTP on the target port; --account entries for local accounts; hashcash difficulty <= 5.
  immp   IMMP on the target port (plain TCP, TLS by UPGRADE); --account entries for local accounts.
  xhmtp  XHMTP over HTTP on the target port with the default prefix 'xhmtp'.
  smtp   SMTP on the target port (the MX listener, STARTTLS checked against --ca); --submission
         for the AUTH cases, --idle-secs for the timeout case; --account entries for local accounts.
  tmtp   TMTP over TLS on the target port (--tls --ca), open registration, an ack timeout of at
         most 10 s; --idle-secs with the login and idle timeouts for the timeout cases.
Run `mailgate conformance --protocol P --describe` to print a suite's requirements.")]
pub struct ConformanceArgs {
    /// Protocol suite: mmtp, immp, xhmtp or smtp.
    #[arg(long)]
    protocol: String,
    /// Server under test, HOST:PORT.
    #[arg(long, required_unless_present = "describe")]
    target: Option<String>,
    /// Connect with TLS from the first byte (needs --ca to trust the server's certificate).
    #[arg(long)]
    tls: bool,
    /// PEM file of the CA (or self-signed certificate) to trust with --tls and for in-band
    /// upgrades (IMMP `UPGRADE`).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// TLS server name (default: the target's host).
    #[arg(long)]
    server_name: Option<String>,
    /// An account on the server under test, ADDRESS:PASSWORD (repeatable).
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// The server's local domain (`${domain}` in cases).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The SMTP submission listener (STARTTLS, then AUTH), HOST:PORT, for the cases that
    /// need it.
    #[arg(long)]
    submission: Option<String>,
    /// The server's idle timeout in seconds (at most 25), for the cases that wait for it.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Run only cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// With --filter: only the case whose whole name is that text.
    #[arg(long, requires = "filter")]
    exact: bool,
    /// Print the suite's requirements and case names, and exit.
    #[arg(long)]
    describe: bool,
}

/// How a case ended.
enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

/// Run the suite; exit status 1 on any failure.
pub async fn run(args: ConformanceArgs) -> anyhow::Result<std::process::ExitCode> {
    let suite = SUITES.get_dir(&args.protocol).with_context(|| {
        let known: Vec<_> = SUITES
            .dirs()
            .map(|d| d.path().display().to_string())
            .collect();
        format!(
            "no suite for protocol {:?}; known: {}",
            args.protocol,
            known.join(", ")
        )
    })?;
    let info: SuiteInfo = toml::from_str(
        suite
            .get_file(suite.path().join("suite.toml"))
            .and_then(|f| f.contents_utf8())
            .context("suite.toml missing")?,
    )
    .context("suite.toml")?;
    let mut files: Vec<_> = suite
        .files()
        .filter(|f| {
            f.path().extension().is_some_and(|e| e == "toml")
                && f.path().file_name().is_some_and(|n| n != "suite.toml")
        })
        .collect();
    files.sort_by_key(|f| f.path().to_owned());

    if args.describe {
        println!("{} suite: {}", args.protocol, info.requires);
    }
    let runner = if args.describe {
        None
    } else {
        Some(Runner::new(&args)?)
    };
    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
    for file in files {
        let label = file.path().display().to_string();
        let parsed: Result<CaseFile, _> = toml::from_str(file.contents_utf8().unwrap_or_default());
        let cases = match parsed {
            Ok(f) => f.cases,
            Err(e) => {
                println!("FAILED {label}: cannot parse: {e}");
                failed += 1;
                continue;
            }
        };
        for case in cases {
            let selected = match &args.filter {
                None => true,
                Some(f) if args.exact => case.name == *f,
                Some(f) => case.name.contains(f.as_str()),
            };
            if !selected {
                continue;
            }
            let Some(runner) = &runner else {
                println!("{label}: {}", case.name);
                continue;
            };
            let transport = case.transport.unwrap_or(info.transport);
            let outcome = runner.run_case(&case, transport).await;
            match outcome {
                Outcome::Passed => {
                    passed += 1;
                    println!("ok      {label}: {}", case.name);
                }
                Outcome::Failed(why) => {
                    failed += 1;
                    println!("FAILED  {label}: {}: {why}", case.name);
                }
                Outcome::Skipped(why) => {
                    skipped += 1;
                    println!("skipped {label}: {}: {why}", case.name);
                }
            }
        }
    }
    if runner.is_none() {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// An account given with `--account`.
struct TestAccount {
    address: String,
    password: String,
    /// A generated OpenPGP key pair for the address: (secret, public), armored.
    key: Option<(String, String)>,
    /// The account's IMMP shared-secret hash `h`.
    immp_h: Option<String>,
}

struct Runner {
    target: String,
    submission: Option<String>,
    idle_secs: Option<u64>,
    host: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// For in-band upgrades.
    upgrade: Option<(TlsConnector, ServerName<'static>)>,
    accounts: Vec<TestAccount>,
    domain: String,
}

impl Runner {
    fn new(args: &ConformanceArgs) -> anyhow::Result<Self> {
        let target = args.target.clone().context("--target is required")?;
        let host = target
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            .context("--target must be HOST:PORT")?;
        let name = args.server_name.clone().unwrap_or_else(|| host.clone());
        let upgrade = match &args.ca {
            Some(ca) => Some(crate::tls::connector(ca, &name)?),
            None => None,
        };
        let tls = if args.tls {
            Some(upgrade.clone().context("--tls needs --ca PEM-FILE")?)
        } else {
            None
        };
        let mut accounts = Vec::new();
        for a in &args.accounts {
            let (address, password) = a
                .split_once(':')
                .with_context(|| format!("--account {a:?}: expected ADDRESS:PASSWORD"))?;
            let parsed = mailgate_core::Address::parse_any(address).ok();
            let key = parsed
                .as_ref()
                .and_then(|a| mailgate_core::pgp::generate_key(a).ok());
            let immp_h = parsed
                .as_ref()
                .map(|a| mailgate_immp::auth::derive_h(a, password));
            accounts.push(TestAccount {
                address: address.to_owned(),
                password: password.to_owned(),
                key,
                immp_h,
            });
        }
        if args.idle_secs.is_some_and(|s| s == 0 || s > 25) {
            bail!(
                "--idle-secs must be between 1 and 25 (a case may take at most {CASE_TIMEOUT:?})"
            );
        }
        Ok(Runner {
            target,
            submission: args.submission.clone(),
            idle_secs: args.idle_secs,
            host,
            tls,
            upgrade,
            accounts,
            domain: args.domain.clone(),
        })
    }

    /// A connection to the target (`submission`: to the `--submission` target, in plain text).
    async fn connect(&self, submission: bool) -> anyhow::Result<Conn> {
        let target = match (&self.submission, submission) {
            (Some(submission), true) => submission,
            _ => &self.target,
        };
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(target))
            .await
            .context("connect timed out")?
            .with_context(|| format!("cannot connect to {target}"))?;
        Ok(match &self.tls {
            // The submission target starts in plain text (STARTTLS).
            _ if submission => Box::new(tcp),
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake")?,
            ),
        })
    }

    fn variables(&self) -> HashMap<String, String> {
        let mut v = HashMap::new();
        v.insert("domain".into(), self.domain.clone());
        v.insert("host".into(), self.host.clone());
        v.insert(
            "port".into(),
            self.target.rsplit_once(':').map_or("", |t| t.1).to_owned(),
        );
        v.insert("uniq".into(), format!("{:016x}", rand::random::<u64>()));
        if let Some(secs) = self.idle_secs {
            v.insert("idle_secs".into(), secs.to_string());
        }
        v.insert(
            "now_ms".into(),
            mailgate_core::message::now_ms().to_string(),
        );
        for (i, a) in self.accounts.iter().enumerate() {
            v.insert(format!("account{i}"), a.address.clone());
            v.insert(format!("password{i}"), a.password.clone());
            if let Ok(addr) = mailgate_core::Address::parse_any(&a.address) {
                v.insert(format!("account{i}_local"), addr.local.clone());
                v.insert(format!("account{i}_domain"), addr.domain.clone());
                if let Ok(m) = addr.to_mmtp() {
                    v.insert(format!("account{i}_mmtp"), m);
                }
            }
            if let Some(h) = &a.immp_h {
                v.insert(format!("immp_h{i}"), h.clone());
            }
            if let Some((_, public)) = &a.key {
                v.insert(format!("account{i}_key"), public.clone());
                v.insert(format!("account{i}_key_len"), public.len().to_string());
                v.insert(
                    format!("account{i}_key_json"),
                    Value::String(public.clone()).to_string(),
                );
            }
        }
        v
    }

    async fn run_case(&self, case: &Case, transport: Transport) -> Outcome {
        if case.accounts > self.accounts.len() {
            return Outcome::Skipped(format!(
                "needs {} --account entries, {} given",
                case.accounts,
                self.accounts.len()
            ));
        }
        if case.submission && self.submission.is_none() {
            return Outcome::Skipped("needs --submission HOST:PORT".into());
        }
        if case.idle && self.idle_secs.is_none() {
            return Outcome::Skipped("needs --idle-secs".into());
        }
        match (case.when, self.tls.is_some()) {
            (Some(When::Tls), false) => return Outcome::Skipped("runs only with --tls".into()),
            (Some(When::Plain), true) => return Outcome::Skipped("runs only without --tls".into()),
            _ => {}
        }
        let mut vars = self.variables();
        match tokio::time::timeout(CASE_TIMEOUT, self.script(case, transport, &mut vars)).await {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(e)) => Outcome::Failed(format!("{e:#}")),
            Err(_) => Outcome::Failed(format!("case took longer than {CASE_TIMEOUT:?}")),
        }
    }

    async fn script(
        &self,
        case: &Case,
        transport: Transport,
        vars: &mut HashMap<String, String>,
    ) -> anyhow::Result<()> {
        if transport == Transport::Tmtp {
            return tmtp::script(self, case, vars).await;
        }
        let mut conn = match transport {
            Transport::Http => None,
            _ => Some(BufReader::new(self.connect(case.submission).await?)),
        };
        // Unsolicited lines read before a step expected them.
        let mut aside = Vec::new();
        for (i, step) in case.steps.iter().enumerate() {
            let r = match (&mut conn, &step.request) {
                (None, Some(req)) => self.http_step(step, req, vars).await,
                (None, None) => Err(anyhow::anyhow!("http steps need a request")),
                (Some(c), _) if step.starttls => self.starttls(c).await,
                (Some(c), _) => {
                    if let Some(spec) = &step.send_packet {
                        self.send_packet(c, spec, vars).await?;
                    }
                    stream_step(c, &mut aside, transport, step, vars).await
                }
            };
            r.with_context(|| format!("step {}", i + 1))?;
        }
        Ok(())
    }

    /// Switch the connection to TLS in place.
    async fn starttls(&self, conn: &mut BufReader<Conn>) -> anyhow::Result<()> {
        let (connector, name) = self
            .upgrade
            .clone()
            .context("starttls needs --ca PEM-FILE to check the server's certificate")?;
        if !conn.buffer().is_empty() {
            bail!("the server sent data after its upgrade reply");
        }
        let plain = std::mem::replace(conn, BufReader::new(Box::new(tokio::io::duplex(1).0)));
        let tls = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, plain.into_inner()))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        *conn = BufReader::new(Box::new(tls));
        Ok(())
    }

    /// Build an MMTP packet as the original client does, keep it, and send it as a SEND.
    async fn send_packet(
        &self,
        conn: &mut BufReader<Conn>,
        spec: &PacketSpec,
        vars: &mut HashMap<String, String>,
    ) -> anyhow::Result<()> {
        use mailgate_mmtp::client::PacketBuilder;
        let addr = |s: &str| -> anyhow::Result<mailgate_core::Address> {
            let text = subst(s, vars, false)?;
            mailgate_core::Address::parse_any(&text).with_context(|| format!("address {text:?}"))
        };
        let mut b = PacketBuilder::new(
            addr(&spec.from)?,
            addr(&spec.to)?,
            &subst(&spec.subject, vars, false)?,
            &subst(&spec.body, vars, false)?,
        );
        if let Some(k) = &spec.kind {
            b.kind = k.clone();
        }
        for (cat, values) in &spec.tags {
            let list = match cat.as_str() {
                "priority" => &mut b.tags.priority,
                "category" => &mut b.tags.category,
                "status" => &mut b.tags.status,
                "custom" => &mut b.tags.custom,
                other => bail!("unknown tag category {other:?}"),
            };
            for v in values {
                list.push(subst(v, vars, false)?);
            }
        }
        for a in &spec.attachments {
            let get = |k: &str| a.get(k).cloned().unwrap_or_default();
            b.attachments.push(mailgate_core::Part {
                name: get("name"),
                media_type: get("type"),
                data: get("text").into_bytes().into(),
                content: false,
            });
        }
        if let Some(n) = spec.sign_as {
            let key = self.accounts.get(n).and_then(|a| a.key.as_ref());
            b.sign_with = Some(key.context("sign_as: no key for that account")?.0.clone());
        }
        b.timestamp = Some(mailgate_core::message::now_ms() + spec.timestamp_offset_secs * 1000);
        let difficulty = match spec.difficulty {
            Some(d) => d,
            None => vars
                .get("difficulty")
                .and_then(|d| d.parse().ok())
                .unwrap_or(5),
        };
        let built = tokio::task::spawn_blocking(move || b.build(difficulty)).await??;
        let mut text = built.text;
        for [from, to] in &spec.edit {
            let (from, to) = (subst(from, vars, false)?, subst(to, vars, false)?);
            if !text.contains(&from) {
                bail!("edit: {from:?} not in the packet");
            }
            text = text.replace(&from, &to);
        }
        vars.insert("message_id".into(), built.message_id);
        if let Some(name) = &spec.save_as {
            vars.insert(name.clone(), text.clone());
        }
        if spec.send.unwrap_or(true) {
            let request = format!("{{\"action\":\"SEND\",\"data\":{{\"packet\":{text}}}}}");
            conn.get_mut().write_all(request.as_bytes()).await?;
        }
        Ok(())
    }

    async fn http_step(
        &self,
        step: &Step,
        req: &HttpRequest,
        vars: &mut HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let io = self.connect(false).await?;
        let mut headers = BTreeMap::new();
        for (k, v) in &req.headers {
            headers.insert(k.clone(), subst(v, vars, false)?);
        }
        let path = subst(&req.path, vars, false)?;
        let body = subst(&req.body, vars, false)?.into_bytes();
        let resp = tokio::time::timeout(
            STEP_TIMEOUT,
            http::send(io, &self.target, &req.method, &path, &headers, body),
        )
        .await
        .context("no response in time")??;
        if let Some(want) = step.status {
            if resp.status != want {
                bail!(
                    "status {} (expected {want}); body: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
            }
        }
        for (name, pattern) in step.headers.iter().flatten() {
            let re = anchored(&subst(pattern, vars, true)?)?;
            match resp.headers.get(&name.to_ascii_lowercase()) {
                Some(v) if re.is_match(v) => {}
                Some(v) => bail!("header {name}: {v:?} does not match {pattern:?}"),
                None => bail!("header {name} missing"),
            }
        }
        for (var, name) in step.capture_headers.iter().flatten() {
            let v = resp
                .headers
                .get(&name.to_ascii_lowercase())
                .with_context(|| format!("capture {var}: header {name} missing"))?;
            vars.insert(var.clone(), v.clone());
        }
        if let Some(pattern) = &step.body {
            let re = Regex::new(&subst(pattern, vars, true)?)?;
            let text = String::from_utf8_lossy(&resp.body);
            if !re.is_match(&text) {
                bail!("body does not match {pattern:?}: {text}");
            }
        }
        if step.expect.is_some() || step.matches.is_some() || step.capture.is_some() {
            let json: Value = serde_json::from_slice(&resp.body).with_context(|| {
                format!("body is not JSON: {}", String::from_utf8_lossy(&resp.body))
            })?;
            check_json(&json, step, vars)?;
        }
        Ok(())
    }
}

/// The next reply line, without its line end.
async fn next_line(conn: &mut BufReader<Conn>) -> anyhow::Result<String> {
    let mut buf = String::new();
    let n = tokio::time::timeout(
        STEP_TIMEOUT,
        (&mut *conn).take(MAX_REPLY).read_line(&mut buf),
    )
    .await
    .context("no reply in time")??;
    if n == 0 {
        bail!("connection closed while waiting for a reply");
    }
    Ok(buf.trim_end_matches(['\r', '\n']).to_owned())
}

/// Write a step's bytes: at once, or in pieces of `chunk` bytes with a pause between them.
async fn write_out(
    conn: &mut BufReader<Conn>,
    out: &[u8],
    chunk: Option<usize>,
) -> anyhow::Result<()> {
    match chunk {
        Some(n) if n > 0 => {
            for piece in out.chunks(n) {
                conn.get_mut().write_all(piece).await?;
                conn.get_mut().flush().await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        _ => conn.get_mut().write_all(out).await?,
    }
    conn.get_mut().flush().await?;
    Ok(())
}

/// At most this many unsolicited lines wait for a step that expects them.
const MAX_ASIDE: usize = 1_000;

/// The next line for a step: a waiting unsolicited line that `wanted` accepts, else the next
/// line read. An unsolicited line that `wanted` does not accept is set aside for a later step
/// (the server may show a live push before or after the reply to the command that caused it).
async fn next_wanted(
    conn: &mut BufReader<Conn>,
    aside: &mut Vec<String>,
    transport: Transport,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    if let Some(i) = aside.iter().position(|l| wanted(l)) {
        return Ok(aside.remove(i));
    }
    loop {
        let line = next_line(conn).await?;
        if !transport.unsolicited(&line) || wanted(&line) {
            return Ok(line);
        }
        if aside.len() >= MAX_ASIDE {
            bail!("more than {MAX_ASIDE} unsolicited lines nobody expected");
        }
        aside.push(line);
    }
}

async fn stream_step(
    conn: &mut BufReader<Conn>,
    aside: &mut Vec<String>,
    transport: Transport,
    step: &Step,
    vars: &mut HashMap<String, String>,
) -> anyhow::Result<()> {
    let acts = step.send.is_some()
        || step.send_raw.is_some()
        || step.send_packet.is_some()
        || step.expect.is_some()
        || step.matches.is_some()
        || step.capture.is_some()
        || step.expect_set.is_some()
        || step.expect_closed;
    if !acts || step.request.is_some() || step.starttls {
        bail!("a {transport:?} step needs send, send_raw, send_packet, expect, matches, capture or expect_closed (and no request)");
    }
    let mut out = Vec::new();
    if let Some(text) = &step.send {
        out.extend_from_slice(subst(text, vars, false)?.as_bytes());
        match transport {
            Transport::Line => out.push(b'\n'),
            Transport::Smtp => out.extend_from_slice(b"\r\n"),
            _ => {}
        }
    }
    if let Some(raw) = &step.send_raw {
        out.extend_from_slice(subst(raw, vars, false)?.as_bytes());
    }
    write_out(conn, &out, step.chunk).await?;
    if step.expect_closed {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(
            STEP_TIMEOUT,
            (&mut *conn).take(MAX_REPLY).read_to_end(&mut rest),
        )
        .await
        .context("connection still open")?;
        // A reset after the last reply counts as closed too.
        if n.is_ok() && !rest.is_empty() {
            bail!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
        return Ok(());
    }
    if let Some(patterns) = &step.expect_set {
        let mut left: Vec<Regex> = patterns
            .iter()
            .map(|p| anchored(&subst(p, vars, true)?))
            .collect::<anyhow::Result<_>>()?;
        while !left.is_empty() {
            let line = next_wanted(conn, aside, transport, |l| {
                left.iter().any(|re| re.is_match(l))
            })
            .await?;
            let line = line.as_str();
            let Some(i) = left.iter().position(|re| re.is_match(line)) else {
                bail!("reply {line:?} matches none of the expected {patterns:?}");
            };
            left.remove(i);
        }
        return Ok(());
    }
    let wants_reply = step.expect.is_some() || step.matches.is_some() || step.capture.is_some();
    if !wants_reply {
        return Ok(());
    }
    // The step's line pattern, when it has one.
    let expected = match (transport.lines(), &step.expect) {
        (true, Some(expect)) => Some(anchored(&subst(
            expect.as_str().unwrap_or_default(),
            vars,
            true,
        )?)?),
        _ => None,
    };
    let mut skipped = 0;
    let line = loop {
        let line = next_wanted(conn, aside, transport, |l| {
            expected.as_ref().is_none_or(|re| re.is_match(l))
        })
        .await?;
        let retry = match &expected {
            Some(re) if step.skip && skipped < 10_000 => !re.is_match(&line),
            _ => false,
        };
        if !retry {
            break line;
        }
        skipped += 1;
    };
    let line = line.as_str();
    match transport {
        Transport::Line | Transport::Smtp => {
            if let Some(expect) = &step.expect {
                let pattern = expect
                    .as_str()
                    .context("line transport: expect must be a regex string")?;
                let re = anchored(&subst(pattern, vars, true)?)?;
                if !re.is_match(line) {
                    bail!("reply {line:?} does not match {pattern:?}");
                }
            }
            for (name, pattern) in step.capture.iter().flatten() {
                let re = Regex::new(&subst(pattern, vars, true)?)?;
                let value = re
                    .captures(line)
                    .and_then(|c| c.get(1))
                    .with_context(|| format!("capture {name}: {pattern:?} not in {line:?}"))?;
                vars.insert(name.clone(), value.as_str().to_owned());
            }
            Ok(())
        }
        _ => {
            let json: Value = serde_json::from_str(line)
                .with_context(|| format!("reply is not one JSON object: {line:?}"))?;
            check_json(&json, step, vars)
        }
    }
}

fn check_json(json: &Value, step: &Step, vars: &mut HashMap<String, String>) -> anyhow::Result<()> {
    if let Some(expect) = &step.expect {
        let want = subst_json(serde_json::to_value(expect)?, vars)?;
        if !contains(json, &want) {
            bail!("reply {json} does not contain {want}");
        }
    }
    for (pointer, pattern) in step.matches.iter().flatten() {
        let re = Regex::new(&subst(pattern, vars, true)?)?;
        let got = json
            .pointer(pointer)
            .with_context(|| format!("{pointer} missing in {json}"))?;
        let text = got.as_str().map_or_else(|| got.to_string(), str::to_owned);
        if !re.is_match(&text) {
            bail!("{pointer} = {text:?} does not match {pattern:?}");
        }
    }
    for (name, pointer) in step.capture.iter().flatten() {
        let got = json
            .pointer(pointer)
            .with_context(|| format!("capture {name}: {pointer} missing in {json}"))?;
        let text = got.as_str().map_or_else(|| got.to_string(), str::to_owned);
        vars.insert(name.clone(), text);
    }
    Ok(())
}

/// Does `actual` contain `want`? Objects by subset (recursively), everything else exactly.
fn contains(actual: &Value, want: &Value) -> bool {
    match (actual, want) {
        (Value::Object(a), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| a.get(k).is_some_and(|av| contains(av, wv))),
        (Value::Array(a), Value::Array(w)) => {
            a.len() == w.len() && a.iter().zip(w).all(|(x, y)| contains(x, y))
        }
        _ => actual == want,
    }
}

fn anchored(pattern: &str) -> anyhow::Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).with_context(|| format!("bad regex {pattern:?}"))
}

/// The index of the `}` closing a `${` whose name starts `text`, skipping nested `${…}`.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'{' if i > 0 && b[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Replace `${name}` with variables; `escape` quotes values for use inside a regex.
fn subst(text: &str, vars: &HashMap<String, String>, escape: bool) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = closing_brace(after).with_context(|| format!("unclosed ${{ in {text:?}"))?;
        // Variables may nest: `${base64:${account0}:x}`.
        let name = &subst(&after[..end], vars, false)?;
        let value = if let Some(n) = name.strip_prefix("immp_response:") {
            // The IMMP AUTH RESPONSE of account N for the captured nonces n1 and n2.
            let get = |k: &str| {
                vars.get(k)
                    .with_context(|| format!("${{{name}}} needs the variable {k}"))
            };
            mailgate_immp::auth::response(get(&format!("immp_h{n}"))?, get("n1")?, get("n2")?)
        } else if let Some(text) = name.strip_prefix("base64:") {
            base64::engine::general_purpose::STANDARD.encode(text)
        } else if let Some(n) = name.strip_prefix("basic:") {
            // HTTP Basic credentials of account N: base64("<address>:<password>").
            let get = |k: String| {
                vars.get(&k)
                    .cloned()
                    .with_context(|| format!("${{{name}}} needs the variable {k}"))
            };
            let (user, pass) = (get(format!("account{n}"))?, get(format!("password{n}"))?);
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        } else if let Some((piece, count)) = name
            .strip_prefix("repeat:")
            .and_then(|r| r.rsplit_once(':'))
        {
            let count: usize = count
                .parse()
                .ok()
                .filter(|c| c * piece.len().max(1) <= MAX_REPLY as usize)
                .with_context(|| format!("bad repeat count in ${{{name}}}"))?;
            piece.repeat(count)
        } else {
            vars.get(name)
                .with_context(|| format!("unknown variable ${{{name}}}"))?
                .clone()
        };
        if escape {
            out.push_str(&regex::escape(&value));
        } else {
            out.push_str(&value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn subst_json(v: Value, vars: &HashMap<String, String>) -> anyhow::Result<Value> {
    Ok(match v {
        Value::String(s) => Value::String(subst(&s, vars, false)?),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| subst_json(x, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, x)| Ok((k, subst_json(x, vars)?)))
                .collect::<anyhow::Result<_>>()?,
        ),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A live push shown before the reply to the command that caused it, and another case's
    /// push in between, still let the case's steps match in order.
    #[tokio::test]
    async fn unsolicited_lines_wait_for_the_step_that_expects_them() {
        let (client, mut server) = tokio::io::duplex(4096);
        server
            .write_all(b"150 PUSH other\n150 PUSH mine\n274 id delivered\n250 OK\n")
            .await
            .unwrap();
        let mut conn: BufReader<Conn> = BufReader::new(Box::new(client));
        let mut aside = Vec::new();
        let mut vars = HashMap::new();
        for (expect, ok) in [
            ("274 .*", true),
            ("150 PUSH mine", true),
            ("250 .*", true),
            ("150 PUSH mine", false),
        ] {
            let step: Step = toml::from_str(&format!("expect = '{expect}'")).unwrap();
            let r = tokio::time::timeout(
                Duration::from_secs(1),
                stream_step(&mut conn, &mut aside, Transport::Line, &step, &mut vars),
            )
            .await;
            assert_eq!(matches!(r, Ok(Ok(()))), ok, "{expect}: {r:?}");
        }
        assert_eq!(aside, ["150 PUSH other"]);
    }

    #[test]
    fn subset_matching() {
        let a = json!({"status":"OK","features":{"tls":true,"pgp":false},"n":[1,2]});
        assert!(contains(&a, &json!({"status":"OK"})));
        assert!(contains(&a, &json!({"features":{"tls":true}})));
        assert!(!contains(&a, &json!({"features":{"tls":false}})));
        assert!(!contains(&a, &json!({"n":[1]})));
        assert!(!contains(&a, &json!({"missing":1})));
    }

    #[test]
    fn variables() {
        let mut v = HashMap::new();
        v.insert("a".to_string(), "x.y".to_string());
        assert_eq!(subst("<${a}>", &v, false).unwrap(), "<x.y>");
        assert_eq!(subst("<${a}>", &v, true).unwrap(), "<x\\.y>");
        assert!(subst("${b}", &v, false).is_err());
        assert!(subst("${a", &v, false).is_err());
        assert_eq!(subst("${repeat:ab:3}", &v, false).unwrap(), "ababab");
        assert_eq!(subst("${base64:a:b}", &v, false).unwrap(), "YTpi");
        let mut v2 = v.clone();
        v2.insert("who".into(), "a".into());
        assert_eq!(subst("x${base64:${who}:b}y", &v2, false).unwrap(), "xYTpiy");
        assert!(subst("${repeat:ab:x}", &v, false).is_err());
    }

    #[test]
    fn every_embedded_suite_parses() {
        for dir in SUITES.dirs() {
            let suite = dir.get_file(dir.path().join("suite.toml")).unwrap();
            let _: SuiteInfo = toml::from_str(suite.contents_utf8().unwrap()).unwrap();
            for f in dir.files() {
                let name = f.path().file_name().unwrap();
                if f.path().extension().is_some_and(|e| e == "toml") && name != "suite.toml" {
                    let cf: CaseFile = toml::from_str(f.contents_utf8().unwrap())
                        .unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
                    assert!(!cf.cases.is_empty());
                }
            }
        }
    }
}
