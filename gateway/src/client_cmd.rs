//! `mailgate send` and `mailgate receive`: talk to any server with a protocol's client.

use crate::config::Config;
use anyhow::Context;
use clap::{Args, ValueEnum};
use mailgate_core::Address;
use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
use mailgate_xhmtp::client::XhmtpClient;
use mailgate_xhmtp::wire::SubmitRequest;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

/// Protocols the client commands speak.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ClientProtocol {
    /// MMTP (JSON over TCP).
    Mmtp,
    /// IMMP (line protocol; always upgrades to TLS, so --ca is needed; --login is required).
    Immp,
    /// XHMTP (HTTP; --login is required for send; receive logs in as --email).
    Xhmtp,
    /// TMTP (always TLS, so --ca is needed; --login is the member's uid, standard input its
    /// node secret; --to is a uid).
    Tmtp,
}

/// Where and how to connect.
#[derive(Args)]
pub struct Connection {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value = "mmtp")]
    protocol: ClientProtocol,
    /// Server, HOST:PORT (default: this gateway's listener for the protocol, as --config
    /// sets it; with --tls its TLS listener).
    #[arg(long)]
    server: Option<String>,
    /// Connect with TLS (MMTP's TLS port, XHMTP over HTTPS; IMMP always upgrades to TLS).
    #[arg(long)]
    tls: bool,
    /// CA or self-signed certificate to trust (default: the certificate this gateway
    /// generated, <data_dir>/tls/cert.pem, when it uses one).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// TLS server name to verify (default: the host of --server when it is a name, else
    /// the gateway's first domain).
    #[arg(long)]
    tls_name: Option<String>,
    /// Authenticate as this account (password from the first line of standard input).
    #[arg(long)]
    login: Option<String>,
    /// XHMTP path prefix of the server (default: the configured `[xhmtp] prefix`).
    #[arg(long)]
    prefix: Option<String>,
}

/// `mailgate send` options.
#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    conn: Connection,
    /// Sender address (default: the --login account; IMMP and XHMTP send as the logged-in
    /// account only).
    #[arg(long)]
    from: Option<String>,
    /// Recipient address.
    #[arg(long)]
    to: String,
    /// Subject.
    #[arg(long, default_value = "")]
    subject: String,
    /// Body text.
    #[arg(long, default_value = "")]
    body: String,
    /// Tag as CATEGORY=VALUE (priority, category, status, custom); repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Sign with this armored, unprotected secret key file.
    #[arg(long)]
    sign_key: Option<PathBuf>,
    /// Encrypt to this armored public key file.
    #[arg(long)]
    encrypt_key: Option<PathBuf>,
}

/// `mailgate receive` options.
#[derive(Args)]
#[command(after_help = "What reading does to the mailbox:
  mmtp   RECEIVE removes every message it returns (the protocol has no other read); --keep is
         refused.
  immp   prints the INBOX index and removes nothing; with --fetch each message is fetched and
         marked read, unless --keep.
  xhmtp  prints the feed and removes nothing; --fetch fetches each message (nothing changes).
  tmtp   prints the node's queued messages and acknowledges each (it leaves the node's queue;
         mail stays in the INBOX for the other protocols); --keep acknowledges nothing.")]
pub struct ReceiveArgs {
    #[command(flatten)]
    conn: Connection,
    /// Mailbox to read (default: the --login account).
    #[arg(long)]
    email: Option<String>,
    /// At most this many messages.
    #[arg(long)]
    limit: Option<u32>,
    /// IMMP and XHMTP: also fetch each message (XHMTP: from the sender's server).
    #[arg(long)]
    fetch: bool,
    /// Leave the mailbox as it is: IMMP fetches without marking read. MMTP cannot read
    /// without removing, so it refuses --keep.
    #[arg(long)]
    keep: bool,
}

/// Where a client command connects, resolved once from its options and the configuration.
struct Target {
    /// HOST:PORT.
    server: String,
    /// The name the server's certificate is checked for.
    tls_name: String,
    /// The certificate file to trust, when there is one.
    ca: Option<PathBuf>,
    /// The XHMTP path prefix.
    prefix: String,
}

/// The address a client reaches a listener on: its own, with an unspecified address replaced
/// by the loopback address of its family.
fn reachable(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port()).to_string()
}

impl Connection {
    /// Where to connect: --server, else the configured listener of the protocol.
    fn target(&self, config: &Config) -> anyhow::Result<Target> {
        let server = match &self.server {
            Some(s) => s.clone(),
            None => {
                let listen = match (self.protocol, self.tls) {
                    (ClientProtocol::Mmtp, false) => Some(config.mmtp.listen),
                    (ClientProtocol::Mmtp, true) => config.mmtp.tls_listen,
                    (ClientProtocol::Immp, _) => Some(config.immp.listen),
                    (ClientProtocol::Xhmtp, false) => Some(config.xhmtp.listen),
                    (ClientProtocol::Xhmtp, true) => config.xhmtp.tls_listen,
                    (ClientProtocol::Tmtp, _) => Some(config.tmtp.listen),
                };
                reachable(listen.with_context(|| {
                    format!(
                        "this gateway has no {:?} TLS listener: set its tls_listen or give --server",
                        self.protocol
                    )
                })?)
            }
        };
        let host = server
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            .context("--server must be HOST:PORT")?;
        let tls_name = match &self.tls_name {
            Some(n) => n.clone(),
            None if self.server.is_some() && host.parse::<IpAddr>().is_err() => host,
            None => config.primary_domain().to_owned(),
        };
        let ca = self.ca.clone().or_else(|| {
            config
                .tls
                .cert
                .is_none()
                .then(|| crate::tls::cert_paths(config).0)
                .filter(|p| p.exists())
        });
        let prefix = self
            .prefix
            .clone()
            .unwrap_or_else(|| config.xhmtp.prefix.clone());
        Ok(Target {
            server,
            tls_name,
            ca,
            prefix,
        })
    }

    fn password(&self) -> anyhow::Result<String> {
        let mut password = String::new();
        std::io::stdin().lock().read_line(&mut password)?;
        Ok(password.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// The --login account, parsed.
    fn login(&self) -> anyhow::Result<Option<Address>> {
        self.login
            .as_deref()
            .map(|l| Address::parse_any(l).context("--login"))
            .transpose()
    }
}

impl Target {
    fn ca(&self) -> anyhow::Result<&PathBuf> {
        self.ca
            .as_ref()
            .context("TLS needs --ca PEM-FILE (the certificate or CA to trust)")
    }
}

/// The sender of `send`: --from, checked against --login when `as_login` (the protocol sends
/// as the logged-in account), else the --login account.
fn sender(args: &SendArgs, as_login: bool) -> anyhow::Result<Address> {
    let login = args.conn.login()?;
    let from = args
        .from
        .as_deref()
        .map(|f| Address::parse_any(f).context("--from"))
        .transpose()?;
    match (from, login) {
        (Some(f), Some(l)) if as_login && !f.same_account(&l) => {
            anyhow::bail!("--from {f} is not the --login account {l}: this protocol sends as the logged-in account")
        }
        (Some(f), _) => Ok(f),
        (None, Some(l)) => Ok(l),
        (None, None) => anyhow::bail!("--from ADDRESS (or --login ACCOUNT) is needed"),
    }
}

/// Connect over IMMP (TLS upgrade checked against --ca) and log in with AUTH SECRET.
async fn connect_immp(
    conn: &Connection,
    config: &Config,
) -> anyhow::Result<mailgate_immp::client::ImmpClient> {
    let target = conn.target(config)?;
    let who = conn.login()?.context("IMMP needs --login ACCOUNT")?;
    let (connector, name) = crate::tls::connector(target.ca()?, &target.tls_name)?;
    let mut client = mailgate_immp::client::ImmpClient::connect(&target.server, connector, name)
        .await
        .with_context(|| format!("cannot talk IMMP to {}", target.server))?;
    client.auth_secret(&who, &conn.password()?).await?;
    Ok(client)
}

async fn connect(conn: &Connection, config: &Config) -> anyhow::Result<MmtpClient> {
    let target = conn.target(config)?;
    let tls = if conn.tls {
        Some(crate::tls::connector(target.ca()?, &target.tls_name)?)
    } else {
        None
    };
    let mut client = MmtpClient::connect(&target.server, tls)
        .await
        .with_context(|| format!("cannot talk MMTP to {}", target.server))?;
    if let Some(who) = conn.login()? {
        client.auth(&who, &conn.password()?).await?;
    }
    Ok(client)
}

/// Run `mailgate send`.
pub async fn send(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    match args.conn.protocol {
        ClientProtocol::Immp => return send_immp(config, args).await,
        ClientProtocol::Xhmtp => return send_xhmtp(config, args).await,
        ClientProtocol::Tmtp => return send_tmtp(config, args).await,
        ClientProtocol::Mmtp => {}
    }
    let from = sender(&args, false)?;
    let mut client = connect(&args.conn, config).await?;
    let to = Address::parse_any(&args.to).context("--to")?;
    let mut builder = PacketBuilder::new(from, to, &args.subject, &args.body);
    builder.tags = parse_tags(&args.tags)?;
    if let Some(p) = &args.sign_key {
        builder.sign_with = Some(std::fs::read_to_string(p).context("--sign-key")?);
    }
    if let Some(p) = &args.encrypt_key {
        builder.encrypt_to = Some(std::fs::read_to_string(p).context("--encrypt-key")?);
    }
    let difficulty = client.difficulty();
    let started = Instant::now();
    let built = tokio::task::spawn_blocking(move || builder.build(difficulty)).await??;
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "minted a difficulty-{difficulty} stamp: {} hashes in {took:.3} s ({:.1} M hashes/s)",
        built.hashes,
        built.hashes as f64 / took.max(1e-9) / 1e6
    );
    let reply = client.send(&built.text).await?;
    println!("{reply}");
    Ok(())
}

/// Run `mailgate receive`.
pub async fn receive(config: &Config, args: ReceiveArgs) -> anyhow::Result<()> {
    if let ClientProtocol::Tmtp = args.conn.protocol {
        return receive_tmtp(config, args).await;
    }
    let email = match (&args.email, args.conn.login()?) {
        (Some(e), _) => Address::parse_any(e).context("--email")?,
        (None, Some(login)) => login,
        (None, None) => anyhow::bail!("--email MAILBOX (or --login ACCOUNT) is needed"),
    };
    match args.conn.protocol {
        ClientProtocol::Immp => return receive_immp(config, args).await,
        ClientProtocol::Xhmtp => return receive_xhmtp(config, args, &email).await,
        ClientProtocol::Tmtp | ClientProtocol::Mmtp => {}
    }
    if args.keep {
        anyhow::bail!(
            "MMTP's RECEIVE removes what it returns and has no other read: --keep works with \
             --protocol immp or xhmtp"
        );
    }
    let mut client = connect(&args.conn, config).await?;
    for m in client.receive(&email, args.limit).await? {
        println!("{m}");
    }
    Ok(())
}

/// Connect over TMTP (TLS checked against --ca), TmtpRev, and Login as --login (a uid) with the
/// node secret from standard input.
async fn connect_tmtp(
    conn: &Connection,
    config: &Config,
) -> anyhow::Result<mailgate_tmtp::client::TmtpClient> {
    let target = conn.target(config)?;
    let uid = conn
        .login
        .clone()
        .context("TMTP needs --login UID (the node secret on standard input)")?;
    let (connector, name) = crate::tls::connector(target.ca()?, &target.tls_name)?;
    let mut client = mailgate_tmtp::client::TmtpClient::connect(&target.server, connector, name)
        .await
        .with_context(|| format!("cannot talk TMTP to {}", target.server))?;
    client.rev().await?;
    client.login(&uid, &conn.password()?).await?;
    Ok(client)
}

/// `mailgate send --protocol tmtp`: a Post to the uid --to; prints the ack.
async fn send_tmtp(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    let mut client = connect_tmtp(&args.conn, config).await?;
    let ack = client
        .post("send-1", &[args.to.as_str()], &args.subject, &args.body)
        .await?;
    println!("{}", ack.head);
    client.quit().await?;
    Ok(())
}

/// `mailgate receive --protocol tmtp`: each queued message as a JSON line (header, and the
/// data as text), acknowledged unless --keep, until none comes for two seconds or --limit.
async fn receive_tmtp(config: &Config, args: ReceiveArgs) -> anyhow::Result<()> {
    let mut client = connect_tmtp(&args.conn, config).await?;
    let mut printed = 0u32;
    while args.limit.is_none_or(|l| printed < l) {
        let m = match client.recv_within(std::time::Duration::from_secs(2)).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(mailgate_tmtp::client::ClientError::Timeout) => break,
            Err(e) => return Err(e.into()),
        };
        let data = String::from_utf8_lossy(&m.data);
        println!("{}", serde_json::json!({"head": m.head, "data": data}));
        printed += 1;
        if !args.keep {
            client.ack_if_needed(&m).await?;
        }
    }
    client.quit().await?;
    Ok(())
}

/// `mailgate send --protocol immp`: DELIVER as the logged-in account (--from must be it).
async fn send_immp(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    sender(&args, true)?;
    let mut client = connect_immp(&args.conn, config).await?;
    let to = Address::parse_any(&args.to).context("--to")?;
    let importance = if args.tags.iter().any(|t| t == "priority=high") {
        mailgate_core::Importance::High
    } else if args.tags.iter().any(|t| t == "priority=low") {
        mailgate_core::Importance::Low
    } else {
        mailgate_core::Importance::Normal
    };
    let body = mailgate_core::Part::text_body(args.body.as_str());
    let id = client
        .deliver(&[to], &args.subject, &[body], importance)
        .await?;
    println!("{id} Message accepted");
    client.quit().await;
    Ok(())
}

/// `mailgate receive --protocol immp`: the INBOX index as JSON lines (nothing is removed);
/// with --fetch each message as JSON (marked read unless --keep).
async fn receive_immp(config: &Config, args: ReceiveArgs) -> anyhow::Result<()> {
    let mut client = connect_immp(&args.conn, config).await?;
    client.send_raw(b"MBOX INDEX /inbox +JSON\n").await?;
    let reply = client.reply().await?;
    let limit = args.limit.map_or(usize::MAX, |l| l as usize);
    let entries: Vec<&String> = reply
        .lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .take(limit)
        .collect();
    for line in entries {
        if !args.fetch {
            println!("{line}");
            continue;
        }
        let entry: serde_json::Value = serde_json::from_str(line).context("IMMP index entry")?;
        let id = entry["id"]
            .as_str()
            .context("IMMP index entry without an id")?;
        let keep = if args.keep { " -READ" } else { "" };
        client
            .send_raw(format!("MBOX FETCH /inbox#{id} +JSON{keep}\n").as_bytes())
            .await?;
        let message = client.reply().await?;
        let json: String = message
            .lines
            .iter()
            .filter(|l| !l.starts_with("End of message"))
            .map(String::as_str)
            .collect();
        println!("{json}");
    }
    client.quit().await;
    Ok(())
}

/// An XHMTP client logged in as `user` (password from standard input).
async fn connect_xhmtp(
    conn: &Connection,
    target: &Target,
    user: &str,
) -> anyhow::Result<XhmtpClient> {
    let tls = if conn.tls {
        Some(crate::tls::client_config(target.ca()?)?)
    } else {
        None
    };
    let server = tokio::net::lookup_host(&target.server)
        .await?
        .next()
        .with_context(|| format!("{} has no address", target.server))?;
    Ok(XhmtpClient::new(
        server,
        &target.tls_name,
        tls,
        &target.prefix,
        user,
        &conn.password()?,
    ))
}

fn parse_tags(tags: &[String]) -> anyhow::Result<mailgate_core::Tags> {
    let mut out = mailgate_core::Tags::default();
    for t in tags {
        let (cat, value) = t.split_once('=').context("--tag takes CATEGORY=VALUE")?;
        let list = match cat {
            "priority" => &mut out.priority,
            "category" => &mut out.category,
            "status" => &mut out.status,
            "custom" => &mut out.custom,
            other => anyhow::bail!("unknown tag category {other:?}"),
        };
        list.push(value.to_owned());
    }
    Ok(out)
}

/// `mailgate send --protocol xhmtp`: `POST /<prefix>/submit` as --login.
async fn send_xhmtp(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    let login = args
        .conn
        .login
        .as_ref()
        .context("XHMTP needs --login ACCOUNT")?;
    sender(&args, true)?;
    let target = args.conn.target(config)?;
    let client = connect_xhmtp(&args.conn, &target, login).await?;
    let req = SubmitRequest {
        to: vec![args.to.clone()],
        subject: args.subject.clone(),
        body: args.body.clone(),
        tags: parse_tags(&args.tags)?,
        ..SubmitRequest::default()
    };
    let answer = client.submit(&req).await?;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}

/// `mailgate receive --protocol xhmtp`: the feed's items as JSON lines; with --fetch, each
/// item's message as fetched from its link.
async fn receive_xhmtp(config: &Config, args: ReceiveArgs, email: &Address) -> anyhow::Result<()> {
    let target = args.conn.target(config)?;
    let client = connect_xhmtp(&args.conn, &target, &email.to_string()).await?;
    let feed = client.feed(None).await?;
    let channel = rss::Channel::read_from(&feed.body[..]).context("the feed is not RSS")?;
    let limit = args.limit.map_or(usize::MAX, |l| l as usize);
    for item in channel.items().iter().take(limit) {
        let link = item.link().unwrap_or_default();
        if args.fetch {
            let url = url::Url::parse(link).context("feed item link")?;
            // Links into the account's own mailbox (no credentials in them) are on --server;
            // a sender's URL is on the sender's server.
            let at = if url.username().is_empty() {
                target.server.clone()
            } else {
                format!(
                    "{}:{}",
                    url.host_str().unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(80)
                )
            };
            let addr = tokio::net::lookup_host(&at)
                .await?
                .next()
                .with_context(|| format!("{at} has no address"))?;
            let message = client.fetch_url(link, addr).await?;
            println!("{}", serde_json::to_string(&message)?);
        } else {
            let line = serde_json::json!({
                "title": item.title(),
                "link": link,
                "guid": item.guid().map(|g| g.value()),
                "author": item.author(),
                "pubDate": item.pub_date(),
            });
            println!("{line}");
        }
    }
    Ok(())
}
