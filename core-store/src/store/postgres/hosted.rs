//! XHMTP's tables on PostgreSQL: access grants to sender-hosted messages and inbound
//! notifications with their fetch queue (leases taken with `FOR UPDATE SKIP LOCKED`).

use super::messages::write_submission;
use super::PgStore;
use crate::address::Address;
use crate::message::{now_ms, MessageId};
use crate::store::rows::{fetch_state_from_code, parse_stored_address};
use crate::store::{
    AccessGrant, AccountId, FetchOutcome, HostedStore, NewNotification, Notification, StoreError,
};
use async_trait::async_trait;
use tokio_postgres::Row;

const COLUMNS: &str = "id, account_id, url, sender, subject, sent_at, size, peer, received_at,
                       state, message_id, attempts, last_error";

fn notification(r: &Row) -> Result<Notification, StoreError> {
    Ok(Notification {
        id: r.get(0),
        notice: NewNotification {
            account: r.get(1),
            url: r.get(2),
            sender: r
                .get::<_, Option<&str>>(3)
                .map(parse_stored_address)
                .transpose()?,
            subject: r.get(4),
            date: r.get(5),
            size: r.get::<_, Option<i64>>(6).map(|s| s.max(0) as u64),
            peer: r.get(7),
        },
        received_at: r.get(8),
        state: fetch_state_from_code(i64::from(r.get::<_, i16>(9))),
        message: r.get::<_, Option<uuid::Uuid>>(10).map(MessageId),
        attempts: r.get::<_, i32>(11).max(0) as u32,
        last_error: r.get(12),
    })
}

#[async_trait]
impl HostedStore for PgStore {
    async fn grant_access(
        &self,
        message: MessageId,
        recipient: &Address,
        code_hash: Vec<u8>,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO access_grants (message_id, recipient, code_hash, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&message.0, &recipient.account_key(), &code_hash, &now_ms()],
        )
        .await?;
        Ok(())
    }

    async fn access(
        &self,
        message: MessageId,
        recipient: &Address,
    ) -> Result<Option<AccessGrant>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_opt(
            "SELECT code_hash, fetched_at FROM access_grants
                 WHERE message_id = $1 AND recipient = $2",
            &[&message.0, &recipient.account_key()],
        )
        .await?
        .map(|r| AccessGrant {
            message,
            recipient: recipient.account(),
            code_hash: r.get(0),
            fetched_at: r.get(1),
        }))
    }

    async fn mark_fetched(
        &self,
        message: MessageId,
        recipient: &Address,
        now: i64,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "UPDATE access_grants SET fetched_at = $3
             WHERE message_id = $1 AND recipient = $2 AND fetched_at IS NULL",
            &[&message.0, &recipient.account_key(), &now],
        )
        .await?;
        Ok(())
    }

    async fn expire_hosted(&self, now: i64, retention_ms: i64) -> Result<u64, StoreError> {
        let cutoff = now.saturating_sub(retention_ms);
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let victims: Vec<uuid::Uuid> = tx
            .query(
                "SELECT DISTINCT g.message_id FROM access_grants g WHERE g.fetched_at < $1
                   AND NOT EXISTS (SELECT 1 FROM access_grants o WHERE o.message_id = g.message_id
                                   AND (o.fetched_at IS NULL OR o.fetched_at >= $1))",
                &[&cutoff],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Done queue entries (the notifications sent) go with the message.
        tx.execute(
            "DELETE FROM queue WHERE message_id = ANY($1) AND state >= 2",
            &[&victims],
        )
        .await?;
        tx.execute(
            "DELETE FROM access_grants WHERE message_id = ANY($1)",
            &[&victims],
        )
        .await?;
        let n = tx
            .execute(
                "DELETE FROM messages m WHERE m.id = ANY($1)
                 AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.message_id = m.id)
                 AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = m.id AND q.state < 2)",
                &[&victims],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn put_notification(
        &self,
        n: NewNotification,
    ) -> Result<(Notification, bool), StoreError> {
        let c = self.conn().await?;
        let now = now_ms();
        let inserted = c
            .execute(
                "INSERT INTO notifications
                   (account_id, url, sender, subject, sent_at, size, peer, received_at, next_attempt)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT DO NOTHING",
                &[
                    &n.account,
                    &n.url,
                    &n.sender.as_ref().map(ToString::to_string),
                    &n.subject,
                    &n.date,
                    &n.size.map(|s| s as i64),
                    &n.peer,
                    &now,
                ],
            )
            .await?;
        let row = c
            .query_one(
                &format!("SELECT {COLUMNS} FROM notifications WHERE account_id = $1 AND url = $2"),
                &[&n.account, &n.url],
            )
            .await?;
        Ok((notification(&row)?, inserted > 0))
    }

    async fn notifications(
        &self,
        account: AccountId,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let c = self.conn().await?;
        c.query(
            &format!(
                "SELECT {COLUMNS} FROM notifications WHERE account_id = $1 ORDER BY id DESC LIMIT $2"
            ),
            &[&account, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(notification)
        .collect()
    }

    async fn claim_fetches(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let c = self.conn().await?;
        c.query(
            &format!(
                "UPDATE notifications SET lease_until = $2
                 WHERE id IN (SELECT id FROM notifications
                              WHERE state = 0 AND next_attempt <= $1 AND lease_until <= $1
                              ORDER BY next_attempt LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING {COLUMNS}"
            ),
            &[&now, &now.saturating_add(lease_ms), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(notification)
        .collect()
    }

    async fn finish_fetch(&self, id: i64, outcome: FetchOutcome) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = match &outcome {
            FetchOutcome::Fetched(submission) => {
                write_submission(&tx, submission).await?;
                tx.execute(
                    "UPDATE notifications SET state = 1, message_id = $2, attempts = attempts + 1,
                            last_error = NULL, lease_until = 0 WHERE id = $1",
                    &[&id, &submission.message.id.0],
                )
                .await?
            }
            FetchOutcome::Retry {
                next_attempt,
                error,
            } => {
                tx.execute(
                    "UPDATE notifications SET attempts = attempts + 1, next_attempt = $2,
                            last_error = $3, lease_until = 0 WHERE id = $1",
                    &[&id, next_attempt, error],
                )
                .await?
            }
            FetchOutcome::Failed { error } => {
                tx.execute(
                    "UPDATE notifications SET state = 2, attempts = attempts + 1, last_error = $2,
                            lease_until = 0 WHERE id = $1",
                    &[&id, error],
                )
                .await?
            }
        };
        if n == 0 {
            return Err(StoreError::NotFound(format!("notification {id}")));
        }
        tx.commit().await?;
        Ok(())
    }
}
