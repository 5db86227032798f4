//! Every statement the SQLite store runs, checked with `EXPLAIN QUERY PLAN`: none may scan a
//! table or sort in a temporary B-tree, whatever the store's size (deterministic; no timing).
//!
//! Connections opened while the test runs record each statement they prepare (SQLite's trace
//! hook); a workload drives every store operation once; then each recorded statement is
//! explained on a connection of its own.

use super::{SqliteOptions, SqliteStore};
use crate::message::{Message, Tags};
use crate::metrics::Metrics;
use crate::store::*;
use crate::Address;
use rusqlite::trace::{TraceEvent, TraceEventCodes};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Installed on every connection the store opens in tests.
pub(super) fn record(conn: &rusqlite::Connection) {
    conn.trace_v2(TraceEventCodes::SQLITE_TRACE_STMT, Some(remember));
}

fn remember(event: TraceEvent<'_>) {
    if let TraceEvent::Stmt(_, sql) = event {
        if let Ok(mut seen) = SEEN.lock() {
            seen.insert(sql.to_owned());
        }
    }
}

/// Statements that may scan, by prefix, each with why: their cost is meant to be the whole
/// table. (Migrations are skipped too: they run once.)
const ALLOWED_SCANS: &[(&str, &str)] = &[
    ("PRAGMA", "pragmas and checkpoints"),
    (
        "DELETE FROM accounts",
        "removing an account removes its mailbox (the cascade)",
    ),
    (
        "INSERT OR IGNORE INTO accounts",
        "the foreign-key check of a new account looks up its (empty) mailbox",
    ),
    (
        "SELECT id, message_id FROM entries\n                     WHERE account_id = ?1 AND (folder = ?2 OR folder LIKE ?3",
        "deleting a folder and its subfolders takes what they hold",
    ),
];

fn addr(s: &str) -> Address {
    Address::parse_any(s).unwrap()
}

async fn workload(store: &SqliteStore) {
    let alice = store
        .create_account(&addr("alice@a.test"), "h")
        .await
        .unwrap();
    let bob = store
        .create_account(&addr("bob@a.test"), "h")
        .await
        .unwrap();
    store.account(&addr("alice@a.test")).await.unwrap();
    store
        .set_password_hash(&addr("alice@a.test"), "h2")
        .await
        .unwrap();
    store.set_secret(alice.id, "immp", b"s").await.unwrap();
    store.secret(alice.id, "immp").await.unwrap();
    store
        .set_setting(alice.id, "immp.compression", "GZIP")
        .await
        .unwrap();
    store.setting(alice.id, "immp.compression").await.unwrap();
    store
        .put_key(PublicKeyRecord {
            address: addr("alice@a.test"),
            fingerprint: "F".into(),
            armored: "K".into(),
            owner_verified: true,
        })
        .await
        .unwrap();
    store.key(&addr("alice@a.test")).await.unwrap();
    store.create_folder(alice.id, "INBOX/Work").await.unwrap();
    store.create_folder(bob.id, "INBOX/Work").await.unwrap();
    let mut last = None;
    for i in 0..3 {
        let mut m = Message::new(
            addr("carol@b.test"),
            vec![addr("alice@a.test"), addr("dave@c.test")],
            "s",
            "b",
        );
        m.origin_id = Some(format!("origin-{i}"));
        m.tags = Tags {
            category: vec!["work".into(), "personal".into()],
            priority: vec!["high".into()],
            ..Tags::default()
        };
        if i == 0 {
            m.importance = crate::message::Importance::High;
        }
        last = Some(m.id);
        store
            .submit(Submission {
                message: m.clone(),
                deliveries: vec![
                    LocalDelivery::to(alice.id, "INBOX"),
                    // By address and folder name: resolved inside the transaction.
                    LocalDelivery {
                        account: AccountRef::Address(addr("bob@a.test")),
                        folder: FolderChoice::Existing("work".into()),
                    },
                ],
                relays: vec![RelayRequest {
                    recipient: addr("dave@c.test"),
                    protocol: Some("mmtp".into()),
                }],
                stamp: Some(SpentStamp {
                    value: format!("stamp-{i}"),
                    expires_at: 1,
                }),
            })
            .await
            .unwrap();
        // The same origin again: de-duplicated.
        m.id = MessageId::new();
        let _ = store
            .submit(Submission {
                message: m,
                deliveries: vec![LocalDelivery::to(alice.id, "INBOX")],
                relays: Vec::new(),
                stamp: None,
            })
            .await;
    }
    let id = last.unwrap();
    let work = TagFilter {
        categories: vec![
            ("category".into(), vec!["work".into(), "finance".into()]),
            ("priority".into(), vec!["high".into()]),
        ],
    };
    for query in [
        EntryQuery::default(),
        EntryQuery {
            limit: Some(2),
            newest_first: true,
            ..EntryQuery::default()
        },
        EntryQuery {
            seen: Some(false),
            include_deleted: true,
            limit: Some(1),
            ..EntryQuery::default()
        },
        EntryQuery {
            seen: Some(false),
            limit: Some(5),
            after: Some(1),
            ..EntryQuery::default()
        },
        EntryQuery {
            seen: Some(true),
            limit: Some(5),
            after: Some(1),
            ..EntryQuery::default()
        },
        EntryQuery {
            limit: Some(2),
            after: Some(1),
            tags: work.clone(),
            ..EntryQuery::default()
        },
        EntryQuery {
            newest_first: true,
            limit: Some(2),
            tags: TagFilter::important(),
            ..EntryQuery::default()
        },
    ] {
        store.entries(alice.id, "INBOX", query).await.unwrap();
    }
    for filter in [TagFilter::default(), work.clone(), TagFilter::important()] {
        store
            .count_entries(alice.id, "INBOX", &filter)
            .await
            .unwrap();
    }
    store.tag_counts(alice.id, "INBOX").await.unwrap();
    store.message(id).await.unwrap();
    store.summaries(&[id]).await.unwrap();
    store.find_entry(alice.id, id, None).await.unwrap().unwrap();
    let entry = store
        .find_entry(alice.id, id, Some("inbox"))
        .await
        .unwrap()
        .unwrap();
    store
        .set_flags(
            alice.id,
            entry.id,
            Flags {
                seen: true,
                deleted: false,
            },
        )
        .await
        .unwrap();
    let copy = store.add_entry(alice.id, "INBOX/Work", id).await.unwrap();
    store.remove_entries(alice.id, &[copy]).await.unwrap();
    store.folders(alice.id).await.unwrap();
    store
        .set_flags(
            alice.id,
            entry.id,
            Flags {
                seen: true,
                deleted: true,
            },
        )
        .await
        .unwrap();
    store.expunge(alice.id, "INBOX").await.unwrap();
    store.delete_folder(bob.id, "INBOX/Work").await.unwrap();

    let due = store
        .claim_due(crate::message::now_ms() + 3_600_000, 10, 1000)
        .await
        .unwrap();
    store
        .finish_relay(
            due[0].id,
            RelayOutcome::Retry {
                next_attempt: 0,
                error: "e".into(),
            },
        )
        .await
        .unwrap();
    store
        .finish_relay(due[1].id, RelayOutcome::Delivered)
        .await
        .unwrap();
    store.release_leases().await.unwrap();
    store.retry_now(Some(due[0].id), 0).await.unwrap();
    store.retry_now(None, 0).await.unwrap();
    store.drop_queued(due[0].id).await.unwrap();

    store
        .put_token("cookie", "k", b"v", i64::MAX)
        .await
        .unwrap();
    store.take_token("cookie", "k", 0).await.unwrap();
    store.purge_expired(i64::MAX).await.unwrap();

    let node = addr("news@a.test");
    store.create_node(alice.id, &node, "News").await.unwrap();
    store.node(&node).await.unwrap();
    store.subscribe(bob.id, &node, "News").await.unwrap();
    store.subscriptions(bob.id).await.unwrap();
    store
        .subscribe_remote(&node, &addr("eve@e.test"))
        .await
        .unwrap();
    store.remote_subscribers(&node).await.unwrap();
    store.subscribers(&node).await.unwrap();
    store.unsubscribe(bob.id, "news@a.test").await.unwrap();

    let bob_addr = addr("bob@b.test");
    store
        .grant_access(id, &bob_addr, vec![1; 32])
        .await
        .unwrap();
    store.access(id, &bob_addr).await.unwrap();
    store.mark_fetched(id, &bob_addr, 1).await.unwrap();
    let (n, _) = store
        .put_notification(NewNotification {
            account: alice.id,
            url: "https://b.test/xhmtp/carol/1".into(),
            sender: Some(addr("carol@b.test")),
            subject: None,
            date: None,
            size: None,
            peer: "192.0.2.1".into(),
        })
        .await
        .unwrap();
    store.notifications(alice.id, 10).await.unwrap();
    store
        .claim_fetches(crate::message::now_ms() + 3_600_000, 10, 1000)
        .await
        .unwrap();
    store
        .finish_fetch(
            n.id,
            FetchOutcome::Failed {
                error: "gone".into(),
            },
        )
        .await
        .unwrap();
    store.expire_hosted(i64::MAX, 0).await.unwrap();
    store.stats().await.unwrap();
    store.remove_account(&addr("bob@a.test")).await.unwrap();
}

/// The plan lines that mean "cost grows with the table": a full scan, or a sort of every row.
fn problems(plan: &[String]) -> Vec<String> {
    plan.iter()
        .filter(|l| {
            let l = l.trim_start();
            // A scan of a subquery's result is bounded by that subquery's own plan.
            (l.starts_with("SCAN ")
                && !l.starts_with("SCAN CONSTANT ROW")
                && !l.starts_with("SCAN (subquery"))
                || l.contains("USE TEMP B-TREE")
                // The whole mailbox of an account, not one folder of it.
                || (l.contains("entries_by_folder (account_id=?)") && !l.contains("folder=?"))
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_statement_scans_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plans.db");
    let store = SqliteStore::open(SqliteOptions::new(&path), Arc::new(Metrics::new())).unwrap();
    workload(&store).await;
    store.close().await.unwrap();
    let seen: Vec<String> = SEEN.lock().unwrap().iter().cloned().collect();
    assert!(
        seen.len() > 40,
        "the workload ran only {} statements",
        seen.len()
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut failures = Vec::new();
    for sql in &seen {
        let text = sql.trim();
        let migration = super::schema::MIGRATIONS.iter().any(|m| m.contains(text));
        if text.starts_with("--")
            || migration
            || ALLOWED_SCANS
                .iter()
                .any(|(prefix, _)| text.starts_with(prefix))
        {
            continue;
        }
        let mut stmt = match conn.prepare(&format!("EXPLAIN QUERY PLAN {text}")) {
            Ok(s) => s,
            Err(_) => continue, // BEGIN, COMMIT, SAVEPOINT…: no plan
        };
        // Parameters stay NULL: the plan does not depend on their values.
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        if std::env::var_os("MAILGATE_PRINT_PLANS").is_some() {
            println!("{text}\n    {}", plan.join("\n    "));
        }
        let bad = problems(&plan);
        if !bad.is_empty() {
            failures.push(format!("{text}\n    -> {}", bad.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} statements scan or sort whole tables:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
