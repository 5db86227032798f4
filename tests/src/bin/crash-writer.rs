//! Crash-test helper: submits messages through the core (router + group commit) from several
//! tasks and prints `ACK <message-id> <sha256-of-body>` for each one only after `submit`
//! returned — the moment a front-end would answer "OK". The test kills it with SIGKILL.
//!
//! Usage: `crash-writer DATA_DIR TASKS`. Bounded: stops after 200,000 messages or 120 s.

use mailgate_core::{Address, Core, Message, Metrics, Origin, Policy, SqliteOptions, SqliteStore};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_MESSAGES: u64 = 200_000;
const MAX_TIME: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: crash-writer DATA_DIR TASKS"))?;
    let tasks: usize = args.next().unwrap_or_else(|| "8".into()).parse()?;
    let metrics = Arc::new(Metrics::new());
    let store = SqliteStore::open(
        SqliteOptions::new(std::path::Path::new(&dir).join("mailgate.db")),
        metrics.clone(),
    )?;
    let core = Arc::new(Core::new(
        Arc::new(store),
        Policy::new(["localhost"]),
        metrics,
    ));
    let bob = Address::new("bob", "localhost")?;
    if core.store.account(&bob).await?.is_none() {
        core.add_account(&bob, "pw").await?;
    }
    let sender = Address::new("load", "sender.test")?;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (core, bob, sent, sender) = (core.clone(), bob.clone(), sent.clone(), sender.clone());
        set.spawn(async move {
            let origin = Origin {
                protocol: "crash-test",
                submitter: mailgate_core::Submitter::Peer([127, 0, 0, 1].into()),
            };
            while sent.fetch_add(1, Ordering::Relaxed) < MAX_MESSAGES
                && started.elapsed() < MAX_TIME
            {
                let len = 64 + rand::random::<u32>() as usize % 8192;
                let body: String = (0..len)
                    .map(|i| (b'a' + ((i * 7 + t) % 26) as u8) as char)
                    .collect();
                let body = format!("{}{body}", rand::random::<u64>());
                let digest = hex::encode(Sha256::digest(body.as_bytes()));
                let m = Message::new(sender.clone(), vec![bob.clone()], format!("task {t}"), body);
                let id = m.id;
                if core.submit(m, &origin, None).await.is_ok() {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ACK {id} {digest}");
                    let _ = out.flush();
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok(())
}
