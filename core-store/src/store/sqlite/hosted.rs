//! SQLite statements of the XHMTP tables: access grants to sender-hosted messages and inbound
//! notifications with their fetch queue. [`super::SqliteStore`] runs them on its writer and
//! readers.

use super::messages::write_submission;
use super::SqliteStore;
use crate::address::Address;
use crate::message::now_ms;
use crate::message::MessageId;
use crate::store::rows::{fetch_state_from_code, message_id_from_blob, parse_stored_address};
use crate::store::HostedStore;
use crate::store::{
    AccessGrant, AccountId, FetchOutcome, NewNotification, Notification, StoreError,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

pub(super) fn grant_access(
    c: &Connection,
    message: &MessageId,
    recipient: &Address,
    code_hash: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO access_grants (message_id, recipient, code_hash, created_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        &message.0.as_bytes()[..],
        recipient.account_key(),
        code_hash,
        now
    ])?;
    Ok(())
}

pub(super) fn access(
    c: &Connection,
    message: &MessageId,
    recipient: &Address,
) -> Result<Option<AccessGrant>, StoreError> {
    let row: Option<(Vec<u8>, Option<i64>)> = c
        .prepare_cached(
            "SELECT code_hash, fetched_at FROM access_grants
             WHERE message_id = ?1 AND recipient = ?2",
        )?
        .query_row(
            params![&message.0.as_bytes()[..], recipient.account_key()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map(|(code_hash, fetched_at)| AccessGrant {
        message: *message,
        recipient: recipient.account(),
        code_hash,
        fetched_at,
    }))
}

pub(super) fn mark_fetched(
    c: &Connection,
    message: &MessageId,
    recipient: &Address,
    now: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE access_grants SET fetched_at = ?3
         WHERE message_id = ?1 AND recipient = ?2 AND fetched_at IS NULL",
    )?
    .execute(params![
        &message.0.as_bytes()[..],
        recipient.account_key(),
        now
    ])?;
    Ok(())
}

pub(super) fn expire_hosted(c: &Connection, cutoff: i64) -> Result<u64, StoreError> {
    let victims: Vec<Vec<u8>> = c
        .prepare_cached(
            // Only messages with a grant fetched before the cutoff are looked at, by index;
            // each goes when no grant of it is unfetched or fetched later (a message with
            // several old grants comes up once per grant; the repeats delete nothing).
            "SELECT g.message_id FROM access_grants g INDEXED BY access_grants_fetched
             WHERE g.fetched_at < ?1
               AND NOT EXISTS (SELECT 1 FROM access_grants o WHERE o.message_id = g.message_id
                               AND (o.fetched_at IS NULL OR o.fetched_at >= ?1))",
        )?
        .query_map(params![cutoff], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut grants = c.prepare_cached("DELETE FROM access_grants WHERE message_id = ?1")?;
    let mut messages = c.prepare_cached(
        "DELETE FROM messages WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.message_id = ?1)
         AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = ?1 AND q.state < 2)",
    )?;
    // Done queue entries (the notifications sent) go with the message.
    let mut sent = c.prepare_cached("DELETE FROM queue WHERE message_id = ?1 AND state >= 2")?;
    let mut n = 0;
    for id in &victims {
        sent.execute(params![id])?;
        grants.execute(params![id])?;
        n += messages.execute(params![id])? as u64;
    }
    Ok(n)
}

const COLUMNS: &str = "id, account_id, url, sender, subject, sent_at, size, peer, received_at,
                       state, message_id, attempts, last_error";

type RawRow = (
    i64,
    AccountId,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    String,
    i64,
    i64,
    Option<Vec<u8>>,
    i64,
    Option<String>,
);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    RawRow::try_from(r)
}

fn notification(row: RawRow) -> Result<Notification, StoreError> {
    let (
        id,
        account,
        url,
        sender,
        subject,
        date,
        size,
        peer,
        received_at,
        state,
        msg,
        attempts,
        last_error,
    ) = row;
    Ok(Notification {
        id,
        notice: NewNotification {
            account,
            url,
            sender: sender.as_deref().map(parse_stored_address).transpose()?,
            subject,
            date,
            size: size.map(|s| s.max(0) as u64),
            peer,
        },
        received_at,
        state: fetch_state_from_code(state),
        message: msg.as_deref().map(message_id_from_blob).transpose()?,
        attempts: attempts.max(0) as u32,
        last_error,
    })
}

fn query(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Notification>, StoreError> {
    let rows = c
        .prepare_cached(sql)?
        .query_map(args, raw)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(notification).collect()
}

pub(super) fn put_notification(
    c: &Connection,
    n: &NewNotification,
    now: i64,
) -> Result<(Notification, bool), StoreError> {
    let inserted = c
        .prepare_cached(
            "INSERT OR IGNORE INTO notifications
               (account_id, url, sender, subject, sent_at, size, peer, received_at, next_attempt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        )?
        .execute(params![
            n.account,
            n.url,
            n.sender.as_ref().map(ToString::to_string),
            n.subject,
            n.date,
            n.size.map(|s| s as i64),
            n.peer,
            now
        ])?;
    let sql = format!("SELECT {COLUMNS} FROM notifications WHERE account_id = ?1 AND url = ?2");
    let stored = query(c, &sql, params![n.account, n.url])?
        .pop()
        .ok_or_else(|| StoreError::NotFound("notification".into()))?;
    Ok((stored, inserted > 0))
}

pub(super) fn notifications(
    c: &Connection,
    account: AccountId,
    limit: u32,
) -> Result<Vec<Notification>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE account_id = ?1 ORDER BY id DESC LIMIT ?2"
    );
    query(c, &sql, params![account, limit])
}

pub(super) fn claim_fetches(
    c: &Connection,
    now: i64,
    limit: u32,
    lease_ms: i64,
) -> Result<Vec<Notification>, StoreError> {
    let sql = format!(
        "UPDATE notifications SET lease_until = ?2
         WHERE id IN (SELECT id FROM notifications
                      WHERE state = 0 AND next_attempt <= ?1 AND lease_until <= ?1
                      ORDER BY next_attempt LIMIT ?3)
         RETURNING {COLUMNS}"
    );
    query(c, &sql, params![now, now.saturating_add(lease_ms), limit])
}

pub(super) fn finish_fetch(
    c: &Connection,
    id: i64,
    outcome: &FetchOutcome,
) -> Result<(), StoreError> {
    let n = match outcome {
        FetchOutcome::Fetched(submission) => {
            write_submission(c, submission)?;
            c.execute(
                "UPDATE notifications SET state = 1, message_id = ?2, attempts = attempts + 1,
                        last_error = NULL, lease_until = 0 WHERE id = ?1",
                params![id, &submission.message.id.0.as_bytes()[..]],
            )?
        }
        FetchOutcome::Retry {
            next_attempt,
            error,
        } => c.execute(
            "UPDATE notifications SET attempts = attempts + 1, next_attempt = ?2,
                    last_error = ?3, lease_until = 0 WHERE id = ?1",
            params![id, next_attempt, error],
        )?,
        FetchOutcome::Failed { error } => c.execute(
            "UPDATE notifications SET state = 2, attempts = attempts + 1, last_error = ?2,
                    lease_until = 0 WHERE id = ?1",
            params![id, error],
        )?,
    };
    if n == 0 {
        return Err(StoreError::NotFound(format!("notification {id}")));
    }
    Ok(())
}

#[async_trait]
impl HostedStore for SqliteStore {
    async fn grant_access(
        &self,
        message: MessageId,
        recipient: &Address,
        code_hash: Vec<u8>,
    ) -> Result<(), StoreError> {
        let recipient = recipient.clone();
        self.writer
            .write(move |c| grant_access(c, &message, &recipient, &code_hash, now_ms()))
            .await
    }

    async fn access(
        &self,
        message: MessageId,
        recipient: &Address,
    ) -> Result<Option<AccessGrant>, StoreError> {
        let recipient = recipient.clone();
        self.read(move |c| access(c, &message, &recipient)).await
    }

    async fn mark_fetched(
        &self,
        message: MessageId,
        recipient: &Address,
        now: i64,
    ) -> Result<(), StoreError> {
        let recipient = recipient.clone();
        self.writer
            .write(move |c| mark_fetched(c, &message, &recipient, now))
            .await
    }

    async fn expire_hosted(&self, now: i64, retention_ms: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |c| expire_hosted(c, now.saturating_sub(retention_ms)))
            .await
    }

    async fn put_notification(
        &self,
        notice: NewNotification,
    ) -> Result<(Notification, bool), StoreError> {
        self.writer
            .write(move |c| put_notification(c, &notice, now_ms()))
            .await
    }

    async fn notifications(
        &self,
        account: AccountId,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.read(move |c| notifications(c, account, limit)).await
    }

    async fn claim_fetches(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        self.writer
            .write(move |c| claim_fetches(c, now, limit, lease_ms))
            .await
    }

    async fn finish_fetch(&self, id: i64, outcome: FetchOutcome) -> Result<(), StoreError> {
        self.writer
            .write(move |c| finish_fetch(c, id, &outcome))
            .await
    }
}
