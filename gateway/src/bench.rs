//! `mailgate bench …`: bounded load generators printing throughput and latency percentiles.

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mailgate_core::store::{LocalDelivery, Submission};
use mailgate_core::{Address, Message, Metrics, SqliteOptions, SqliteStore, Store};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to benchmark.
#[derive(Subcommand)]
pub enum BenchTarget {
    /// Durable submits straight into the store from concurrent tasks (shows group commit).
    Store(StoreBench),
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
    let store = Arc::new(SqliteStore::open(
        SqliteOptions::new(dir.join("bench.db")),
        Arc::new(Metrics::new()),
    )?);
    let rcpt = Address::new("bench", "localhost")?;
    let account = match store.account(&rcpt).await? {
        Some(a) => a,
        None => store.create_account(&rcpt, "-").await?,
    };
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
        let (rcpt, sender, body) = (rcpt.clone(), sender.clone(), body.clone());
        let total = opts.messages;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let m = Message::new(sender.clone(), vec![rcpt.clone()], "bench", body.as_str());
                let t = Instant::now();
                store
                    .submit(Submission {
                        message: m,
                        deliveries: vec![LocalDelivery {
                            account: account.id,
                            folder: "INBOX".into(),
                        }],
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
    let rate = s.ops as f64 / s.elapsed.as_secs_f64();
    if opts.json {
        println!(
            "{}",
            json!({
                "bench": "store", "tasks": opts.tasks, "ops": s.ops, "size": opts.size,
                "fsync": true, "seconds": s.elapsed.as_secs_f64(), "ops_per_sec": rate,
                "p50_ms": ms(s.p50), "p99_ms": ms(s.p99), "max_ms": ms(s.max),
            })
        );
    } else {
        println!(
            "store: {} tasks, {} durable submits of {} B in {:.2} s: {:.0} submits/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            opts.tasks, s.ops, opts.size, s.elapsed.as_secs_f64(), rate, ms(s.p50), ms(s.p99), ms(s.max)
        );
    }
    Ok(())
}
