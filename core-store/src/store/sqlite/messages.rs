//! Messages on SQLite: writing a submission (stamp, de-duplication, message, entries, queue)
//! and reading a message back, its parts from their rows or from spans of its wire form.

use super::*;
use crate::store::rows::{encode_meta, origin_key, MessageRow, StoredMessage};

pub(super) fn insert_message(conn: &Connection, m: &Message) -> Result<(), StoreError> {
    let (meta, separate_parts) = encode_meta(m)?;
    let id = m.id.0.as_bytes();
    conn.prepare_cached(
        "INSERT INTO messages (id, sender, subject, kind, importance, received_at, size, meta,
                               wire_protocol, wire, origin_key)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
    )?
    .execute(params![
        &id[..],
        m.sender.to_string(),
        m.subject,
        kind_code(m.kind),
        m.importance.code(),
        m.received_at,
        m.size() as i64,
        meta,
        m.wire.as_ref().map(|w| w.protocol.as_str()),
        m.wire.as_ref().map(|w| &w.bytes[..]),
        origin_key(m),
    ])?;
    if !separate_parts {
        // The octets are in the wire form: stored once.
        return Ok(());
    }
    let mut part_stmt = conn.prepare_cached(
        "INSERT INTO parts (message_id, idx, name, media_type, is_content, data)
         VALUES (?1,?2,?3,?4,?5,?6)",
    )?;
    for (i, p) in m.parts.iter().enumerate() {
        part_stmt.execute(params![
            &id[..],
            i as i64,
            p.name,
            p.media_type,
            p.content,
            &p.data[..]
        ])?;
    }
    Ok(())
}

pub(super) fn ensure_folder(
    conn: &Connection,
    account: AccountId,
    folder: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO folders (account_id, name) VALUES (?1, ?2)")?
        .execute(params![account, folder])?;
    Ok(())
}

pub(super) fn insert_entry(
    conn: &Connection,
    account: AccountId,
    folder: &str,
    message: &MessageId,
    now: i64,
) -> Result<i64, StoreError> {
    if !is_standard_folder(folder) {
        // Standard folders exist from account creation on; user folders may be new.
        ensure_folder(conn, account, folder)?;
    }
    conn.prepare_cached(
        "INSERT INTO entries (account_id, folder, message_id, added_at) VALUES (?1,?2,?3,?4)",
    )?
    .execute(params![account, folder, &message.0.as_bytes()[..], now])?;
    Ok(conn.last_insert_rowid())
}

/// Does `account` already hold a message with `key`?
pub(super) fn already_delivered(
    conn: &Connection,
    key: &str,
    account: AccountId,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            // CROSS JOIN fixes the order: the origin key's messages (an index lookup), then
            // their entries; never the account's whole mailbox.
            "SELECT 1 FROM messages m CROSS JOIN entries e ON e.message_id = m.id
             WHERE m.origin_key = ?1 AND e.account_id = ?2 LIMIT 1",
        )?
        .query_row(params![key, account], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The account and folder of a delivery, resolved inside the submit's transaction.
pub(super) fn place(conn: &Connection, d: &LocalDelivery) -> Result<Placement, StoreError> {
    let account = match &d.account {
        AccountRef::Id(id) => *id,
        AccountRef::Address(a) => conn
            .prepare_cached("SELECT id FROM accounts WHERE address_key = ?1")?
            .query_row(params![a.account_key()], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::UnknownRecipient(a.clone()))?,
    };
    let folder = match &d.folder {
        FolderChoice::Exact(f) => f.clone(),
        FolderChoice::Existing(name) => {
            find_folder_in(conn, account, name)?.unwrap_or_else(|| INBOX.to_owned())
        }
    };
    Ok(Placement { account, folder })
}

/// The account's folder called `name`: the path itself, else the shortest path whose last
/// component it is (case-insensitive).
pub(super) fn find_folder_in(
    conn: &Connection,
    account: AccountId,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let exact: Option<String> = conn
        .prepare_cached("SELECT name FROM folders WHERE account_id = ?1 AND name = ?2")?
        .query_row(params![account, name], |r| r.get(0))
        .optional()?;
    if exact.is_some() {
        return Ok(exact);
    }
    let suffix = format!("/{}", name.to_ascii_lowercase());
    let mut stmt = conn.prepare_cached("SELECT name FROM folders WHERE account_id = ?1")?;
    let names = stmt
        .query_map(params![account], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names
        .into_iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(&suffix))
        .min_by(|a, b| (a.len(), a).cmp(&(b.len(), b))))
}

pub(super) fn write_submission(
    conn: &Connection,
    s: &Submission,
) -> Result<Vec<Placement>, StoreError> {
    let placed = s
        .deliveries
        .iter()
        .map(|d| place(conn, d))
        .collect::<Result<Vec<_>, _>>()?;
    // The stamp is spent first: a replayed stamp is refused even when the mail is a repeat.
    if let Some(stamp) = &s.stamp {
        let inserted = conn
            .prepare_cached("INSERT OR IGNORE INTO stamps (stamp, expires_at) VALUES (?1, ?2)")?
            .execute(params![stamp.value, stamp.expires_at])?;
        if inserted == 0 {
            return Err(StoreError::StampSpent);
        }
    }
    // A repeat of mail an account already holds (a relay retried after a crash or a lost
    // answer) is dropped for that account: at-least-once delivery, seen once.
    let mut fresh: Vec<&Placement> = placed.iter().collect();
    if let Some(key) = origin_key(&s.message) {
        let mut kept = Vec::with_capacity(fresh.len());
        for p in fresh {
            if !already_delivered(conn, &key, p.account)? {
                kept.push(p);
            }
        }
        if kept.is_empty() && s.relays.is_empty() && !placed.is_empty() {
            return Ok(placed);
        }
        fresh = kept;
    }
    write_fresh(conn, &s.message, &fresh, &s.relays)?;
    Ok(placed)
}

pub(super) fn write_fresh(
    conn: &Connection,
    message: &Message,
    placements: &[&Placement],
    relays: &[RelayRequest],
) -> Result<(), StoreError> {
    insert_message(conn, message)?;
    let now = message.received_at;
    for p in placements {
        insert_entry(conn, p.account, &p.folder, &message.id, now)?;
    }
    if !relays.is_empty() {
        let mut q = conn.prepare_cached(
            "INSERT INTO queue (message_id, recipient, domain, protocol, next_attempt, created_at)
             VALUES (?1,?2,?3,?4,?5,?5)",
        )?;
        for r in relays {
            q.execute(params![
                &message.id.0.as_bytes()[..],
                r.recipient.to_string(),
                r.recipient.domain,
                r.protocol,
                now
            ])?;
        }
    }
    Ok(())
}

/// Delete entries chosen by `select` (a query returning `id, message_id`), then those of their
/// messages that no mailbox entry and no pending queue entry refers to any more.
pub(super) fn delete_entries(
    conn: &Connection,
    select: &str,
    args: impl rusqlite::Params,
) -> Result<u64, StoreError> {
    let victims: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(select)?
        .query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut del = conn.prepare_cached("DELETE FROM entries WHERE id = ?1")?;
    for (id, _) in &victims {
        del.execute(params![id])?;
    }
    let mut gc = conn.prepare_cached(
        "DELETE FROM messages WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.message_id = ?1)
         AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = ?1 AND q.state < 2)",
    )?;
    for (_, message) in &victims {
        gc.execute(params![message])?;
    }
    Ok(victims.len() as u64)
}

pub(super) fn account_from_row(r: &Row<'_>) -> rusqlite::Result<(i64, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

pub(super) fn to_account(row: (i64, String, String, i64)) -> Result<Account, StoreError> {
    Ok(Account {
        id: row.0,
        address: parse_stored_address(&row.1)?,
        password_hash: row.2,
        created_at: row.3,
    })
}

pub(super) fn load_message(
    conn: &Connection,
    id: MessageId,
) -> Result<Option<Message>, StoreError> {
    let idb = &id.0.as_bytes()[..];
    let row = conn
        .prepare_cached(
            "SELECT sender, subject, kind, importance, received_at, meta, wire_protocol, wire
             FROM messages WHERE id = ?1",
        )?
        .query_row(params![idb], |r| {
            Ok(MessageRow {
                sender: r.get(0)?,
                subject: r.get(1)?,
                kind: r.get(2)?,
                importance: r.get(3)?,
                received_at: r.get(4)?,
                meta: r.get(5)?,
                wire_protocol: r.get(6)?,
                wire: r.get(7)?,
            })
        })
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored = StoredMessage::decode(id, row)?;
    let mut part_rows = Vec::new();
    if stored.has_part_rows() {
        let mut stmt = conn.prepare_cached(
            "SELECT name, media_type, is_content, data FROM parts
             WHERE message_id = ?1 ORDER BY idx",
        )?;
        part_rows = stmt
            .query_map(params![idb], |r| {
                Ok(Part {
                    name: r.get(0)?,
                    media_type: r.get(1)?,
                    content: r.get(2)?,
                    data: bytes::Bytes::from(r.get::<_, Vec<u8>>(3)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
    }
    stored.into_message(part_rows).map(Some)
}
