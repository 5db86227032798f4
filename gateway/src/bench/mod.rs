//! `mailgate bench …`: bounded load generators printing throughput and latency percentiles.

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mailgate_core::store::StoreLocation;
use mailgate_core::store::{LocalDelivery, Submission};
use mailgate_core::{Address, Message, Metrics};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod immp;
mod scale;
mod smtp;
mod tmtp;

/// What to benchmark.
#[derive(Subcommand)]
pub enum BenchTarget {
    /// Durable submits straight into the store from concurrent tasks (shows group commit).
    Store(StoreBench),
    /// MMTP SENDs over concurrent connections to a running server, stamps minted beforehand.
    /// The server needs an account for --to and `mmtp.requests_per_sec = 0` (or high enough).
    Mmtp(MmtpBench),
    /// XHMTP against a running server: notifications accepted per second (each names a URL on
    /// the server itself, from 127.0.0.1, so the notifier check passes), then feed requests per
    /// second for --to. The server needs `xhmtp.notify_rate_per_sec = 0` and --to's password.
    Xhmtp(XhmtpBench),
    /// IMMP DELIVER / DATA / DONE over concurrent connections to a running server, each
    /// upgraded to TLS and authenticated as --from (a local account) once.
    Immp(immp::ImmpBench),
    /// SMTP transactions (pipelined MAIL/RCPT/DATA) over concurrent connections to a running
    /// server's MX listener; each `250` is a durably stored message.
    Smtp(smtp::SmtpBench),
    /// TMTP Posts over concurrent connections (members registered for the run: the server
    /// needs open registration) to one member with --nodes logged-in nodes: Posts acknowledged
    /// per second, and the delay from a Post to its delivery at each node.
    Tmtp(tmtp::TmtpBench),
    /// Fill a store to each of --sizes messages (one mailbox, then spread over --accounts) and
    /// measure submits and every read's store calls at each size.
    Scale(scale::ScaleBench),
}

/// `mailgate bench xhmtp` options.
#[derive(Args)]
pub struct XhmtpBench {
    /// XHMTP server, HOST:PORT (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// URL prefix.
    #[arg(long, default_value = "xhmtp")]
    prefix: String,
    /// Recipient: a local account of the server.
    #[arg(long)]
    to: String,
    /// Its password (for the feed requests).
    #[arg(long)]
    password: String,
    /// Concurrent requests.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Notifications to send.
    #[arg(long, default_value_t = 5_000)]
    notifications: u64,
    /// Feed requests to make.
    #[arg(long, default_value_t = 5_000)]
    feeds: u64,
    /// Upper bound on each phase, seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Print JSON objects instead of text.
    #[arg(long)]
    json: bool,
}

/// The load of a connection benchmark: how many messages, over how many connections, how
/// large, for how long at most.
#[derive(Args)]
pub struct Load {
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Total messages (the run stops at this count or after --seconds).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Body size, bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Upper bound on the sending phase, seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `mailgate bench mmtp` options.
#[derive(Args)]
pub struct MmtpBench {
    /// MMTP server, HOST:PORT; repeat it for several nodes of one site (connections go to
    /// them in turn).
    #[arg(long = "target", default_value = "127.0.0.1:8025")]
    targets: Vec<String>,
    /// Recipient: a local account of the server; with --spread, a pattern whose `{n}` is
    /// replaced by 0…N-1 (`(user{n})%(localhost)`).
    #[arg(long)]
    to: String,
    /// Spread the SENDs round-robin over this many recipients (see --to).
    #[arg(long, default_value_t = 1)]
    spread: u64,
    /// Sender address.
    #[arg(long, default_value = "(load)%(bench.test)")]
    from: String,
    /// Spread the connections over this many source addresses, 127.1.0.1, 127.2.0.1, … (one
    /// /24 each, so per-address and per-network limits apply to each share; loopback targets
    /// only).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Stamp difficulty to mint at (default: what the server advertises, else 5, the original
    /// client's).
    #[arg(long)]
    difficulty: Option<u32>,
    #[command(flatten)]
    load: Load,
}

/// `mailgate bench store` options.
#[derive(Args)]
pub struct StoreBench {
    /// Concurrent submitting tasks.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Total submits (the run stops at this count or after --seconds, whichever comes first).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Body size of each message, bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Upper bound on the run time, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Directory for the scratch database (default: a temp dir, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A store URL instead (`postgres://…` or `sqlite:PATH`); its mail is kept.
    #[arg(long)]
    store: Option<String>,
    /// PostgreSQL connections of the store (with --store postgres://…).
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// Spread the mail round-robin over this many mailboxes (bench0@localhost, …): with one,
    /// every submit updates the same folder row.
    #[arg(long, default_value_t = 1)]
    accounts: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Latency summary of a run.
struct Summary {
    ops: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn summarise(mut lat: Vec<Duration>, elapsed: Duration) -> Summary {
    lat.sort_unstable();
    let pick = |q: f64| {
        if lat.is_empty() {
            Duration::ZERO
        } else {
            lat[((lat.len() as f64 - 1.0) * q).round() as usize]
        }
    };
    Summary {
        ops: lat.len() as u64,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Run a benchmark.
pub async fn run(target: BenchTarget) -> anyhow::Result<()> {
    match target {
        BenchTarget::Store(opts) => store(opts).await,
        BenchTarget::Mmtp(opts) => mmtp(opts).await,
        BenchTarget::Xhmtp(opts) => xhmtp(opts).await,
        BenchTarget::Immp(opts) => immp::run(opts).await,
        BenchTarget::Scale(opts) => scale::run(opts).await,
        BenchTarget::Smtp(opts) => smtp::run(opts).await,
        BenchTarget::Tmtp(opts) => tmtp::run(opts).await,
    }
}

async fn store(opts: StoreBench) -> anyhow::Result<()> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("mailgate-bench")
                .tempdir_in(".")?;
            tmp.path().to_owned()
        }
    };
    let location: StoreLocation = match &opts.store {
        Some(url) => url.parse().map_err(|e| anyhow::anyhow!("--store: {e}"))?,
        None => StoreLocation::Sqlite(dir.join("bench.db")),
    };
    let store = location
        .open(Arc::new(Metrics::new()), opts.pool_size)
        .await?;
    let mut mailboxes = Vec::new();
    for n in 0..opts.accounts.max(1) {
        let rcpt = if opts.accounts <= 1 {
            Address::new("bench", "localhost")?
        } else {
            Address::new(&format!("bench{n}"), "localhost")?
        };
        let account = match store.account(&rcpt).await? {
            Some(a) => a,
            None => store.create_account(&rcpt, "-").await?,
        };
        mailboxes.push((rcpt, account.id));
    }
    let mailboxes = Arc::new(mailboxes);
    let sender = Address::new("load", "bench.test")?;
    let body = "x".repeat(opts.size);
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let bar = if opts.json || opts.messages < 2_000 {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(opts.messages);
        b.set_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} submits {per_sec} eta {eta}",
        )?);
        b
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.tasks.max(1) {
        let (store, issued, bar) = (store.clone(), issued.clone(), bar.clone());
        let (mailboxes, sender, body) = (mailboxes.clone(), sender.clone(), body.clone());
        let total = opts.messages;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let (rcpt, account) = &mailboxes[(i % mailboxes.len() as u64) as usize];
                let m = Message::new(sender.clone(), vec![rcpt.clone()], "bench", body.as_str());
                let t = Instant::now();
                store
                    .submit(Submission {
                        message: m,
                        deliveries: vec![LocalDelivery::to(*account, "INBOX")],
                        relays: Vec::new(),
                        stamp: None,
                    })
                    .await?;
                lat.push(t.elapsed());
                bar.inc(1);
            }
            Ok::<_, mailgate_core::StoreError>(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let s = summarise(lat, started.elapsed());
    bar.finish_and_clear();
    store.close().await?;
    report(
        &s,
        opts.json,
        json!({"bench": "store", "store": location.to_string(), "tasks": opts.tasks,
               "size": opts.size, "accounts": mailboxes.len(), "fsync": true}),
        &format!(
            "store ({location}): {} tasks, durable submits of {} B into {} mailbox(es)",
            opts.tasks,
            opts.size,
            mailboxes.len()
        ),
    );
    Ok(())
}

/// Print a run's summary as text or as one JSON object (`extra` adds fields).
fn report(s: &Summary, as_json: bool, mut extra: serde_json::Value, label: &str) {
    let rate = s.ops as f64 / s.elapsed.as_secs_f64().max(1e-9);
    if as_json {
        extra["ops"] = json!(s.ops);
        extra["seconds"] = json!(s.elapsed.as_secs_f64());
        extra["ops_per_sec"] = json!(rate);
        extra["p50_ms"] = json!(ms(s.p50));
        extra["p99_ms"] = json!(ms(s.p99));
        extra["max_ms"] = json!(ms(s.max));
        println!("{extra}");
    } else {
        println!(
            "{label}: {} in {:.2} s: {rate:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            s.ops,
            s.elapsed.as_secs_f64(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
}

async fn mmtp(opts: MmtpBench) -> anyhow::Result<()> {
    use mailgate_mmtp::client::{MmtpClient, PacketBuilder};
    let from = Address::parse_any(&opts.from)?;
    let spread = opts.spread.max(1);
    let recipients = spread_recipients(&opts.to, spread)?;
    let difficulty = match opts.difficulty {
        Some(d) => d,
        None => MmtpClient::connect(&opts.targets[0], None)
            .await?
            .difficulty(),
    };
    // Mint every stamp first, on every core, so the run measures the server.
    let body = "x".repeat(opts.load.size);
    let builders: Vec<PacketBuilder> = recipients
        .into_iter()
        .map(|to| PacketBuilder::new(from.clone(), to, "bench", &body))
        .collect();
    let count = opts.load.messages as usize;
    let started = Instant::now();
    let base = mailgate_core::message::now_ms();
    let (packets, hashes) = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let results: Vec<anyhow::Result<(Vec<String>, u64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let builders = &builders;
                    scope.spawn(move || {
                        let mut out = Vec::new();
                        let mut hashes = 0;
                        for i in (t..count).step_by(threads) {
                            // A stamp names its millisecond: each packet gets its own (going
                            // back from now), so no two stamps are the same.
                            let mut builder = builders[i % builders.len()].clone();
                            builder.timestamp = Some(base - i as i64);
                            let p = builder.build_with(difficulty, 1)?;
                            hashes += p.hashes;
                            out.push(p.text);
                        }
                        Ok((out, hashes))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("minting thread failed")))
                })
                .collect()
        });
        let mut packets = Vec::with_capacity(count);
        let mut hashes = 0;
        for r in results {
            let (p, h) = r?;
            packets.extend(p);
            hashes += h;
        }
        Ok::<_, anyhow::Error>((packets, hashes))
    })
    .await??;
    let mint_secs = started.elapsed().as_secs_f64();
    let mint_rate = hashes as f64 / mint_secs.max(1e-9);
    if !opts.load.json {
        println!(
            "minted {} difficulty-{difficulty} stamps in {mint_secs:.2} s: {:.1} M hashes/s on all cores",
            packets.len(),
            mint_rate / 1e6
        );
    }
    let packets = Arc::new(packets);
    let sources = opts.sources.max(1) as usize;
    let mut targets = Vec::new();
    // Each node takes an equal share of the connections.
    let mut share = opts.load.connections.div_ceil(opts.targets.len());
    for name in &opts.targets {
        if sources == 1 {
            share = share.min(usable_connections(name, share, opts.load.json).await?);
        }
        let addr: std::net::SocketAddr = tokio::net::lookup_host(name)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{name} has no address"))?;
        targets.push(addr);
    }
    let (connections, targets_count) = (share * targets.len(), targets.len());
    let targets = Arc::new(targets);
    let opened = Arc::new(AtomicU64::new(0));
    let s = load(
        packets.len() as u64,
        connections,
        opts.load.seconds,
        opts.load.json,
        move || {
            let n = opened.fetch_add(1, Ordering::Relaxed) as usize;
            let target = targets[n % targets.len()];
            let k = (n / targets.len()) % sources;
            async move {
                Ok(if sources == 1 {
                    MmtpClient::connect(&target.to_string(), None).await?
                } else {
                    let source = std::net::Ipv4Addr::new(127, 1 + k as u8, 0, 1);
                    MmtpClient::connect_from(target, source.into()).await?
                })
            }
        },
        move |mut client: MmtpClient, i| {
            let packets = packets.clone();
            async move {
                client.send(&packets[i as usize]).await?;
                Ok(client)
            }
        },
    )
    .await?;
    report(
        &s,
        opts.load.json,
        json!({"bench": "mmtp", "connections": connections, "nodes": targets_count,
               "size": opts.load.size,
               "spread": spread, "sources": sources,
               "difficulty": difficulty, "mint_hashes_per_sec": mint_rate}),
        &format!(
            "mmtp: {connections} connections to {targets_count} node(s), SENDs of {} B bodies (acknowledged = durably stored)",
            opts.load.size
        ),
    );
    Ok(())
}

/// `--to` with `{n}` replaced by 0…`spread`-1 (just `--to` when `spread` is 1).
fn spread_recipients(to: &str, spread: u64) -> anyhow::Result<Vec<Address>> {
    anyhow::ensure!(
        spread == 1 || to.contains("{n}"),
        "--spread needs a --to pattern with {{n}}"
    );
    (0..spread)
        .map(|n| Ok(Address::parse_any(&to.replace("{n}", &n.to_string()))?))
        .collect()
}

/// How many of `wanted` connections the server at `target` keeps open from this address: they
/// are opened together and held briefly; one the server closes at once was refused (its
/// `[limits] max_connections_per_ip`, 16 by default, or its connection limits). The run then
/// uses that many, and says so, instead of failing on the refused ones.
async fn usable_connections(target: &str, wanted: usize, quiet: bool) -> anyhow::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut held = Vec::new();
    for _ in 0..wanted.max(1) {
        match tokio::net::TcpStream::connect(target).await {
            Ok(s) => held.push(s),
            Err(e) if held.is_empty() => return Err(e.into()),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut kept = 0;
    let mut buf = [0u8; 512];
    for s in &mut held {
        // Closed by the server: EOF or a reset; open: a greeting, or nothing yet.
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            _ => kept += 1,
        }
    }
    drop(held);
    // Let the server see them close before the run opens its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if kept == 0 {
        anyhow::bail!("the server at {target} refused every connection from this address");
    }
    if kept < wanted && !quiet {
        eprintln!(
            "note: the server keeps {kept} connections from this address open, not {wanted} \
             (its [limits] max_connections_per_ip, 16 by default): running with {kept}"
        );
    }
    Ok(kept.min(wanted))
}

/// Run `count` operations on `connections` concurrent tasks for at most `seconds`: each task
/// makes its state with `connect` (a connection, or nothing), then runs `call(state, i)` for the
/// next `i` until the count or the time is up (`call` fails on an unexpected answer). Returns
/// the latency summary.
async fn load<S, C, CF, F, FF>(
    count: u64,
    connections: usize,
    seconds: u64,
    quiet: bool,
    connect: C,
    call: F,
) -> anyhow::Result<Summary>
where
    S: Send + 'static,
    C: Fn() -> CF + Send + Sync + 'static,
    CF: std::future::Future<Output = anyhow::Result<S>> + Send,
    F: Fn(S, u64) -> FF + Send + Sync + 'static,
    FF: std::future::Future<Output = anyhow::Result<S>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let (connect, call) = (Arc::new(connect), Arc::new(call));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count)
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (next, connect, call, bar) = (next.clone(), connect.clone(), call.clone(), bar.clone());
        tasks.spawn(async move {
            // A slot the server has not freed yet (a connection just closed) is retried.
            let mut tries = 0;
            let mut state = loop {
                match connect().await {
                    Ok(s) => break s,
                    Err(_) if tries < 20 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                state = call(state, i).await?;
                lat.push(t.elapsed());
                bar.inc(1);
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    bar.finish_and_clear();
    Ok(summarise(lat, started.elapsed()))
}

/// [`load`] of stateless requests (XHMTP opens a connection per request).
async fn http_load<F, Fut>(
    count: u64,
    connections: usize,
    seconds: u64,
    quiet: bool,
    call: F,
) -> anyhow::Result<Summary>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let retried = Arc::new(AtomicU64::new(0));
    let counted = retried.clone();
    let s = load(
        count,
        connections,
        seconds,
        quiet,
        || async { Ok(()) },
        move |(), i| {
            let (call, retried) = (call.clone(), retried.clone());
            async move {
                // A request per connection: one refused while the server was still freeing
                // the slot of the one before (its per-address limit) is retried.
                let mut tries = 0;
                loop {
                    match call(i).await {
                        Ok(()) => return Ok(()),
                        Err(e)
                            if tries < 20
                                && e.downcast_ref::<mailgate_xhmtp::http::HttpError>()
                                    .is_some_and(|h| {
                                        matches!(h, mailgate_xhmtp::http::HttpError::Io(_))
                                    }) =>
                        {
                            tries += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        },
    )
    .await?;
    let retried = counted.load(Ordering::Relaxed);
    if retried > 0 && !quiet {
        eprintln!("note: {retried} requests were retried after a refused connection");
    }
    Ok(s)
}

async fn xhmtp(opts: XhmtpBench) -> anyhow::Result<()> {
    use mailgate_xhmtp::http::{Call, HttpClient};
    use mailgate_xhmtp::service::path;
    let server: std::net::SocketAddr = tokio::net::lookup_host(&opts.target)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} has no address", opts.target))?;
    let to = Address::parse_xhmtp(&opts.to)?;
    let http = HttpClient::new(None, None, Duration::from_secs(30), 16 * 1024 * 1024);
    let run = format!("{:08x}", rand::random::<u32>());

    let notify_path = Arc::new(path(&opts.prefix, &[&opts.to]));
    let (h, p, user) = (
        http.clone(),
        notify_path.clone(),
        opts.to.replace('@', "%40"),
    );
    let prefix = opts.prefix.clone();
    let port = server.port();
    let connections = usable_connections(&opts.target, opts.connections, opts.json).await?;
    let s = http_load(
        opts.notifications,
        connections,
        opts.seconds,
        opts.json,
        move |i| {
            let (h, p) = (h.clone(), p.clone());
            let url = format!(
                "http://{user}:bench{run}{i}@127.0.0.1:{port}/{prefix}/bench/{}",
                mailgate_core::MessageId::new()
            );
            async move {
                // The sender's domain is the URL's host, so the receiver's sender check passes.
                let body =
                    json!({"url": url, "from": "load@127.0.0.1", "subject": "bench", "size": 4096});
                let resp = h
                    .send(Call {
                        method: hyper::Method::POST,
                        connect: server,
                        https: false,
                        host: "localhost",
                        path: &p,
                        basic: None,
                        headers: Vec::new(),
                        json: Some(body.to_string().into_bytes()),
                    })
                    .await?;
                anyhow::ensure!(
                    resp.status == 202,
                    "notification answered {}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
                Ok(())
            }
        },
    )
    .await?;
    report(
        &s,
        opts.json,
        json!({"bench": "xhmtp-notify", "connections": connections}),
        &format!(
            "xhmtp notifications: {connections} concurrent, each on a new connection (202 = durably stored)"
        ),
    );

    let feed_path = Arc::new(path(&opts.prefix, &[&to.to_xhmtp()?, "feed"]));
    let (h, p, user, pw) = (
        http.clone(),
        feed_path,
        opts.to.clone(),
        opts.password.clone(),
    );
    let s = http_load(
        opts.feeds,
        connections,
        opts.seconds,
        opts.json,
        move |_| {
            let (h, p, user, pw) = (h.clone(), p.clone(), user.clone(), pw.clone());
            async move {
                let resp = h
                    .send(Call {
                        method: hyper::Method::GET,
                        connect: server,
                        https: false,
                        host: "localhost",
                        path: &p,
                        basic: Some((&user, &pw)),
                        headers: Vec::new(),
                        json: None,
                    })
                    .await?;
                anyhow::ensure!(resp.status == 200, "feed answered {}", resp.status);
                Ok(())
            }
        },
    )
    .await?;
    report(
        &s,
        opts.json,
        json!({"bench": "xhmtp-feed", "connections": connections}),
        &format!(
            "xhmtp feed requests: {connections} concurrent, each on a new connection, full feed (no 304)"
        ),
    );
    Ok(())
}
