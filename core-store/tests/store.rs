//! The store against a real SQLite database in a temp directory: the contract suite
//! (`contract/`), then what only the SQLite back-end has (parts stored inside the wire form,
//! group commit, backup files, the write-ahead log's limit).

mod contract;

use bytes::Bytes;
use contract::{addr, core, deliver, peer, Backend};
use mailgate_core::store::prelude::*;
use mailgate_core::store::{EntryQuery, LocalDelivery, Submission};
use mailgate_core::{Message, Metrics, Part, SqliteOptions, SqliteStore};
use std::sync::Arc;

/// The SQLite back-end: `mail.db` in the test's directory.
struct Sqlite;

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn open(&self, dir: &std::path::Path) -> (Arc<dyn Store>, Arc<Metrics>) {
        let (store, metrics) = open(dir);
        (store, metrics)
    }
}

fn open(dir: &std::path::Path) -> (Arc<SqliteStore>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let store =
        SqliteStore::open(SqliteOptions::new(dir.join("mail.db")), metrics.clone()).unwrap();
    (Arc::new(store), metrics)
}

contract_suite!(Sqlite; concurrent_writers_see_single_use_state_once, message_round_trips_with_every_field, replayed_stamp_is_refused_and_stores_nothing, router_policy, mailbox_flags_and_expunge, queue_lifecycle_and_lease_expiry, tokens_are_single_use_and_expire, hosted_messages_grants_and_expiry, notifications_deduplicate_and_fetch_atomically, a_repeat_of_relayed_mail_is_dropped_per_account, kept_counts_match_a_recount_after_every_change, local_deliveries_follow_the_submit_rules, tmtp_members_nodes_aliases_groups_and_presence, tmtp_queues_follow_the_inbox_in_order);

/// Parts that lie in the wire form are stored once, inside it, and read back identical.
#[tokio::test]
async fn parts_kept_as_spans_of_the_wire_form_are_stored_once() {
    use mailgate_core::message::{SpanEncoding, WireForm, WireSpan};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let wire = Bytes::from_static(br#"{"body":"plain text","esc":"a\nb","att":"aGk="}"#);
    let span = |text: &str, encoding| WireSpan {
        start: wire
            .windows(text.len())
            .position(|w| w == text.as_bytes())
            .unwrap(),
        len: text.len(),
        encoding,
    };
    let mut m = Message::new(
        addr("x@b.test"),
        vec![addr("bob@a.test")],
        "s",
        "plain text",
    );
    for (name, data) in [("esc", &b"a\nb"[..]), ("att", &b"hi"[..])] {
        m.parts.push(Part {
            name: name.into(),
            media_type: "text/plain".into(),
            data: Bytes::copy_from_slice(data),
            content: false,
        });
    }
    let mut form = WireForm::new("mmtp", wire.clone());
    form.spans = vec![
        Some(span("plain text", SpanEncoding::Raw)),
        Some(span(r#""a\nb""#, SpanEncoding::JsonString)),
        Some(span(r#""aGk=""#, SpanEncoding::JsonBase64)),
    ];
    m.wire = Some(form);
    let delivery = LocalDelivery::to(bob.id, "INBOX");
    store
        .submit(Submission {
            message: m.clone(),
            deliveries: vec![delivery],
            relays: vec![],
            stamp: None,
        })
        .await
        .unwrap();
    let back = store.message(m.id).await.unwrap().unwrap();
    assert_eq!(back, m);
    let db = rusqlite::Connection::open(dir.path().join("mail.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM parts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "the octets are in the wire form only");
}

#[tokio::test]
async fn concurrent_submits_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = open(dir.path());
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let m = Message::new(
                    addr("x@b.test"),
                    vec![addr("bob@a.test")],
                    format!("{t}-{i}"),
                    "b",
                );
                deliver(&*store, m, bob.id).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.stats().await.unwrap().messages, 320);
    let text = metrics.render();
    let commits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("mailgate_store_commit_batch_size_count "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // One create_account commit plus the submits: batching means far fewer commits than writes.
    assert!(
        commits < 321,
        "{commits} commits for 321 writes: no group commit"
    );
}

#[tokio::test]
async fn data_survives_reopen_and_backup_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let (store, metrics) = open(dir.path());
        let core = core(store.clone(), metrics);
        core.add_account(&addr("bob@a.test"), "pw").await.unwrap();
        let m = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "keep", "me");
        id = m.id;
        core.submit(m, &peer(), None).await.unwrap();
        store.backup(&dir.path().join("copy.db")).await.unwrap();
        assert!(
            store.backup(&dir.path().join("copy.db")).await.is_err(),
            "backup never overwrites"
        );
        store.close().await.unwrap();
        let m = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "late", "");
        assert!(
            core.submit(m, &peer(), None).await.is_err(),
            "closed store refuses writes"
        );
    }
    let (store, _) = open(dir.path());
    assert_eq!(store.message(id).await.unwrap().unwrap().subject, "keep");
    let metrics = Arc::new(Metrics::new());
    let copy = SqliteStore::open(SqliteOptions::new(dir.path().join("copy.db")), metrics).unwrap();
    assert_eq!(copy.message(id).await.unwrap().unwrap().subject, "keep");
    assert_eq!(copy.accounts().await.unwrap().len(), 1);
}

/// Under sustained writes the write-ahead log is kept near its limit: a passive checkpoint
/// alone never finds it wholly copied, so it never restarts (it grew to 15 GB while a million
/// messages came in without a pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_ahead_log_is_kept_to_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SqliteOptions::new(dir.path().join("mail.db"));
    opts.wal_limit = 256 * 1024;
    let store = Arc::new(SqliteStore::open(opts, Arc::new(Metrics::new())).unwrap());
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let wal = dir.path().join("mail.db-wal");
    let (mut largest, mut written, mut sent) = (0u64, 0u64, 0usize);
    let started = std::time::Instant::now();
    // Without a pause, for 3 s (at most 4,000 messages): many checkpoint ticks.
    while started.elapsed() < std::time::Duration::from_secs(3) && sent < 4_000 {
        let writes = (0..16).map(|i| {
            let store = store.clone();
            let body = format!("{sent}-{i}-{}", "x".repeat(16 * 1024));
            tokio::spawn(async move {
                let m = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "s", &body);
                deliver(&*store, m, bob.id).await;
            })
        });
        for w in writes {
            w.await.unwrap();
        }
        sent += 16;
        written += 16 * 16 * 1024;
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(
        largest > 256 * 1024,
        "the test wrote past the limit ({largest})"
    );
    // Unbounded, the log holds every page each message touched: about four times the bodies.
    assert!(
        largest < written,
        "WAL reached {largest} bytes for {written} bytes of bodies"
    );
    assert_eq!(
        store
            .entries(bob.id, "INBOX", EntryQuery::default())
            .await
            .unwrap()
            .len(),
        sent
    );
}
