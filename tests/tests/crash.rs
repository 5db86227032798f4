//! "OK means on disk": SIGKILL a process that is submitting from many tasks, restart on the same
//! data directory, and check that every acknowledged message is present and intact.

use mailgate_core::store::prelude::*;
use mailgate_core::store::EntryQuery;
use mailgate_core::{Address, Metrics, SqliteOptions, SqliteStore};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Run the writer until it has acknowledged `acks` messages, then SIGKILL it; returns every
/// acknowledgement it printed (including those still in the pipe when it died).
fn write_then_kill(dir: &std::path::Path, acks: usize) -> HashMap<String, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .arg(dir)
        .arg("16")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut line = String::new();
    while seen.len() < acks && Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        record(&line, &mut seen);
    }
    assert!(
        seen.len() >= acks,
        "writer acknowledged only {} messages",
        seen.len()
    );
    // Mid-stream: tasks are still submitting when the process dies.
    child.kill().unwrap(); // SIGKILL on unix
    child.wait().unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    for l in rest.split_inclusive('\n') {
        record(l, &mut seen);
    }
    seen
}

fn record(line: &str, seen: &mut HashMap<String, String>) {
    // Only complete lines count as acknowledged.
    if let Some(l) = line.strip_suffix('\n') {
        let mut parts = l.split(' ');
        if let (Some("ACK"), Some(id), Some(sha)) = (parts.next(), parts.next(), parts.next()) {
            seen.insert(id.to_owned(), sha.to_owned());
        }
    }
}

#[test]
fn acknowledged_messages_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = write_then_kill(dir.path(), 400);
    // Restart on the same data directory (WAL recovery), write more, kill again.
    acked.extend(write_then_kill(dir.path(), 100));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(
            SqliteOptions::new(dir.path().join("mailgate.db")),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let bob = store
            .account(&Address::new("bob", "localhost").unwrap())
            .await
            .unwrap()
            .unwrap();
        let inbox: std::collections::HashSet<String> = store
            .entries(bob.id, "INBOX", EntryQuery::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message.to_string())
            .collect();
        let mut missing = 0;
        for (id, sha) in &acked {
            let m = store.message(id.parse().unwrap()).await.unwrap();
            match m {
                None => missing += 1,
                Some(m) => {
                    let body = &m.content_part().unwrap().data;
                    assert_eq!(
                        &hex::encode(Sha256::digest(body)),
                        sha,
                        "message {id} altered"
                    );
                    assert!(inbox.contains(id), "message {id} stored but not in INBOX");
                }
            }
        }
        assert_eq!(
            missing,
            0,
            "{missing} of {} acknowledged messages lost",
            acked.len()
        );
        let stats = store.stats().await.unwrap();
        assert!(stats.messages as usize >= acked.len());
    });
}
