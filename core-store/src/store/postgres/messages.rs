//! Messages on PostgreSQL: writing a submission (stamp, de-duplication, message, entries,
//! queue) in one transaction, reading a message back, and removing entries with the messages
//! nobody references any more.

use crate::mailbox::{is_standard_folder, INBOX};
use crate::message::{Message, MessageId, Part};
use crate::store::rows::{encode_meta, kind_code, origin_key, MessageRow, StoredMessage};
use crate::store::{AccountId, AccountRef, FolderChoice, LocalDelivery, Placement, Submission};
use crate::store::{RelayRequest, StoreError};
use deadpool_postgres::GenericClient;

/// Insert the account's folder when missing.
pub(super) async fn ensure_folder(
    c: &impl GenericClient,
    account: AccountId,
    folder: &str,
) -> Result<(), StoreError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO folders (account_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
    c.execute(&stmt, &[&account, &folder]).await?;
    Ok(())
}

/// Place `message` in the folder (made when it is a new user folder); the entry's id.
pub(super) async fn insert_entry(
    c: &impl GenericClient,
    account: AccountId,
    folder: &str,
    message: &MessageId,
    now: i64,
) -> Result<i64, StoreError> {
    if !is_standard_folder(folder) {
        ensure_folder(c, account, folder).await?;
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO entries (account_id, folder, message_id, added_at)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .await?;
    let row = c
        .query_one(&stmt, &[&account, &folder, &message.0, &now])
        .await?;
    Ok(row.get(0))
}

async fn insert_message(c: &impl GenericClient, m: &Message) -> Result<(), StoreError> {
    let (meta, separate_parts) = encode_meta(m)?;
    let stmt = c
        .prepare_cached(
            "INSERT INTO messages (id, sender, subject, kind, importance, received_at, size, meta,
                                   wire_protocol, wire, origin_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, CAST($8::text AS jsonb), $9, $10, $11)",
        )
        .await?;
    let wire = m.wire.as_ref();
    c.execute(
        &stmt,
        &[
            &m.id.0,
            &m.sender.to_string(),
            &m.subject,
            &(kind_code(m.kind) as i16),
            &(m.importance.code() as i16),
            &m.received_at,
            &(m.size() as i64),
            &meta,
            &wire.map(|w| w.protocol.as_str()),
            &wire.map(|w| &w.bytes[..]),
            &origin_key(m),
        ],
    )
    .await?;
    if !separate_parts {
        // The octets are in the wire form: stored once.
        return Ok(());
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO parts (message_id, idx, name, media_type, is_content, data)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    for (i, p) in m.parts.iter().enumerate() {
        c.execute(
            &stmt,
            &[
                &m.id.0,
                &(i as i32),
                &p.name,
                &p.media_type,
                &p.content,
                &&p.data[..],
            ],
        )
        .await?;
    }
    Ok(())
}

/// The account and folder of a delivery, resolved inside the submit's transaction.
async fn place(c: &impl GenericClient, d: &LocalDelivery) -> Result<Placement, StoreError> {
    let account = match &d.account {
        AccountRef::Id(id) => *id,
        AccountRef::Address(a) => {
            let stmt = c
                .prepare_cached("SELECT id FROM accounts WHERE address_key = $1")
                .await?;
            c.query_opt(&stmt, &[&a.account_key()])
                .await?
                .map(|r| r.get(0))
                .ok_or_else(|| StoreError::UnknownRecipient(a.clone()))?
        }
    };
    let folder = match &d.folder {
        FolderChoice::Exact(f) => f.clone(),
        FolderChoice::Existing(name) => find_folder(c, account, name)
            .await?
            .unwrap_or_else(|| INBOX.to_owned()),
    };
    Ok(Placement { account, folder })
}

/// The account's folder called `name`: the path itself, else the shortest path whose last
/// component it is (case-insensitive).
async fn find_folder(
    c: &impl GenericClient,
    account: AccountId,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let stmt = c
        .prepare_cached(
            "SELECT name FROM folders WHERE account_id = $1
               AND (key = lower($2) OR right(key, length($2) + 1) = '/' || lower($2))
             ORDER BY key = lower($2) DESC, length(name), name LIMIT 1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&account, &name])
        .await?
        .map(|r| r.get(0)))
}

/// Does `account` already hold a message with this origin key?
async fn already_delivered(
    c: &impl GenericClient,
    key: &str,
    account: AccountId,
) -> Result<bool, StoreError> {
    let stmt = c
        .prepare_cached(
            "SELECT 1 FROM messages m JOIN entries e ON e.message_id = m.id
             WHERE m.origin_key = $1 AND e.account_id = $2 LIMIT 1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&key, &account]).await?.is_some())
}

/// Write a submission inside the caller's transaction.
pub(super) async fn write_submission(
    c: &impl GenericClient,
    s: &Submission,
) -> Result<Vec<Placement>, StoreError> {
    let mut placed = Vec::with_capacity(s.deliveries.len());
    for d in &s.deliveries {
        placed.push(place(c, d).await?);
    }
    // The stamp is spent first: a replayed stamp is refused even when the mail is a repeat.
    // (A second node spending the same stamp waits for this commit, then finds the row.)
    if let Some(stamp) = &s.stamp {
        let stmt = c
            .prepare_cached(
                "INSERT INTO stamps (stamp, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .await?;
        if c.execute(&stmt, &[&stamp.value, &stamp.expires_at]).await? == 0 {
            return Err(StoreError::StampSpent);
        }
    }
    let mut fresh: Vec<&Placement> = placed.iter().collect();
    if let Some(key) = origin_key(&s.message) {
        let mut kept = Vec::with_capacity(fresh.len());
        for p in fresh {
            if !already_delivered(c, &key, p.account).await? {
                kept.push(p);
            }
        }
        if kept.is_empty() && s.relays.is_empty() && !placed.is_empty() {
            return Ok(placed);
        }
        fresh = kept;
    }
    // Folder rows are locked by the counting triggers: always in one order, so two
    // transactions delivering to the same accounts never wait on each other in a circle.
    fresh.sort_by(|a, b| {
        (a.account, a.folder.to_lowercase()).cmp(&(b.account, b.folder.to_lowercase()))
    });
    write_fresh(c, &s.message, &fresh, &s.relays).await?;
    Ok(placed)
}

async fn write_fresh(
    c: &impl GenericClient,
    message: &Message,
    placements: &[&Placement],
    relays: &[RelayRequest],
) -> Result<(), StoreError> {
    insert_message(c, message).await?;
    let now = message.received_at;
    for p in placements {
        insert_entry(c, p.account, &p.folder, &message.id, now).await?;
    }
    if !relays.is_empty() {
        let stmt = c
            .prepare_cached(
                "INSERT INTO queue (message_id, recipient, domain, protocol, next_attempt, created_at)
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .await?;
        for r in relays {
            c.execute(
                &stmt,
                &[
                    &message.id.0,
                    &r.recipient.to_string(),
                    &r.recipient.domain,
                    &r.protocol,
                    &now,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// Delete these entries (chosen and locked by the caller's statement), then those of their
/// messages that no mailbox entry and no pending queue entry refers to any more.
pub(super) async fn delete_entries(
    c: &impl GenericClient,
    victims: &[(i64, uuid::Uuid)],
) -> Result<u64, StoreError> {
    if victims.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = victims.iter().map(|(id, _)| *id).collect();
    let mut messages: Vec<uuid::Uuid> = victims.iter().map(|(_, m)| *m).collect();
    messages.sort_unstable();
    messages.dedup();
    let del = c
        .prepare_cached("DELETE FROM entries WHERE id = ANY($1)")
        .await?;
    let n = c.execute(&del, &[&ids]).await?;
    let gc = c
        .prepare_cached(
            "DELETE FROM messages m WHERE m.id = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.message_id = m.id)
             AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = m.id AND q.state < 2)",
        )
        .await?;
    c.execute(&gc, &[&messages]).await?;
    Ok(n)
}

/// Load a stored message.
pub(super) async fn load_message(
    c: &impl GenericClient,
    id: MessageId,
) -> Result<Option<Message>, StoreError> {
    let stmt = c
        .prepare_cached(
            "SELECT sender, subject, kind, importance, received_at, meta::text, wire_protocol, wire
             FROM messages WHERE id = $1",
        )
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&id.0]).await? else {
        return Ok(None);
    };
    let row = MessageRow {
        sender: r.get(0),
        subject: r.get(1),
        kind: i64::from(r.get::<_, i16>(2)),
        importance: i64::from(r.get::<_, i16>(3)),
        received_at: r.get(4),
        meta: r.get(5),
        wire_protocol: r.get(6),
        wire: r.get(7),
    };
    let stored = StoredMessage::decode(id, row)?;
    let mut part_rows = Vec::new();
    if stored.has_part_rows() {
        let stmt = c
            .prepare_cached(
                "SELECT name, media_type, is_content, data FROM parts
                 WHERE message_id = $1 ORDER BY idx",
            )
            .await?;
        part_rows = c
            .query(&stmt, &[&id.0])
            .await?
            .into_iter()
            .map(|r| Part {
                name: r.get(0),
                media_type: r.get(1),
                content: r.get(2),
                data: bytes::Bytes::from(r.get::<_, Vec<u8>>(3)),
            })
            .collect();
    }
    stored.into_message(part_rows).map(Some)
}
