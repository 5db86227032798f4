//! `mailgate send` and `mailgate receive`: talk to any server with a protocol's client.

use anyhow::Context;
use clap::{Args, ValueEnum};
use mailgate_core::Address;
use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
use mailgate_xhmtp::client::XhmtpClient;
use mailgate_xhmtp::wire::SubmitRequest;
use std::io::BufRead;
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
}

/// Where and how to connect.
#[derive(Args)]
pub struct Connection {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value = "mmtp")]
    protocol: ClientProtocol,
    /// Server, HOST:PORT (default: 127.0.0.1 on the protocol's default port).
    #[arg(long)]
    server: Option<String>,
    /// Connect with TLS, trusting the PEM certificate(s) in --ca.
    #[arg(long)]
    tls: bool,
    /// CA or self-signed certificate to trust with --tls.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Authenticate as this account (password from the first line of standard input).
    #[arg(long)]
    login: Option<String>,
    /// XHMTP path prefix of the server.
    #[arg(long, default_value = "xhmtp")]
    prefix: String,
}

/// `mailgate send` options.
#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    conn: Connection,
    /// Sender address.
    #[arg(long)]
    from: String,
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
pub struct ReceiveArgs {
    #[command(flatten)]
    conn: Connection,
    /// Mailbox to read (removes what it returns, as MMTP RECEIVE does).
    #[arg(long)]
    email: String,
    /// At most this many messages.
    #[arg(long)]
    limit: Option<u32>,
    /// XHMTP: also fetch each feed item's message from the sender's server.
    #[arg(long)]
    fetch: bool,
}

impl Connection {
    fn server(&self) -> String {
        self.server.clone().unwrap_or_else(|| {
            match self.protocol {
                ClientProtocol::Mmtp => "127.0.0.1:8025",
                ClientProtocol::Immp => "127.0.0.1:1025",
                ClientProtocol::Xhmtp => "127.0.0.1:8080",
            }
            .to_owned()
        })
    }

    fn host(&self) -> anyhow::Result<String> {
        let server = self.server();
        server
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            .context("--server must be HOST:PORT")
    }

    fn password(&self) -> anyhow::Result<String> {
        let mut password = String::new();
        std::io::stdin().lock().read_line(&mut password)?;
        Ok(password.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// Connect over IMMP (TLS upgrade checked against --ca) and log in with AUTH SECRET.
async fn connect_immp(conn: &Connection) -> anyhow::Result<mailgate_immp::client::ImmpClient> {
    let ca = conn
        .ca
        .as_ref()
        .context("IMMP upgrades to TLS: --ca PEM-FILE is needed")?;
    let login = conn.login.as_ref().context("IMMP needs --login ACCOUNT")?;
    let (connector, name) = crate::tls::connector(ca, &conn.host()?)?;
    let mut client = mailgate_immp::client::ImmpClient::connect(&conn.server(), connector, name)
        .await
        .with_context(|| format!("cannot talk IMMP to {}", conn.server()))?;
    let who = Address::parse_any(login).context("--login")?;
    client.auth_secret(&who, &conn.password()?).await?;
    Ok(client)
}

async fn connect(conn: &Connection) -> anyhow::Result<MmtpClient> {
    let tls = if conn.tls {
        let ca = conn.ca.as_ref().context("--tls needs --ca PEM-FILE")?;
        Some(crate::tls::connector(ca, &conn.host()?)?)
    } else {
        None
    };
    let mut client = MmtpClient::connect(&conn.server(), tls)
        .await
        .with_context(|| format!("cannot talk MMTP to {}", conn.server()))?;
    if let Some(login) = &conn.login {
        let who = Address::parse_any(login).context("--login")?;
        client.auth(&who, &conn.password()?).await?;
    }
    Ok(client)
}

/// Run `mailgate send`.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    match args.conn.protocol {
        ClientProtocol::Immp => return send_immp(args).await,
        ClientProtocol::Xhmtp => return send_xhmtp(args).await,
        ClientProtocol::Mmtp => {}
    }
    let mut client = connect(&args.conn).await?;
    let from = Address::parse_any(&args.from).context("--from")?;
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
pub async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    match args.conn.protocol {
        ClientProtocol::Immp => return receive_immp(args).await,
        ClientProtocol::Xhmtp => return receive_xhmtp(args).await,
        ClientProtocol::Mmtp => {}
    }
    let mut client = connect(&args.conn).await?;
    let email = Address::parse_any(&args.email).context("--email")?;
    for m in client.receive(&email, args.limit).await? {
        println!("{m}");
    }
    Ok(())
}

/// `mailgate send --protocol immp`: DELIVER as the logged-in account (--from must be it).
async fn send_immp(args: SendArgs) -> anyhow::Result<()> {
    let mut client = connect_immp(&args.conn).await?;
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

/// `mailgate receive --protocol immp`: the INBOX index as JSON lines (nothing is removed).
async fn receive_immp(args: ReceiveArgs) -> anyhow::Result<()> {
    let mut client = connect_immp(&args.conn).await?;
    client.send_raw(b"MBOX INDEX /inbox +JSON\n").await?;
    let reply = client.reply().await?;
    let limit = args.limit.map_or(usize::MAX, |l| l as usize);
    for line in reply
        .lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .take(limit)
    {
        println!("{line}");
    }
    client.quit().await;
    Ok(())
}

/// An XHMTP client logged in as `user` (password from standard input).
async fn connect_xhmtp(conn: &Connection, user: &str) -> anyhow::Result<XhmtpClient> {
    let tls = if conn.tls {
        let ca = conn.ca.as_ref().context("--tls needs --ca PEM-FILE")?;
        Some(crate::tls::client_config(ca)?)
    } else {
        None
    };
    let server = tokio::net::lookup_host(conn.server())
        .await?
        .next()
        .with_context(|| format!("{} has no address", conn.server()))?;
    Ok(XhmtpClient::new(
        server,
        &conn.host()?,
        tls,
        &conn.prefix,
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
async fn send_xhmtp(args: SendArgs) -> anyhow::Result<()> {
    let login = args
        .conn
        .login
        .as_ref()
        .context("XHMTP needs --login ACCOUNT")?;
    let client = connect_xhmtp(&args.conn, login).await?;
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
async fn receive_xhmtp(args: ReceiveArgs) -> anyhow::Result<()> {
    let client = connect_xhmtp(&args.conn, &args.email).await?;
    let feed = client.feed(None).await?;
    let channel = rss::Channel::read_from(&feed.body[..]).context("the feed is not RSS")?;
    let limit = args.limit.map_or(usize::MAX, |l| l as usize);
    for item in channel.items().iter().take(limit) {
        let link = item.link().unwrap_or_default();
        if args.fetch {
            let url = url::Url::parse(link).context("feed item link")?;
            // Links into the account's own mailbox (no credentials in them) are on --server;
            // a sender's URL is on the sender's server.
            let target = if url.username().is_empty() {
                args.conn.server()
            } else {
                format!(
                    "{}:{}",
                    url.host_str().unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(80)
                )
            };
            let addr = tokio::net::lookup_host(&target)
                .await?
                .next()
                .with_context(|| format!("{target} has no address"))?;
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
