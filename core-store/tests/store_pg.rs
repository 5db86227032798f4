//! The store against a real PostgreSQL server (see `support/pg.rs` for which): the contract
//! suite (`contract/`), then what only this back-end has (TLS to the database, migrations
//! when several nodes start at once, live events between stores).

mod contract;
#[path = "support/pg.rs"]
mod pg;

use contract::{addr, Backend};
use mailgate_core::store::prelude::*;
use mailgate_core::store::{LiveEvent, LiveKind};
use mailgate_core::{MessageId, Metrics, PgOptions, PgStore};
use std::sync::Arc;

/// The PostgreSQL back-end: one database per test directory.
struct Pg;

#[async_trait::async_trait]
impl Backend for Pg {
    async fn open(&self, dir: &std::path::Path) -> (Arc<dyn Store>, Arc<Metrics>) {
        let server = pg::server().expect("checked by the case");
        let url = server
            .database(&pg::database_name(&dir.display().to_string()))
            .await;
        let metrics = Arc::new(Metrics::new());
        let store = PgStore::open(PgOptions::new(url), metrics.clone())
            .await
            .unwrap();
        (Arc::new(store), metrics)
    }
}

/// One test per contract case; each passes without running (saying why) only when there is
/// no server and none can be started, outside CI.
macro_rules! pg_contract_suite {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if pg::server().is_some() {
                    contract::$case(&Pg).await
                }
            }
        )*
    };
}

pg_contract_suite!(
    concurrent_writers_see_single_use_state_once,
    message_round_trips_with_every_field,
    replayed_stamp_is_refused_and_stores_nothing,
    router_policy,
    mailbox_flags_and_expunge,
    queue_lifecycle_and_lease_expiry,
    tokens_are_single_use_and_expire,
    hosted_messages_grants_and_expiry,
    notifications_deduplicate_and_fetch_atomically,
    a_repeat_of_relayed_mail_is_dropped_per_account,
    kept_counts_match_a_recount_after_every_change,
    local_deliveries_follow_the_submit_rules,
    tmtp_members_nodes_aliases_groups_and_presence,
    tmtp_queues_follow_the_inbox_in_order
);

/// A fresh database for one PG-only case.
async fn fresh(name: &str) -> Option<(pg::PgServer, String)> {
    let server = pg::server()?;
    let url = server.fresh_database(&pg::database_name(name)).await;
    Some((server, url))
}

async fn open(url: &str) -> Result<PgStore, mailgate_core::StoreError> {
    PgStore::open(PgOptions::new(url), Arc::new(Metrics::new())).await
}

/// Nodes starting at once against an empty database: the advisory lock lets one migrate,
/// the others find the schema there; all of them work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_migrate_once() {
    let Some((_, url)) = fresh("nodes_starting_at_once_migrate_once").await else {
        return;
    };
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opening {
        stores.push(o.await.unwrap().expect("every node opens the store"));
    }
    for (i, s) in stores.iter().enumerate() {
        s.create_account(&addr(&format!("n{i}@a.test")), "x")
            .await
            .unwrap();
    }
    assert_eq!(stores[0].accounts().await.unwrap().len(), 4);
}

/// TLS to the database: `require` encrypts, `verify-full` checks the certificate against
/// `sslrootcert`, and a wrong root is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_by_sslmode() {
    let Some((server, url)) = fresh("tls_to_the_database_by_sslmode").await else {
        return;
    };
    let ca = server
        .ca
        .clone()
        .expect("the test server has TLS (MAILGATE_TEST_PG_CA names its CA)");
    let with = |params: &str| {
        let mut u = url::Url::parse(&url).unwrap();
        u.set_query(Some(params));
        u.to_string()
    };
    for params in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ] {
        let store = open(&with(&params))
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
        store
            .create_account(&addr(&format!("tls{}@a.test", params.len())), "x")
            .await
            .unwrap();
        assert!(
            store.connection_is_encrypted().await.unwrap(),
            "{params}: the connection is encrypted"
        );
    }
    // Some other CA: the server's certificate does not verify.
    let other = tempfile::tempdir().unwrap();
    let wrong = other.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(&wrong, cert.cert.pem()).unwrap();
    let refused = open(&with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        wrong.display()
    )))
    .await;
    assert!(refused.is_err(), "a certificate from another CA is refused");
    assert!(
        open(&with("sslmode=bogus")).await.is_err(),
        "an unknown sslmode is an error, not plain text"
    );
}

/// A live event published through one store reaches subscribers of another store on the
/// same database (as it would a second node), after the publishing call returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_reach_every_store_on_the_database() {
    let Some((_, url)) = fresh("live_events_reach_every_store_on_the_database").await else {
        return;
    };
    let (one, two) = (open(&url).await.unwrap(), open(&url).await.unwrap());
    let mut rx = two.subscribe_live();
    let event = LiveEvent {
        kind: LiveKind::Push(MessageId::new()),
        accounts: (1..=1200).collect(),
    };
    // The listener connects in the background: publish until it hears one publication whole.
    // A publication heard in part (the listener came up between its chunks) is dropped and the
    // event published again; a quiet 300 ms ends a publication.
    let mut got = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut publish = true;
    while got.len() < event.accounts.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the event did not arrive whole"
        );
        if publish {
            got.clear();
            one.publish_live(event.clone()).await.unwrap();
            publish = false;
        }
        let wait = std::time::Duration::from_millis(300);
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Ok(e)) => {
                assert_eq!(e.kind, event.kind);
                got.extend(e.accounts);
            }
            _ => publish = got.len() < event.accounts.len(),
        }
    }
    // More accounts than one NOTIFY payload holds: it came in chunks, all of them.
    assert_eq!(got.into_iter().collect::<Vec<_>>(), event.accounts);
}
