//! `mailgate bench scale`: fill a store to each size (all mail in one mailbox, or spread over
//! many) and measure, at every size, durable submits into the measured mailbox and the store
//! calls behind each read a client makes (MMTP CHECK and RECEIVE, IMMP MBOX CHECK, FETCH and
//! INDEX, the XHMTP feed). Nothing read may grow with the mailbox: the rows say whether it does.

use super::{ms, summarise, Summary};
use clap::Args;
use mailgate_core::message::Tags;
use mailgate_core::store::prelude::*;
use mailgate_core::store::{EntryQuery, LocalDelivery, Submission, TagFilter};
use mailgate_core::{Address, Message, MessageId, Metrics, SqliteOptions, SqliteStore};
use mailgate_immp::config::DEFAULT_INDEX_PAGE;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// `mailgate bench scale` options.
#[derive(Args)]
pub struct ScaleBench {
    /// Store sizes to measure at, in messages, ascending (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<u64>,
    /// Where the two databases go (default: a temporary directory here).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Body size of the filling mail, bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Mailboxes the spread layout fills round-robin.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// Timed samples of each read, and submits, per size.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Print JSON objects instead of text.
    #[arg(long)]
    json: bool,
}

/// How the filling mail is laid out.
#[derive(Clone, Copy)]
enum Layout {
    /// Every message in the measured mailbox.
    One,
    /// Round-robin over `accounts` mailboxes (the measured one is the first).
    Spread,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::One => "one mailbox",
            Layout::Spread => "spread",
        }
    }
}

const FILL_TASKS: usize = 64;

fn message(sender: &Address, rcpt: &Address, i: u64, body: &str) -> Message {
    let mut m = Message::new(sender.clone(), vec![rcpt.clone()], "scale", body);
    m.origin_id = Some(format!("scale-{i}"));
    m.tags = Tags {
        category: vec![["work", "personal", "promotion"][(i % 3) as usize].into()],
        priority: if i.is_multiple_of(10) {
            vec!["high".into()]
        } else {
            Vec::new()
        },
        ..Tags::default()
    };
    m
}

/// Submit messages `from..to` (one task per slice), each to `accounts[i % accounts.len()]`.
async fn fill(
    store: &Arc<SqliteStore>,
    accounts: &Arc<Vec<(i64, Address)>>,
    from: u64,
    to: u64,
    body: &Arc<String>,
) -> anyhow::Result<()> {
    let sender = Address::new("load", "bench.test")?;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..FILL_TASKS as u64 {
        let (store, accounts, body, sender) = (
            store.clone(),
            accounts.clone(),
            body.clone(),
            sender.clone(),
        );
        tasks.spawn(async move {
            let mut i = from + t;
            while i < to {
                let (id, rcpt) = &accounts[(i % accounts.len() as u64) as usize];
                store
                    .submit(Submission {
                        message: message(&sender, rcpt, i, &body),
                        deliveries: vec![LocalDelivery::to(*id, "INBOX")],
                        relays: Vec::new(),
                        stamp: None,
                    })
                    .await?;
                i += FILL_TASKS as u64;
            }
            Ok::<_, mailgate_core::StoreError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Time `samples` runs of `op`.
async fn sample<F, Fut>(samples: usize, mut op: F) -> anyhow::Result<Summary>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        op(i).await?;
        lat.push(t.elapsed());
    }
    Ok(summarise(lat, started.elapsed()))
}

/// The summaries of the INBOX entries `query` lists (what an index or a feed shows).
async fn listed_summaries(store: &SqliteStore, id: i64, query: EntryQuery) -> anyhow::Result<()> {
    let ids: Vec<MessageId> = store
        .entries(id, "INBOX", query)
        .await?
        .iter()
        .map(|e| e.message)
        .collect();
    store.summaries(&ids).await?;
    Ok(())
}

/// Every measurement at one size.
async fn measure(
    store: &Arc<SqliteStore>,
    account: (i64, Address),
    next: &mut u64,
    samples: usize,
    body: &Arc<String>,
) -> anyhow::Result<Vec<(&'static str, Summary)>> {
    let (id, rcpt) = account;
    let mut out = Vec::new();
    // Submits into the measured mailbox: 16 at a time, as 16 client connections would.
    let one = Arc::new(vec![(id, rcpt.clone())]);
    let start = *next;
    let t = Instant::now();
    let mut lat = Vec::new();
    let sender = Address::new("load", "bench.test")?;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..16u64 {
        let (store, one, body, sender) = (store.clone(), one.clone(), body.clone(), sender.clone());
        let n = samples as u64;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = k;
            while i < n {
                let m = message(&sender, &one[0].1, start + i, &body);
                let t = Instant::now();
                store
                    .submit(Submission {
                        message: m,
                        deliveries: vec![LocalDelivery::to(one[0].0, "INBOX")],
                        relays: Vec::new(),
                        stamp: None,
                    })
                    .await?;
                lat.push(t.elapsed());
                i += 16;
            }
            Ok::<_, mailgate_core::StoreError>(lat)
        });
    }
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    *next += samples as u64;
    out.push(("submit (16 at a time)", summarise(lat, t.elapsed())));

    // A sample of this mailbox's messages to fetch.
    let some: Vec<MessageId> = store
        .entries(
            id,
            "INBOX",
            EntryQuery {
                limit: Some(samples as u32),
                newest_first: true,
                ..EntryQuery::default()
            },
        )
        .await?
        .into_iter()
        .map(|e| e.message)
        .collect();
    let work = TagFilter {
        categories: vec![("category".into(), vec!["work".into()])],
    };
    out.push((
        "MMTP CHECK",
        sample(samples, |_| async {
            store
                .count_entries(id, "INBOX", &TagFilter::default())
                .await?;
            store.tag_counts(id, "INBOX").await?;
            Ok(())
        })
        .await?,
    ));
    out.push((
        "MMTP CHECK with tagFilters",
        sample(samples, |_| async {
            store.count_entries(id, "INBOX", &work).await?;
            Ok(())
        })
        .await?,
    ));
    out.push((
        "MMTP RECEIVE limit 10",
        sample(samples, |_| async {
            let query = EntryQuery {
                limit: Some(10),
                ..EntryQuery::default()
            };
            for e in store.entries(id, "INBOX", query).await? {
                store.message(e.message).await?;
            }
            store
                .count_entries(id, "INBOX", &TagFilter::default())
                .await?;
            Ok(())
        })
        .await?,
    ));
    out.push((
        "IMMP MBOX CHECK",
        sample(samples, |_| async {
            store.folders(id).await?;
            Ok(())
        })
        .await?,
    ));
    out.push((
        "IMMP MBOX FETCH one",
        sample(samples, |i| {
            let m = some[i % some.len().max(1)];
            async move {
                let e = store.find_entry(id, m, Some("INBOX")).await?;
                if let Some(e) = e {
                    store.message(e.message).await?;
                }
                Ok(())
            }
        })
        .await?,
    ));
    out.push((
        "IMMP MBOX INDEX (one page)",
        sample(samples.min(50), |_| async {
            let query = EntryQuery {
                // One page and the look-ahead that says whether there is more.
                limit: Some(DEFAULT_INDEX_PAGE + 1),
                ..EntryQuery::default()
            };
            listed_summaries(store, id, query).await
        })
        .await?,
    ));
    out.push((
        "XHMTP feed (newest 50)",
        sample(samples, |_| async {
            store.notifications(id, 50).await?;
            let query = EntryQuery {
                limit: Some(50),
                newest_first: true,
                ..EntryQuery::default()
            };
            listed_summaries(store, id, query).await
        })
        .await?,
    ));
    Ok(out)
}

/// Run `mailgate bench scale`.
pub async fn run(opts: ScaleBench) -> anyhow::Result<()> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("mailgate-bench-scale")
                .tempdir_in(".")?;
            tmp.path().to_owned()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let body = Arc::new("x".repeat(opts.size));
    let mut sizes = opts.sizes.clone();
    sizes.sort_unstable();
    for layout in [Layout::One, Layout::Spread] {
        let path = dir.join(format!("scale-{}.db", matches!(layout, Layout::One) as u8));
        let _ = std::fs::remove_file(&path);
        let store = Arc::new(SqliteStore::open(
            SqliteOptions::new(&path),
            Arc::new(Metrics::new()),
        )?);
        let n = match layout {
            Layout::One => 1,
            Layout::Spread => opts.accounts.max(1),
        };
        let mut accounts = Vec::new();
        for i in 0..n {
            let a = Address::new(&format!("user{i}"), "localhost")?;
            accounts.push((store.create_account(&a, "-").await?.id, a));
        }
        let accounts = Arc::new(accounts);
        let mut filled = 0;
        // Origin ids of the measured submits: never those of the fill, never repeated.
        let mut next = 1u64 << 40;
        for &size in &sizes {
            let t = Instant::now();
            fill(&store, &accounts, filled, size, &body).await?;
            let fill_secs = t.elapsed().as_secs_f64();
            let fill_rate = size.saturating_sub(filled) as f64 / fill_secs.max(1e-9);
            filled = size.max(filled);
            let rows = measure(&store, accounts[0].clone(), &mut next, opts.samples, &body).await?;
            filled += opts.samples as u64;
            let in_box = store
                .count_entries(accounts[0].0, "INBOX", &TagFilter::default())
                .await?;
            if opts.json {
                for (what, s) in &rows {
                    println!(
                        "{}",
                        json!({
                            "bench": "scale", "layout": layout.name(), "store_messages": size,
                            "mailbox_messages": in_box, "op": what,
                            "ops_per_sec": s.ops as f64 / s.elapsed.as_secs_f64().max(1e-9),
                            "p50_ms": ms(s.p50), "p99_ms": ms(s.p99), "max_ms": ms(s.max),
                            "fill_per_sec": fill_rate,
                        })
                    );
                }
            } else {
                println!(
                    "{} — {size} messages in the store, {in_box} in the measured mailbox (filled at {fill_rate:.0}/s):",
                    layout.name()
                );
                for (what, s) in &rows {
                    println!(
                        "  {what:<32} {:>8.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms",
                        s.ops as f64 / s.elapsed.as_secs_f64().max(1e-9),
                        ms(s.p50),
                        ms(s.p99)
                    );
                }
            }
        }
        store.close().await?;
        drop(store);
        let _ = std::fs::remove_file(&path);
        for suffix in ["-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}
