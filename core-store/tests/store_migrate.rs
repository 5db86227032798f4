//! `mailgate store migrate`: a SQLite store with a row in every table, copied into PostgreSQL
//! and back into a second SQLite file, reads the same through the store API at every step; a
//! destination that holds anything is refused and left as it was.

#[path = "support/pg.rs"]
mod pg;

use bytes::Bytes;
use mailgate_core::message::now_ms;
use mailgate_core::store::prelude::*;
use mailgate_core::store::{
    migrate_store, EntryQuery, Flags, LocalDelivery, NewNotification, PublicKeyRecord,
    RelayRequest, SpentStamp, StoreLocation, Submission,
};
use mailgate_core::{Address, Importance, Message, Metrics, Part};
use std::sync::Arc;

fn addr(s: &str) -> Address {
    Address::parse_any(s).unwrap()
}

async fn open(at: &StoreLocation) -> Arc<dyn Store> {
    at.open(Arc::new(Metrics::new()), 2).await.unwrap()
}

/// Fill `store` so every copied table holds at least one row.
async fn fill(store: &dyn Store) -> Vec<Message> {
    let bob = store
        .create_account(&addr("bob@a.test"), "hash-b")
        .await
        .unwrap();
    let carol = store
        .create_account(&addr("(carol)%(a.test)"), "hash-c")
        .await
        .unwrap();
    store.set_secret(bob.id, "immp", &[1, 2, 3]).await.unwrap();
    store
        .set_setting(bob.id, "immp.compression", "GZIP")
        .await
        .unwrap();
    store.site_secret("xhmtp.access", &[9; 32]).await.unwrap();
    store
        .put_key(PublicKeyRecord {
            address: addr("bob@a.test"),
            fingerprint: "ABCD".into(),
            armored: "-----BEGIN PGP PUBLIC KEY BLOCK-----".into(),
            owner_verified: true,
        })
        .await
        .unwrap();
    store.create_folder(bob.id, "INBOX/Work").await.unwrap();
    // TMTP: members, a node (its queue gets the INBOX mail below), aliases, a group, presence.
    {
        use mailgate_core::store::tmtp::{GroupMember, GroupStatus, TmtpPayload, TmtpPriority};
        store.tmtp_add_member(bob.id, "UIDB").await.unwrap();
        store.tmtp_add_member(carol.id, "UIDC").await.unwrap();
        let node = store
            .tmtp_add_node(bob.id, "laptop", b"hash", None)
            .await
            .unwrap();
        store.tmtp_add_alias(bob.id, "bob-alias").await.unwrap();
        let member = GroupMember {
            account: bob.id,
            alias: "bob-alias".into(),
            status: GroupStatus::Joined,
        };
        store
            .tmtp_set_group_member("the-group", &member)
            .await
            .unwrap();
        store.tmtp_set_ohi(bob.id, carol.id, true).await.unwrap();
        let frame = TmtpPayload::Frame(bytes::Bytes::from_static(b"0009{\"op\":11}"));
        store
            .tmtp_enqueue(&[node], TmtpPriority::Urgent, "f1", &frame)
            .await
            .unwrap();
    }
    let mut mail = Vec::new();
    for i in 0..5 {
        let mut m = Message::new(
            addr("(alice)%(b.test)"),
            vec![addr("bob@a.test"), addr("dave@c.test")],
            format!("subject {i}"),
            format!("body {i}"),
        );
        m.parts.push(Part {
            name: "logo.png".into(),
            media_type: "image/png".into(),
            data: Bytes::from(vec![0, 1, 2, 255, i as u8]),
            content: false,
        });
        m.tags
            .priority
            .push(if i % 2 == 0 { "high" } else { "low" }.into());
        if i == 0 {
            m.importance = Importance::High;
            m.wire = Some(mailgate_core::message::WireForm::new(
                "mmtp",
                Bytes::from_static(b"{\"a\":1}"),
            ));
        }
        store
            .submit(Submission {
                message: m.clone(),
                deliveries: vec![
                    LocalDelivery::to(bob.id, if i < 3 { "INBOX" } else { "INBOX/Work" }),
                    LocalDelivery::to(carol.id, "INBOX"),
                ],
                relays: vec![RelayRequest {
                    recipient: addr("dave@c.test"),
                    protocol: Some("mmtp".into()),
                }],
                stamp: Some(SpentStamp {
                    value: format!("1:20:1:bob@a.test::{i}:"),
                    expires_at: now_ms() + 3_600_000,
                }),
            })
            .await
            .unwrap();
        mail.push(m);
    }
    let inbox = store
        .entries(bob.id, "INBOX", EntryQuery::default())
        .await
        .unwrap();
    store
        .set_flags(
            bob.id,
            inbox[0].id,
            Flags {
                seen: true,
                deleted: false,
            },
        )
        .await
        .unwrap();
    store
        .set_flags(
            bob.id,
            inbox[1].id,
            Flags {
                seen: false,
                deleted: true,
            },
        )
        .await
        .unwrap();
    store
        .put_token("immp.cookie", "k1", b"v1", now_ms() + 3_600_000)
        .await
        .unwrap();
    store
        .create_node(bob.id, &addr("news@a.test"), "News")
        .await
        .unwrap();
    store
        .subscribe(carol.id, &addr("news@a.test"), "News")
        .await
        .unwrap();
    store
        .subscribe_remote(&addr("news@a.test"), &addr("erin@c.test"))
        .await
        .unwrap();
    store
        .grant_access(mail[0].id, &addr("dave@c.test"), vec![7; 32])
        .await
        .unwrap();
    store
        .put_notification(NewNotification {
            account: bob.id,
            url: "http://b.test/xhmtp/alice/1".into(),
            sender: Some(addr("alice@b.test")),
            subject: Some("hi".into()),
            date: Some(5),
            size: Some(10),
            peer: "127.0.0.1".into(),
        })
        .await
        .unwrap();
    mail
}

/// Everything a reader sees of the store, through the API, for comparing two copies.
async fn view(store: &dyn Store, mail: &[Message]) -> String {
    let mut out = String::new();
    for account in store.accounts().await.unwrap() {
        out += &format!("{account:?}\n");
        for folder in store.folders(account.id).await.unwrap() {
            out += &format!("{folder:?}\n");
            let entries = store
                .entries(account.id, &folder.name, EntryQuery::default())
                .await
                .unwrap();
            out += &format!("{entries:?}\n");
            let tags = store.tag_counts(account.id, &folder.name).await.unwrap();
            out += &format!("{tags:?}\n");
        }
        out += &format!("{:?}\n", store.secret(account.id, "immp").await.unwrap());
        out += &format!(
            "{:?}\n",
            store.setting(account.id, "immp.compression").await.unwrap()
        );
        out += &format!("{:?}\n", store.subscriptions(account.id).await.unwrap());
        out += &format!("{:?}\n", store.notifications(account.id, 10).await.unwrap());
        out += &format!(
            "{:?}\n",
            store.tmtp_member_by_account(account.id).await.unwrap()
        );
        out += &format!("{:?}\n", store.tmtp_ohi_targets(account.id).await.unwrap());
        for node in store.tmtp_nodes(account.id).await.unwrap() {
            out += &format!("{node} {:?}\n", store.tmtp_next(node).await.unwrap());
        }
    }
    out += &format!("{:?}\n", store.tmtp_alias("bob-alias").await.unwrap());
    out += &format!("{:?}\n", store.tmtp_group("the-group").await.unwrap());
    for m in mail {
        out += &format!("{:?}\n", store.message(m.id).await.unwrap());
        out += &format!(
            "{:?}\n",
            store.access(m.id, &addr("dave@c.test")).await.unwrap()
        );
    }
    out += &format!("{:?}\n", store.queue(None).await.unwrap());
    out += &format!("{:?}\n", store.key(&addr("bob@a.test")).await.unwrap());
    out += &format!("{:?}\n", store.node(&addr("news@a.test")).await.unwrap());
    out += &format!(
        "{:?}\n",
        store
            .remote_subscribers(&addr("news@a.test"))
            .await
            .unwrap()
    );
    out += &format!(
        "{:?}\n",
        store.site_secret("xhmtp.access", &[0]).await.unwrap()
    );
    out += &format!("{:?}\n", store.stats().await.unwrap());
    out
}

/// SQLite → PostgreSQL → SQLite: every table's count matches at each step, every reader's
/// view is the same, and each copy goes on working (new ids above the copied ones, spent
/// stamps and tokens still single-use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moves_to_postgres_and_back_whole() {
    let Some(server) = pg::server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let first = StoreLocation::Sqlite(dir.path().join("first.db"));
    let back = StoreLocation::Sqlite(dir.path().join("back.db"));
    let url = server
        .fresh_database(&pg::database_name(
            "a_store_moves_to_postgres_and_back_whole",
        ))
        .await;
    let postgres: StoreLocation = url.parse().unwrap();

    let store = open(&first).await;
    let mail = fill(&*store).await;
    let original = view(&*store, &mail).await;
    store.close().await.unwrap();
    drop(store);

    for (from, to) in [(&first, &postgres), (&postgres, &back)] {
        let report = migrate_store(from, to).await.unwrap();
        assert!(report.matches(), "{from} → {to}:\n{report}");
        // Every table held something: the copy of each one was exercised.
        for (what, n, _) in &report.counts {
            assert!(*n > 0, "{what} was empty in the source:\n{report}");
        }
        let copy = open(to).await;
        assert_eq!(
            view(&*copy, &mail).await,
            original,
            "{to} reads differently"
        );
        copy.close().await.unwrap();
    }

    for at in [&postgres, &back] {
        let store = open(at).await;
        let bob = store.account(&addr("bob@a.test")).await.unwrap().unwrap();
        let newest = store
            .entries(bob.id, "INBOX", EntryQuery::default())
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .max()
            .unwrap();
        let frank = store
            .create_account(&addr("frank@a.test"), "h")
            .await
            .unwrap();
        assert!(
            frank.id > bob.id,
            "{at}: account ids continue above the copied ones"
        );
        let m = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "new", "new");
        let placed = store
            .submit(Submission {
                message: m,
                deliveries: vec![LocalDelivery::to(bob.id, "INBOX")],
                relays: vec![],
                stamp: Some(SpentStamp {
                    value: "1:20:1:bob@a.test::0:".into(),
                    expires_at: now_ms() + 3_600_000,
                }),
            })
            .await;
        assert!(
            matches!(placed, Err(mailgate_core::StoreError::StampSpent)),
            "{at}: a copied spent stamp stays spent: {placed:?}"
        );
        let m = Message::new(addr("x@b.test"), vec![addr("bob@a.test")], "new", "new");
        let id = m.id;
        store
            .submit(Submission {
                message: m,
                deliveries: vec![LocalDelivery::to(bob.id, "INBOX")],
                relays: vec![],
                stamp: None,
            })
            .await
            .unwrap();
        let entry = store.find_entry(bob.id, id, None).await.unwrap().unwrap();
        assert!(
            entry.id > newest,
            "{at}: entry ids continue above the copied ones"
        );
        assert_eq!(
            store
                .take_token("immp.cookie", "k1", now_ms())
                .await
                .unwrap(),
            Some(b"v1".to_vec())
        );
        store.close().await.unwrap();
    }
}

/// Migrating into a store that holds anything is refused, and changes neither side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_with_data_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let from = StoreLocation::Sqlite(dir.path().join("from.db"));
    let to = StoreLocation::Sqlite(dir.path().join("to.db"));
    let source = open(&from).await;
    let mail = fill(&*source).await;
    source.close().await.unwrap();
    let dest = open(&to).await;
    dest.create_account(&addr("zed@a.test"), "h").await.unwrap();
    let before = view(&*dest, &mail).await;
    dest.close().await.unwrap();

    let err = migrate_store(&from, &to).await.unwrap_err();
    assert!(err.to_string().contains("empty store"), "{err}");
    let dest = open(&to).await;
    assert_eq!(view(&*dest, &mail).await, before);
    assert!(
        migrate_store(&from, &from).await.is_err(),
        "a store onto itself"
    );
}
