//! `mailgate bench tmtp`: Posts over concurrent connections (each a member registered for the
//! run) to one member whose several nodes are logged in; reports Posts acknowledged per second
//! (each ack follows the durable commit) and the delay from a Post to its delivery at each node.

use super::{load, report, summarise, usable_connections, Load};
use anyhow::Context;
use clap::Args;
use mailgate_tmtp::client::{ClientError, TmtpClient};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `mailgate bench tmtp` options.
#[derive(Args)]
pub struct TmtpBench {
    /// TMTP server, HOST:PORT (TLS). It needs `[tmtp] registration = "open"` and
    /// `registrations_per_hour` above --connections + 1: the run registers its members.
    #[arg(long, default_value = "127.0.0.1:5443")]
    target: String,
    /// The server's CA or self-signed certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The TLS name to check.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// Logged-in nodes of the recipient, each acknowledging what it gets.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    #[command(flatten)]
    load: Load,
}

/// Octets of the send time at the start of each Post's data.
const STAMP: usize = 20;

async fn connect(opts: &TmtpBench) -> anyhow::Result<TmtpClient> {
    let (connector, name) = crate::tls::connector(&opts.ca, &opts.tls_name)?;
    let mut c = TmtpClient::connect(&opts.target, connector, name).await?;
    c.rev().await?;
    Ok(c)
}

/// Register the recipient and give it `nodes` nodes: its uid and every node's secret.
async fn recipient(opts: &TmtpBench) -> anyhow::Result<(String, Vec<String>)> {
    let mut c = connect(opts).await?;
    let (uid, first) = c
        .register("bench-0", None)
        .await
        .context("register (the server needs open registration)")?;
    let mut secrets = vec![first];
    for n in 1..opts.nodes.max(1) {
        let id = format!("n{n}");
        let req = json!({"op": 3, "id": id, "newnode": format!("bench-{n}")});
        c.send(&req, &[]).await?;
        let user = c.expect_op("user").await?;
        secrets.push(user.str("nodeid").to_owned());
        c.ack(user.str("id")).await?;
    }
    c.quit().await?;
    Ok((uid, secrets))
}

/// What a run posts last, after every counted Post: a node that gets it has had them all.
const STOP: &[u8] = b"stop";

/// A node's reader: deliveries acknowledged and their delays recorded until the stop marker
/// (or nothing for `idle`); returns the delays and when the last counted one came.
async fn read_node(
    mut c: TmtpClient,
    base: Instant,
    idle: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let mut delays = Vec::new();
    let mut last = Duration::ZERO;
    loop {
        let m = match c.recv_within(idle).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(ClientError::Timeout) => return Ok((delays, last)),
            Err(e) => return Err(e.into()),
        };
        c.ack_if_needed(&m).await?;
        if m.op() != "delivery" {
            continue;
        }
        let head = m.head["datahead"].as_u64().unwrap_or(0) as usize;
        let data = m.data.get(head..).unwrap_or_default();
        if data == STOP {
            return Ok((delays, last));
        }
        let sent = data
            .get(..STAMP)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(sent) = sent {
            last = base.elapsed();
            delays.push(last.saturating_sub(Duration::from_nanos(sent)));
        }
    }
}

/// Post `data` to `to` and wait for its ack.
async fn post(c: &mut TmtpClient, id: &str, to: &str, data: &[u8]) -> anyhow::Result<()> {
    let req = json!({"op": 7, "id": id, "for": [{"id": to, "type": 1}], "datalen": data.len()});
    c.send(&req, data).await?;
    loop {
        let m = c.expect().await?;
        if m.op() == "ack" && m.str("id") == id {
            if let Some(e) = m.head["error"].as_str() {
                anyhow::bail!("post refused: {e}");
            }
            return Ok(());
        }
        c.ack_if_needed(&m).await?;
    }
}

pub async fn run(opts: TmtpBench) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    let (uid, secrets) = recipient(&opts).await?;
    let base = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for secret in &secrets {
        let mut c = connect(&opts).await?;
        c.login(&uid, secret).await?;
        readers.spawn(read_node(c, base, Duration::from_secs(30)));
    }
    // The nodes' connections are open already: the probe sees what is left of the server's
    // per-address limit.
    let connections =
        usable_connections(&opts.target, opts.load.connections, opts.load.json).await?;
    let pad = "x".repeat(opts.load.size.saturating_sub(STAMP));
    let (o, to) = (opts.clone(), uid.clone());
    let posts = load(
        opts.load.messages,
        connections,
        opts.load.seconds,
        opts.load.json,
        move || {
            let o = o.clone();
            async move {
                let mut c = connect(&o).await?;
                c.register("poster", None).await?;
                Ok(c)
            }
        },
        move |mut c: TmtpClient, i| {
            let (to, pad) = (to.clone(), pad.clone());
            async move {
                let data = format!("{:0w$}{pad}", base.elapsed().as_nanos(), w = STAMP);
                post(&mut c, &i.to_string(), &to, data.as_bytes()).await?;
                Ok(c)
            }
        },
    )
    .await?;
    let mut last = connect(&opts).await?;
    last.register("stop", None).await?;
    post(&mut last, "stop", &uid, STOP).await?;
    let mut delays = Vec::new();
    let mut until = Duration::ZERO;
    while let Some(r) = readers.join_next().await {
        let (d, at) = r??;
        delays.extend(d);
        until = until.max(at);
    }
    let label = format!(
        "tmtp posts: {connections} connections, {} B to one member with {} logged-in nodes \
         (ack = durably stored)",
        opts.load.size,
        secrets.len()
    );
    let extra = json!({"bench": "tmtp", "connections": connections, "size": opts.load.size,
                       "nodes": secrets.len()});
    report(&posts, opts.load.json, extra.clone(), &label);
    let delivered = summarise(delays, until);
    let mut extra = extra;
    extra["phase"] = json!("delivery");
    report(
        &delivered,
        opts.load.json,
        extra,
        &format!(
            "tmtp deliveries: {} nodes, post → delivery delay (each node acknowledging one \
             message at a time)",
            secrets.len()
        ),
    );
    Ok(())
}
