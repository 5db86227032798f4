//! The store's contract: every behaviour a back-end must have, written once against
//! [`Store`] and run by each back-end's test file (`tests/store.rs` for SQLite) through
//! [`contract_suite!`].

use bytes::Bytes;
use mailgate_core::message::now_ms;
use mailgate_core::store::{
    EntryQuery, Flags, LocalDelivery, QueueState, RelayOutcome, SpentStamp, Submission,
};
use mailgate_core::{
    Address, Core, Importance, Message, Metrics, Origin, Part, Policy, Store, StoreError,
    SubmitError, Submitter,
};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// A store back-end under test.
#[async_trait::async_trait]
pub trait Backend: Sync {
    /// The store kept in `dir` (an empty one the first time), with its metrics. A back-end
    /// on a server keys its database by `dir`, so opening it again finds the same store.
    async fn open(&self, dir: &std::path::Path) -> (Arc<dyn Store>, Arc<Metrics>);
}

/// One `#[tokio::test]` per contract case, each against `$backend`.
#[macro_export]
macro_rules! contract_suite {
    ($backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                contract::$case(&$backend).await
            }
        )*
    };
}

/// An address from its text.
pub fn addr(s: &str) -> Address {
    Address::parse_any(s).unwrap()
}

/// Store `message` in `account`'s INBOX, durably.
pub async fn deliver(
    store: &dyn Store,
    message: Message,
    account: mailgate_core::store::AccountId,
) {
    store
        .submit(Submission {
            message,
            deliveries: vec![LocalDelivery::to(account, "INBOX")],
            relays: vec![],
            stamp: None,
        })
        .await
        .unwrap();
}

/// A core over `store` for the local domain `a.test`.
pub fn core(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Core {
    Core::new(store, Policy::new(["a.test"]), metrics)
}

/// An unauthenticated peer's origin.
pub fn peer() -> Origin {
    Origin {
        protocol: "test",
        submitter: Submitter::Peer(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

pub async fn message_round_trips_with_every_field(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = backend.open(dir.path()).await;
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let mut m = Message::new(
        addr("(alice)%(b.test)"),
        vec![addr("bob+work@a.test")],
        "Hi",
        "Hello",
    );
    m.parts.push(Part {
        name: "logo.png".into(),
        media_type: "image/png".into(),
        data: Bytes::from_static(&[0, 1, 2, 255]),
        content: false,
    });
    m.tags.priority.push("high".into());
    m.tags.custom.push("x".into());
    m.importance = Importance::High;
    m.security.signature = Some("-----BEGIN PGP SIGNATURE-----".into());
    m.security.signature_verified = Some(true);
    m.trace.push(mailgate_core::TraceHop {
        protocol: "mmtp".into(),
        peer: "127.0.0.1".into(),
        at: 5,
    });
    m.wire = Some(mailgate_core::message::WireForm::new(
        "mmtp",
        Bytes::from_static(b"{\"a\":1}"),
    ));
    deliver(&*store, m.clone(), bob.id).await;
    let back = store.message(m.id).await.unwrap().unwrap();
    assert_eq!(back, m);
    let entries = store
        .entries(bob.id, "inbox", EntryQuery::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].message, m.id);
}

pub async fn replayed_stamp_is_refused_and_stores_nothing(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = backend.open(dir.path()).await;
    store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let core = core(store.clone(), metrics);
    let stamp = SpentStamp {
        value: "1:4:1:a:b:1::7:".into(),
        expires_at: now_ms() + 60_000,
    };
    let m1 = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "1", "1");
    let m2 = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "2", "2");
    core.submit(m1, &peer(), Some(stamp.clone())).await.unwrap();
    let err = core.submit(m2.clone(), &peer(), Some(stamp)).await;
    assert!(matches!(err, Err(SubmitError::StampSpent)), "{err:?}");
    assert!(store.message(m2.id).await.unwrap().is_none());
    assert_eq!(store.stats().await.unwrap().messages, 1);
}

pub async fn router_policy(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = backend.open(dir.path()).await;
    let core = core(store.clone(), metrics.clone());
    let alice = core.add_account(&addr("alice@a.test"), "pw").await.unwrap();
    core.add_account(&addr("bob@a.test"), "pw").await.unwrap();
    store
        .create_folder(alice.id, "INBOX/Receipts")
        .await
        .unwrap();
    assert!(core
        .add_account(&addr("eve@elsewhere.test"), "pw")
        .await
        .is_err());

    // Open relay: a peer may not send to another domain.
    let m = Message::new(addr("x@b.test"), vec![addr("carol@c.test")], "s", "b");
    assert!(matches!(
        core.submit(m, &peer(), None).await,
        Err(SubmitError::RelayDenied(_))
    ));
    // Unknown local recipient refused at the door.
    let m = Message::new(addr("x@b.test"), vec![addr("nobody@a.test")], "s", "b");
    assert!(matches!(
        core.submit(m, &peer(), None).await,
        Err(SubmitError::UnknownRecipient(_))
    ));
    // +folder, case-insensitive, by last segment; unknown folder falls back to INBOX.
    let m = Message::new(
        addr("x@b.test"),
        vec![addr("alice+receipts@A.TEST"), addr("bob+nosuch@a.test")],
        "s",
        "b",
    );
    let r = core.submit(m, &peer(), None).await.unwrap();
    assert_eq!(r.local[0].1, "INBOX/Receipts");
    assert_eq!(r.local[1].1, "INBOX");
    // A peer may not claim a local sender; a remote sender it claims is marked unverified,
    // whatever the message said of itself.
    let m = Message::new(addr("alice@a.test"), vec![addr("bob@a.test")], "s", "b");
    assert!(matches!(
        core.submit(m, &peer(), None).await,
        Err(SubmitError::LocalSenderUnauthenticated(_))
    ));
    let mut m = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "claim", "b");
    m.security.sender_check = Some(mailgate_core::SenderCheck::Account);
    let id = m.id;
    core.submit(m, &peer(), None).await.unwrap();
    let stored = store.message(id).await.unwrap().unwrap();
    assert_eq!(
        stored.security.sender_check,
        Some(mailgate_core::SenderCheck::Unverified)
    );
    // Authenticated local account may relay, but only as itself.
    let who = Origin {
        protocol: "test",
        submitter: Submitter::Account(alice.clone()),
    };
    let m = Message::new(addr("bob@a.test"), vec![addr("carol@c.test")], "s", "b");
    assert!(matches!(
        core.submit(m, &who, None).await,
        Err(SubmitError::SenderMismatch(_))
    ));
    let m = Message::new(
        addr("(alice)%(a.test)"),
        vec![addr("carol@c.test")],
        "s",
        "b",
    );
    let r = core.submit(m, &who, None).await.unwrap();
    assert_eq!(r.queued, vec![addr("carol@c.test")]);
    assert_eq!(store.queue(Some("C.test")).await.unwrap().len(), 1);
    // Size limit.
    let mut big = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "s", "");
    big.parts[0].data = Bytes::from(vec![
        b'x';
        mailgate_core::router::DEFAULT_MAX_MESSAGE_SIZE + 1
    ]);
    assert!(matches!(
        core.submit(big, &peer(), None).await,
        Err(SubmitError::TooLarge { .. })
    ));
    let text = metrics.render();
    assert!(
        text.contains(
            "mailgate_messages_refused_total{protocol=\"test\",reason=\"relay_denied\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("mailgate_messages_accepted_total{protocol=\"test\"} 3"),
        "{text}"
    );
    // Authentication: failures are counted per peer, and the peer is banned after the free ones.
    let peer: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    assert!(core
        .password_login("test", peer, &addr("alice@a.test"), "pw")
        .await
        .is_ok());
    for _ in 0..5 {
        assert!(matches!(
            core.password_login("test", peer, &addr("alice@a.test"), "nope")
                .await,
            Err(mailgate_core::LoginError::Refused)
        ));
    }
    assert!(matches!(
        core.password_login("test", peer, &addr("zed@a.test"), "pw")
            .await,
        Err(mailgate_core::LoginError::Refused)
    ));
    // Banned now: even the right password is not checked.
    assert!(matches!(
        core.password_login("test", peer, &addr("alice@a.test"), "pw")
            .await,
        Err(mailgate_core::LoginError::Throttled(_))
    ));
    let other: std::net::IpAddr = "192.0.2.8".parse().unwrap();
    assert!(core
        .password_login("test", other, &addr("alice@a.test"), "pw")
        .await
        .is_ok());
    let text = metrics.render();
    assert!(
        text.contains("mailgate_events_total{event=\"login_test\",outcome=\"failed\"} 6"),
        "{text}"
    );
}

pub async fn mailbox_flags_and_expunge(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = backend.open(dir.path()).await;
    let core = core(store.clone(), metrics);
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let m = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "s", "b");
    let id = m.id;
    core.submit(m, &peer(), None).await.unwrap();
    let e = store
        .entries(bob.id, "INBOX", EntryQuery::default())
        .await
        .unwrap();
    store.add_entry(bob.id, "Archive", id).await.unwrap();
    let folders = store.folders(bob.id).await.unwrap();
    let inbox = folders.iter().find(|f| f.name == "INBOX").unwrap();
    assert_eq!((inbox.total, inbox.unseen), (1, 1));
    assert!(folders.iter().any(|f| f.name == "Archive" && f.total == 1));
    store
        .set_flags(
            bob.id,
            e[0].id,
            Flags {
                seen: true,
                deleted: false,
            },
        )
        .await
        .unwrap();
    let unseen = EntryQuery {
        seen: Some(false),
        ..Default::default()
    };
    assert!(store
        .entries(bob.id, "INBOX", unseen)
        .await
        .unwrap()
        .is_empty());
    // Flags of someone else's entry cannot be changed.
    assert!(matches!(
        store.set_flags(bob.id + 1, e[0].id, Flags::default()).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .set_flags(
            bob.id,
            e[0].id,
            Flags {
                seen: true,
                deleted: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.expunge(bob.id, "INBOX").await.unwrap(), 1);
    // Still referenced from Archive.
    assert!(store.message(id).await.unwrap().is_some());
    let a = store
        .entries(bob.id, "archive", EntryQuery::default())
        .await
        .unwrap();
    store
        .set_flags(
            bob.id,
            a[0].id,
            Flags {
                seen: false,
                deleted: true,
            },
        )
        .await
        .unwrap();
    store.expunge(bob.id, "Archive").await.unwrap();
    assert!(store.message(id).await.unwrap().is_none());
}

pub async fn queue_lifecycle_and_lease_expiry(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = backend.open(dir.path()).await;
    let core = core(store.clone(), metrics);
    let alice = core.add_account(&addr("alice@a.test"), "pw").await.unwrap();
    let who = Origin {
        protocol: "test",
        submitter: Submitter::Account(alice),
    };
    let m = Message::new(
        addr("alice@a.test"),
        vec![addr("x@c.test"), addr("y@d.test")],
        "s",
        "b",
    );
    core.submit(m, &who, None).await.unwrap();
    let now = now_ms();
    let claimed = store.claim_due(now, 10, 1000).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        store.claim_due(now, 10, 1000).await.unwrap().is_empty(),
        "leased entries are not claimed twice"
    );
    // A worker that died: the lease runs out and the entry is due again.
    assert_eq!(
        store.claim_due(now + 1001, 10, 1000).await.unwrap().len(),
        2
    );
    store
        .finish_relay(claimed[0].id, RelayOutcome::Delivered)
        .await
        .unwrap();
    store
        .finish_relay(
            claimed[1].id,
            RelayOutcome::Retry {
                next_attempt: now + 60_000,
                error: "down".into(),
            },
        )
        .await
        .unwrap();
    let q = store.queue(None).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].state, QueueState::Pending);
    assert_eq!(q[0].attempts, 1);
    assert_eq!(q[0].last_error.as_deref(), Some("down"));
    assert!(store
        .claim_due(now + 2000, 10, 1000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.retry_now(Some(q[0].id), now + 2000).await.unwrap(), 1);
    assert_eq!(
        store.claim_due(now + 2000, 10, 1000).await.unwrap().len(),
        1
    );
    assert!(store.drop_queued(q[0].id).await.unwrap());
    assert_eq!(store.stats().await.unwrap().queue_depth, 0);
}

pub async fn tokens_are_single_use_and_expire(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = backend.open(dir.path()).await;
    let now = now_ms();
    store
        .put_token("cookie", "k1", b"v", now + 1000)
        .await
        .unwrap();
    store
        .put_token("cookie", "k2", b"v", now - 1)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_token("cookie", "k1", now)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(store.take_token("cookie", "k1", now).await.unwrap(), None);
    assert_eq!(store.take_token("cookie", "k2", now).await.unwrap(), None);
    assert_eq!(store.take_token("nonce", "k1", now).await.unwrap(), None);
}

pub async fn hosted_messages_grants_and_expiry(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = backend.open(dir.path()).await;
    let alice = store
        .create_account(&addr("alice@a.test"), "x")
        .await
        .unwrap();
    let m = Message::new(
        addr("alice@a.test"),
        vec![addr("bob@b.test"), addr("carol@c.test")],
        "s",
        "b",
    );
    let id = m.id;
    store
        .submit(Submission {
            message: m,
            deliveries: vec![],
            relays: vec![],
            stamp: None,
        })
        .await
        .unwrap();
    let (bob, carol) = (addr("bob@b.test"), addr("carol@c.test"));
    store.grant_access(id, &bob, vec![1; 32]).await.unwrap();
    // A second grant keeps the first hash.
    store.grant_access(id, &bob, vec![2; 32]).await.unwrap();
    store.grant_access(id, &carol, vec![3; 32]).await.unwrap();
    assert_eq!(
        store.access(id, &bob).await.unwrap().unwrap().code_hash,
        vec![1; 32]
    );
    assert!(store
        .access(id, &addr("eve@b.test"))
        .await
        .unwrap()
        .is_none());
    // Not everyone fetched: kept.
    store.mark_fetched(id, &bob, 1_000).await.unwrap();
    assert_eq!(store.expire_hosted(10_000_000, 1_000).await.unwrap(), 0);
    // Everyone fetched, but within the retention: kept; after it: deleted.
    store.mark_fetched(id, &carol, 2_000).await.unwrap();
    assert_eq!(store.expire_hosted(2_500, 1_000).await.unwrap(), 0);
    assert!(store.message(id).await.unwrap().is_some());
    assert_eq!(store.expire_hosted(3_001, 1_000).await.unwrap(), 1);
    assert!(store.message(id).await.unwrap().is_none());
    assert!(store.access(id, &bob).await.unwrap().is_none());
    let _ = alice;
}

pub async fn notifications_deduplicate_and_fetch_atomically(backend: &dyn Backend) {
    use mailgate_core::store::{FetchOutcome, FetchState, NewNotification};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = backend.open(dir.path()).await;
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let notice = NewNotification {
        account: bob.id,
        url: "http://bob%40a.test:c@b.test/xhmtp/alice/1".into(),
        sender: Some(addr("alice@b.test")),
        subject: Some("hi".into()),
        date: Some(5),
        size: Some(10),
        peer: "127.0.0.1".into(),
    };
    let (first, created) = store.put_notification(notice.clone()).await.unwrap();
    assert!(created);
    let (again, created) = store.put_notification(notice).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    // Claimed once while leased.
    let now = now_ms();
    assert_eq!(store.claim_fetches(now, 10, 60_000).await.unwrap().len(), 1);
    assert!(store
        .claim_fetches(now, 10, 60_000)
        .await
        .unwrap()
        .is_empty());
    store
        .finish_fetch(
            first.id,
            FetchOutcome::Retry {
                next_attempt: now,
                error: "down".into(),
            },
        )
        .await
        .unwrap();
    let retry = store.claim_fetches(now, 10, 60_000).await.unwrap();
    assert_eq!(retry[0].attempts, 1);
    assert_eq!(retry[0].last_error.as_deref(), Some("down"));
    // The fetched copy and the state change commit together.
    let copy = Message::new(addr("alice@b.test"), vec![addr("bob@a.test")], "hi", "body");
    let copy_id = copy.id;
    store
        .finish_fetch(
            first.id,
            FetchOutcome::Fetched(Box::new(Submission {
                message: copy,
                deliveries: vec![LocalDelivery::to(bob.id, "INBOX")],
                relays: vec![],
                stamp: None,
            })),
        )
        .await
        .unwrap();
    let listed = store.notifications(bob.id, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, FetchState::Fetched);
    assert_eq!(listed[0].message, Some(copy_id));
    let inbox = store
        .entries(bob.id, "INBOX", EntryQuery::default())
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(store
        .claim_fetches(now + 1_000_000, 10, 60_000)
        .await
        .unwrap()
        .is_empty());
}

pub async fn a_repeat_of_relayed_mail_is_dropped_per_account(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = backend.open(dir.path()).await;
    let c = core(store.clone(), metrics);
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let carol = store
        .create_account(&addr("carol@a.test"), "x")
        .await
        .unwrap();
    let relayed = |to: Vec<Address>| {
        let mut m = Message::new(addr("alice@b.test"), to, "once", "body");
        m.origin_id = Some("origin-1".into());
        m
    };
    c.submit(relayed(vec![addr("bob@a.test")]), &peer(), None)
        .await
        .unwrap();
    // The same message again (a retry), now also for carol: bob keeps one copy, carol gets hers.
    c.submit(
        relayed(vec![addr("bob@a.test"), addr("carol@a.test")]),
        &peer(),
        None,
    )
    .await
    .unwrap();
    c.submit(relayed(vec![addr("bob@a.test")]), &peer(), None)
        .await
        .unwrap();
    let count = |id| {
        let store = store.clone();
        async move {
            store
                .entries(id, "INBOX", EntryQuery::default())
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(count(bob.id).await, 1);
    assert_eq!(count(carol.id).await, 1);
    // Another sender with the same origin id is another message.
    let mut other = Message::new(addr("eve@c.test"), vec![addr("bob@a.test")], "x", "y");
    other.origin_id = Some("origin-1".into());
    c.submit(other, &peer(), None).await.unwrap();
    assert_eq!(count(bob.id).await, 2);
}

/// Folder totals, tag counts, tag listings and store-wide counts are kept by the store as mail
/// comes, is read, flagged, copied, removed and expunged: after every step they equal a count
/// done the slow way.
pub async fn kept_counts_match_a_recount_after_every_change(backend: &dyn Backend) {
    use mailgate_core::store::{TagFilter, IMPORTANCE_TAG};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = backend.open(dir.path()).await;
    let alice = store
        .create_account(&addr("alice@a.test"), "x")
        .await
        .unwrap();
    store.create_folder(alice.id, "INBOX/Work").await.unwrap();

    async fn recount(store: &dyn Store, account: i64, folder: &str) {
        let live = store
            .entries(account, folder, EntryQuery::default())
            .await
            .unwrap();
        let ids: Vec<_> = live.iter().map(|e| e.message).collect();
        let summaries = store.summaries(&ids).await.unwrap();
        let info = store
            .folders(account)
            .await
            .unwrap()
            .into_iter()
            .find(|f| f.name.eq_ignore_ascii_case(folder))
            .unwrap();
        assert_eq!(info.total, live.len() as u64, "{folder} total");
        let unseen = live.iter().filter(|e| !e.flags.seen).count() as u64;
        assert_eq!(info.unseen, unseen, "{folder} unseen");
        let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
        for s in &summaries {
            for (cat, values) in [
                ("priority", &s.tags.priority),
                ("category", &s.tags.category),
                ("custom", &s.tags.custom),
            ] {
                for v in values {
                    *want.entry((cat.into(), v.clone())).or_default() += 1;
                }
            }
            if s.importance == Importance::High {
                *want
                    .entry((IMPORTANCE_TAG.into(), "high".into()))
                    .or_default() += 1;
            }
        }
        let got: BTreeMap<(String, String), u64> = store
            .tag_counts(account, folder)
            .await
            .unwrap()
            .into_iter()
            .map(|t| ((t.category, t.value), t.count))
            .collect();
        assert_eq!(got, want, "{folder} tag counts");
        let work = TagFilter {
            categories: vec![
                ("category".into(), vec!["work".into()]),
                ("priority".into(), vec!["high".into(), "low".into()]),
            ],
        };
        let matching: Vec<i64> = live
            .iter()
            .zip(&summaries)
            .filter(|(_, s)| {
                s.tags.category.contains(&"work".to_owned())
                    && s.tags.priority.iter().any(|p| p == "high" || p == "low")
            })
            .map(|(e, _)| e.id)
            .collect();
        assert_eq!(
            store.count_entries(account, folder, &work).await.unwrap(),
            matching.len() as u64
        );
        let listed: Vec<i64> = store
            .entries(
                account,
                folder,
                EntryQuery {
                    tags: work.clone(),
                    ..EntryQuery::default()
                },
            )
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(listed, matching, "{folder} tagged listing");
        let stats = store.stats().await.unwrap();
        assert!(stats.messages >= summaries.len() as u64);
    }

    let mut ids = Vec::new();
    for i in 0..12 {
        let mut m = Message::new(addr("carol@b.test"), vec![addr("alice@a.test")], "s", "b");
        if i % 2 == 0 {
            m.tags.category.push("work".into());
        }
        if i % 3 == 0 {
            m.tags.priority.push("high".into());
        }
        if i % 4 == 0 {
            m.tags.custom.push(format!("c{}", i % 8));
            m.importance = Importance::High;
        }
        ids.push(m.id);
        let folder = if i < 8 { "INBOX" } else { "INBOX/Work" };
        store
            .submit(Submission {
                message: m,
                deliveries: vec![LocalDelivery::to(alice.id, folder)],
                relays: Vec::new(),
                stamp: None,
            })
            .await
            .unwrap();
    }
    recount(&*store, alice.id, "INBOX").await;
    recount(&*store, alice.id, "INBOX/Work").await;
    let inbox = store
        .entries(alice.id, "INBOX", EntryQuery::default())
        .await
        .unwrap();
    // Read, flagged deleted, undeleted.
    let flag = |entry: i64, seen: bool, deleted: bool| {
        let store = store.clone();
        async move {
            store
                .set_flags(alice.id, entry, Flags { seen, deleted })
                .await
                .unwrap()
        }
    };
    flag(inbox[0].id, true, false).await;
    flag(inbox[1].id, false, true).await;
    flag(inbox[2].id, true, true).await;
    recount(&*store, alice.id, "INBOX").await;
    flag(inbox[2].id, true, false).await;
    recount(&*store, alice.id, "INBOX").await;
    // Copied to another folder, then removed from the first (a move).
    store
        .add_entry(alice.id, "INBOX/Work", inbox[4].message)
        .await
        .unwrap();
    store
        .remove_entries(alice.id, &[inbox[4].id])
        .await
        .unwrap();
    recount(&*store, alice.id, "INBOX").await;
    recount(&*store, alice.id, "INBOX/Work").await;
    // Expunged, and a whole folder deleted.
    store.expunge(alice.id, "INBOX").await.unwrap();
    recount(&*store, alice.id, "INBOX").await;
    store.delete_folder(alice.id, "INBOX/Work").await.unwrap();
    store.create_folder(alice.id, "INBOX/Work").await.unwrap();
    recount(&*store, alice.id, "INBOX/Work").await;
    recount(&*store, alice.id, "INBOX").await;
    // Paging: the pages together are the listing.
    let all: Vec<i64> = store
        .entries(alice.id, "INBOX", EntryQuery::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .entries(
                alice.id,
                "INBOX",
                EntryQuery {
                    limit: Some(2),
                    after,
                    ..EntryQuery::default()
                },
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.id);
        paged.extend(page.iter().map(|e| e.id));
    }
    assert_eq!(paged, all);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.accounts, 1);
}

/// Mail the gateway writes with a state change (a fetched message, a bounce) is checked like a
/// submit: a fetching host cannot pose as a local sender, and only the front-end's own check
/// of a remote sender counts.
pub async fn local_deliveries_follow_the_submit_rules(backend: &dyn Backend) {
    use mailgate_core::store::AccountRef;
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = backend.open(dir.path()).await;
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let core = core(store.clone(), metrics);
    let fetched = Origin {
        protocol: "xhmtp",
        submitter: Submitter::Fetched,
    };
    let forged = Message::new(addr("alice@a.test"), vec![addr("bob@a.test")], "s", "b");
    let err = core.local_delivery(forged, AccountRef::Id(bob.id), &fetched);
    assert!(
        matches!(err, Err(SubmitError::LocalSenderUnauthenticated(_))),
        "{err:?}"
    );
    let mut remote = Message::new(addr("carol@b.test"), vec![addr("bob@a.test")], "s", "b");
    remote.security.sender_check = Some(mailgate_core::SenderCheck::Account);
    let s = core
        .local_delivery(remote, AccountRef::Id(bob.id), &fetched)
        .unwrap();
    assert_eq!(
        s.message.security.sender_check,
        Some(mailgate_core::SenderCheck::Unverified)
    );
    let big = Message::new(addr("carol@b.test"), vec![], "s", "x".repeat(11 << 20));
    assert!(matches!(
        core.local_delivery(big, AccountRef::Id(bob.id), &fetched),
        Err(SubmitError::TooLarge { .. })
    ));
    store.submit(s).await.unwrap();
    assert_eq!(
        store
            .entries(bob.id, "INBOX", EntryQuery::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Racing writers: of concurrent creations of one account exactly one succeeds, a single-use
/// token is taken once, and concurrent claims never hand out the same queue entry twice (what
/// several gateway nodes over one database rely on).
pub async fn concurrent_writers_see_single_use_state_once(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = backend.open(dir.path()).await;
    let created = futures_join(16, |_| {
        let store = store.clone();
        async move { store.create_account(&addr("race@a.test"), "h").await }
    })
    .await;
    assert_eq!(created.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(created
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::AccountExists(_))));

    let later = now_ms() + 60_000;
    store.put_token("nonce", "n1", b"v", later).await.unwrap();
    let taken = futures_join(16, |_| {
        let store = store.clone();
        async move { store.take_token("nonce", "n1", now_ms()).await.unwrap() }
    })
    .await;
    assert_eq!(taken.iter().filter(|t| t.is_some()).count(), 1);

    let core = core(store.clone(), metrics);
    let alice = core.add_account(&addr("alice@a.test"), "pw").await.unwrap();
    let who = Origin {
        protocol: "test",
        submitter: Submitter::Account(alice),
    };
    for i in 0..40 {
        let m = Message::new(
            addr("alice@a.test"),
            vec![addr(&format!("r{i}@c.test"))],
            "s",
            "b",
        );
        core.submit(m, &who, None).await.unwrap();
    }
    let now = now_ms();
    let claims = futures_join(8, |_| {
        let store = store.clone();
        async move { store.claim_due(now, 10, 60_000).await.unwrap() }
    })
    .await;
    let mut ids: Vec<i64> = claims.iter().flatten().map(|e| e.id).collect();
    let claimed = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), claimed, "an entry was claimed twice");
    assert_eq!(claimed, 40, "every due entry was claimed by someone");
}

/// Run `n` futures made by `f` at once, each on its own task, and collect their results.
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// TMTP members, nodes, aliases, groups and presence lists: what each back-end must keep.
pub async fn tmtp_members_nodes_aliases_groups_and_presence(backend: &dyn Backend) {
    use mailgate_core::store::tmtp::{GroupMember, GroupStatus};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = backend.open(dir.path()).await;
    let alice = store
        .create_account(&addr("alice@a.test"), "x")
        .await
        .unwrap();
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    let a = store.tmtp_add_member(alice.id, "UIDA").await.unwrap();
    assert_eq!(
        (a.uid.as_str(), a.address.clone()),
        ("UIDA", addr("alice@a.test"))
    );
    // A member keeps its uid.
    assert_eq!(
        store.tmtp_add_member(alice.id, "OTHER").await.unwrap().uid,
        "UIDA"
    );
    store.tmtp_add_member(bob.id, "UIDB").await.unwrap();
    assert_eq!(
        store
            .tmtp_member_by_uid("UIDB")
            .await
            .unwrap()
            .unwrap()
            .account,
        bob.id
    );
    assert!(store.tmtp_member_by_uid("NONE").await.unwrap().is_none());
    let n1 = store
        .tmtp_add_node(alice.id, "laptop", b"h1", None)
        .await
        .unwrap();
    let n2 = store
        .tmtp_add_node(alice.id, "phone", b"h2", None)
        .await
        .unwrap();
    assert_eq!(store.tmtp_nodes(alice.id).await.unwrap(), vec![n1, n2]);
    let (m, n) = store
        .tmtp_verify_node("UIDA", b"h2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.account, n), (alice.id, n2));
    assert!(store
        .tmtp_verify_node("UIDB", b"h2")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .tmtp_verify_node("UIDA", b"h3")
        .await
        .unwrap()
        .is_none());
    // Aliases are unique and never a group's name.
    assert!(store.tmtp_add_alias(alice.id, "alice-alias").await.unwrap());
    assert!(store.tmtp_add_alias(alice.id, "alice-alias").await.unwrap());
    assert!(!store.tmtp_add_alias(bob.id, "alice-alias").await.unwrap());
    assert_eq!(
        store.tmtp_alias("alice-alias").await.unwrap(),
        Some(alice.id)
    );
    let founder = GroupMember {
        account: alice.id,
        alias: "alice-alias".into(),
        status: GroupStatus::Joined,
    };
    assert!(!store
        .tmtp_set_group_member("alice-alias", &founder)
        .await
        .unwrap());
    assert!(store
        .tmtp_set_group_member("the-group", &founder)
        .await
        .unwrap());
    let invited = GroupMember {
        account: bob.id,
        alias: "bob-alias".into(),
        status: GroupStatus::Invited,
    };
    store
        .tmtp_set_group_member("the-group", &invited)
        .await
        .unwrap();
    let joined = GroupMember {
        status: GroupStatus::Joined,
        ..invited.clone()
    };
    store
        .tmtp_set_group_member("the-group", &joined)
        .await
        .unwrap();
    assert_eq!(
        store.tmtp_group("the-group").await.unwrap(),
        vec![founder, joined]
    );
    assert!(!store.tmtp_add_alias(bob.id, "the-group").await.unwrap());
    assert!(store.tmtp_group("no-group").await.unwrap().is_empty());
    // Presence lists: changes are reported, both directions are listed.
    assert!(store.tmtp_set_ohi(alice.id, bob.id, true).await.unwrap());
    assert!(!store.tmtp_set_ohi(alice.id, bob.id, true).await.unwrap());
    assert_eq!(
        store.tmtp_ohi_targets(alice.id).await.unwrap(),
        vec![bob.id]
    );
    assert_eq!(
        store.tmtp_ohi_sources(bob.id).await.unwrap(),
        vec![alice.id]
    );
    assert!(store.tmtp_set_ohi(alice.id, bob.id, false).await.unwrap());
    assert!(store.tmtp_ohi_targets(alice.id).await.unwrap().is_empty());
    // All of it survives reopening the store.
    drop(store);
    let (store, _) = backend.open(dir.path()).await;
    assert_eq!(
        store.tmtp_alias("alice-alias").await.unwrap(),
        Some(alice.id)
    );
    assert_eq!(store.tmtp_group("the-group").await.unwrap().len(), 2);
}

/// The per-node queue: INBOX mail from any submit is queued for each node in the same
/// commit, urgent entries go first, a new node may start with a copy, acks remove.
pub async fn tmtp_queues_follow_the_inbox_in_order(backend: &dyn Backend) {
    use mailgate_core::store::tmtp::{TmtpPayload, TmtpPriority};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = backend.open(dir.path()).await;
    let alice = store
        .create_account(&addr("alice@a.test"), "x")
        .await
        .unwrap();
    let bob = store
        .create_account(&addr("bob@a.test"), "x")
        .await
        .unwrap();
    store.tmtp_add_member(alice.id, "UIDA").await.unwrap();
    let n1 = store
        .tmtp_add_node(alice.id, "laptop", b"h1", None)
        .await
        .unwrap();
    let n2 = store
        .tmtp_add_node(alice.id, "phone", b"h2", None)
        .await
        .unwrap();
    let first = Message::new(addr("carol@b.test"), vec![addr("alice@a.test")], "1", "one");
    let first_id = first.id;
    deliver(&*store, first, alice.id).await;
    // Mail to a non-member, or to another folder, is queued for no node.
    deliver(
        &*store,
        Message::new(addr("c@b.test"), vec![], "x", "x"),
        bob.id,
    )
    .await;
    let filed = Message::new(addr("c@b.test"), vec![], "x", "x");
    store
        .submit(Submission {
            message: filed,
            deliveries: vec![LocalDelivery::to(alice.id, "Archive")],
            relays: vec![],
            stamp: None,
        })
        .await
        .unwrap();
    let frame = TmtpPayload::Frame(Bytes::from_static(b"0009{\"op\":11}"));
    store
        .tmtp_enqueue(&[n1, n2], TmtpPriority::Normal, "f1", &frame)
        .await
        .unwrap();
    store
        .tmtp_enqueue(&[n1], TmtpPriority::Urgent, "u1", &frame)
        .await
        .unwrap();
    let n3 = store
        .tmtp_add_node(alice.id, "tablet", b"h3", Some(n1))
        .await
        .unwrap();
    let drain = |node| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            while let Some(q) = store.tmtp_next(node).await.unwrap() {
                assert!(store.tmtp_ack(node, q.seq).await.unwrap());
                assert!(!store.tmtp_ack(node, q.seq).await.unwrap(), "acked once");
                if let TmtpPayload::Message(m) = q.payload {
                    assert_eq!(m, first_id);
                }
                ids.push(q.tmtp_id);
            }
            ids
        }
    };
    let mail = first_id.0.simple().to_string();
    assert_eq!(
        drain(n1).await,
        vec!["u1".to_owned(), mail.clone(), "f1".into()]
    );
    assert_eq!(drain(n2).await, vec![mail.clone(), "f1".into()]);
    assert_eq!(drain(n3).await, vec!["u1".to_owned(), mail, "f1".into()]);
    // Drained queues stay empty after a reopen.
    drop(store);
    let (store, _) = backend.open(dir.path()).await;
    assert!(store.tmtp_next(n1).await.unwrap().is_none());
}
