//! The mail store on PostgreSQL: accounts, keys, mailboxes, the relay queue (leases taken
//! with `FOR UPDATE SKIP LOCKED`, so nodes never claim the same entry), tokens, health.

use super::messages::{
    delete_entries, ensure_folder, insert_entry, load_message, write_submission,
};
use super::PgStore;
use crate::address::Address;
use crate::mailbox::STANDARD_FOLDERS;
use crate::message::{now_ms, Message, MessageId};
use crate::store::rows::{parse_stored_address, queue_state_from_code, summary, MessageRow};
use crate::store::{
    Account, AccountId, BackendErrorKind, EntryQuery, Flags, FolderInfo, MailStore, MailboxEntry,
    MessageSummary, Placement, PublicKeyRecord, QueueEntry, RelayOutcome, StoreError, StoreStats,
    Submission, TagCount, TagFilter,
};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub(super) const ENTRY_COLUMNS: &str =
    "id, account_id, folder, message_id, seen, deleted, added_at";

pub(super) fn entry(r: &Row) -> MailboxEntry {
    MailboxEntry {
        id: r.get(0),
        account: r.get(1),
        folder: r.get(2),
        message: MessageId(r.get(3)),
        flags: Flags {
            seen: r.get(4),
            deleted: r.get(5),
        },
        added_at: r.get(6),
    }
}

const QUEUE_COLUMNS: &str =
    "id, message_id, recipient, protocol, state, attempts, next_attempt, last_error, created_at";

fn queue_entry(r: &Row) -> Result<QueueEntry, StoreError> {
    Ok(QueueEntry {
        id: r.get(0),
        message: MessageId(r.get(1)),
        recipient: parse_stored_address(r.get(2))?,
        protocol: r.get(3),
        state: queue_state_from_code(i64::from(r.get::<_, i16>(4))),
        attempts: r.get::<_, i32>(5).max(0) as u32,
        next_attempt: r.get(6),
        last_error: r.get(7),
        created_at: r.get(8),
    })
}

fn account(r: &Row) -> Result<Account, StoreError> {
    Ok(Account {
        id: r.get(0),
        address: parse_stored_address(r.get(1))?,
        password_hash: r.get(2),
        created_at: r.get(3),
    })
}

/// How often a transaction that lost a deadlock or serialization race is run again.
const ATTEMPTS: usize = 5;

impl PgStore {
    /// Run a submission in its own transaction, again when it lost a race to another one.
    async fn submit_retrying(&self, s: &Submission) -> Result<Vec<Placement>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.submit_once(s).await {
                Err(StoreError::Backend {
                    kind: BackendErrorKind::Conflict,
                    ..
                }) if attempt < ATTEMPTS => attempt += 1,
                Err(e) => {
                    if e.is_storage_failure() {
                        self.metrics.store_write_failed();
                    }
                    return Err(e);
                }
                Ok(placed) => return Ok(placed),
            }
        }
    }

    async fn submit_once(&self, s: &Submission) -> Result<Vec<Placement>, StoreError> {
        let mut c = self.conn().await?;
        let started = std::time::Instant::now();
        let tx = c.transaction().await?;
        let placed = write_submission(&tx, s).await?;
        match tx.commit().await {
            Ok(()) => {
                self.metrics.observe_commit(started.elapsed(), 1);
                Ok(placed)
            }
            Err(e) => match StoreError::from(e) {
                conflict @ StoreError::Backend {
                    kind: BackendErrorKind::Conflict,
                    ..
                } => Err(conflict),
                other => Err(StoreError::CommitFailed(other.to_string())),
            },
        }
    }

    /// Entries chosen by `select` (returning `id, message_id`, locking them), deleted with
    /// their unreferenced messages, in one transaction.
    async fn delete_where(
        &self,
        select: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let victims: Vec<(i64, uuid::Uuid)> = tx
            .query(select, args)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let n = delete_entries(&tx, &victims).await?;
        tx.commit().await?;
        Ok(n)
    }
}

#[async_trait]
impl MailStore for PgStore {
    async fn submit(&self, submission: Submission) -> Result<Vec<Placement>, StoreError> {
        self.submit_retrying(&submission).await
    }

    async fn create_account(
        &self,
        address: &Address,
        password_hash: &str,
    ) -> Result<Account, StoreError> {
        let address = address.account();
        let now = now_ms();
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(
                "INSERT INTO accounts (address_key, address, password_hash, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id",
                &[
                    &address.account_key(),
                    &address.to_string(),
                    &password_hash,
                    &now,
                ],
            )
            .await?;
        let Some(row) = row else {
            return Err(StoreError::AccountExists(address.to_string()));
        };
        let id: i64 = row.get(0);
        for f in STANDARD_FOLDERS {
            ensure_folder(&tx, id, f).await?;
        }
        tx.commit().await?;
        Ok(Account {
            id,
            address,
            password_hash: password_hash.to_owned(),
            created_at: now,
        })
    }

    async fn account(&self, address: &Address) -> Result<Option<Account>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, address, password_hash, created_at FROM accounts WHERE address_key = $1",
            )
            .await?;
        c.query_opt(&stmt, &[&address.account_key()])
            .await?
            .as_ref()
            .map(account)
            .transpose()
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let c = self.conn().await?;
        c.query(
            "SELECT id, address, password_hash, created_at FROM accounts ORDER BY address_key",
            &[],
        )
        .await?
        .iter()
        .map(account)
        .collect()
    }

    async fn set_password_hash(&self, address: &Address, hash: &str) -> Result<(), StoreError> {
        let key = address.account_key();
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE accounts SET password_hash = $2 WHERE address_key = $1",
                &[&key, &hash],
            )
            .await?;
        if n == 0 {
            Err(StoreError::NoAccount(key))
        } else {
            Ok(())
        }
    }

    async fn remove_account(&self, address: &Address) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(c.execute(
            "DELETE FROM accounts WHERE address_key = $1",
            &[&address.account_key()],
        )
        .await?
            > 0)
    }

    async fn set_secret(
        &self,
        account: AccountId,
        kind: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO account_secrets (account_id, kind, value) VALUES ($1, $2, $3)
             ON CONFLICT (account_id, kind) DO UPDATE SET value = excluded.value",
            &[&account, &kind, &value],
        )
        .await?;
        Ok(())
    }

    async fn secret(&self, account: AccountId, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached("SELECT value FROM account_secrets WHERE account_id = $1 AND kind = $2")
            .await?;
        Ok(c.query_opt(&stmt, &[&account, &kind])
            .await?
            .map(|r| r.get(0)))
    }

    async fn put_key(&self, key: PublicKeyRecord) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO public_keys
               (address_key, address, fingerprint, armored, updated_at, owner_verified)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (address_key) DO UPDATE SET address = excluded.address,
               fingerprint = excluded.fingerprint, armored = excluded.armored,
               updated_at = excluded.updated_at, owner_verified = excluded.owner_verified",
            &[
                &key.address.account_key(),
                &key.address.account().to_string(),
                &key.fingerprint,
                &key.armored,
                &now_ms(),
                &key.owner_verified,
            ],
        )
        .await?;
        Ok(())
    }

    async fn key(&self, address: &Address) -> Result<Option<PublicKeyRecord>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT address, fingerprint, armored, owner_verified
                 FROM public_keys WHERE address_key = $1",
            )
            .await?;
        c.query_opt(&stmt, &[&address.account_key()])
            .await?
            .map(|r| {
                Ok(PublicKeyRecord {
                    address: parse_stored_address(r.get(0))?,
                    fingerprint: r.get(1),
                    armored: r.get(2),
                    owner_verified: r.get(3),
                })
            })
            .transpose()
    }

    async fn folders(&self, account: AccountId) -> Result<Vec<FolderInfo>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT name, total, unseen FROM folders WHERE account_id = $1 ORDER BY key",
            )
            .await?;
        Ok(c.query(&stmt, &[&account])
            .await?
            .iter()
            .map(|r| FolderInfo {
                name: r.get(0),
                total: r.get::<_, i64>(1).max(0) as u64,
                unseen: r.get::<_, i64>(2).max(0) as u64,
            })
            .collect())
    }

    async fn create_folder(&self, account: AccountId, name: &str) -> Result<(), StoreError> {
        let c = self.conn().await?;
        ensure_folder(&c, account, name).await
    }

    async fn delete_folder(&self, account: AccountId, name: &str) -> Result<bool, StoreError> {
        let escaped = name
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let sub = format!("{escaped}/%");
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let victims: Vec<(i64, uuid::Uuid)> = tx
            .query(
                "SELECT id, message_id FROM entries
                 WHERE account_id = $1 AND (folder_key = lower($2) OR folder_key LIKE $3)
                 FOR UPDATE",
                &[&account, &name, &sub],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        delete_entries(&tx, &victims).await?;
        let n = tx
            .execute(
                "DELETE FROM folders WHERE account_id = $1 AND (key = lower($2) OR key LIKE $3)",
                &[&account, &name, &sub],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn entries(
        &self,
        account: AccountId,
        folder: &str,
        query: EntryQuery,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let c = self.conn().await?;
        super::listing::list(&c, account, folder, &query).await
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let c = self.conn().await?;
        load_message(&c, id).await
    }

    async fn count_entries(
        &self,
        account: AccountId,
        folder: &str,
        tags: &TagFilter,
    ) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        super::listing::count(&c, account, folder, tags).await
    }

    async fn tag_counts(
        &self,
        account: AccountId,
        folder: &str,
    ) -> Result<Vec<TagCount>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT category, value, n FROM folder_tags
                 WHERE account_id = $1 AND folder_key = lower($2) AND n > 0",
            )
            .await?;
        Ok(c.query(&stmt, &[&account, &folder])
            .await?
            .iter()
            .map(|r| TagCount {
                category: r.get(0),
                value: r.get(1),
                count: r.get::<_, i64>(2).max(0) as u64,
            })
            .collect())
    }

    async fn find_entry(
        &self,
        account: AccountId,
        message: MessageId,
        folder: Option<&str>,
    ) -> Result<Option<MailboxEntry>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries
                 WHERE message_id = $1 AND account_id = $2 AND NOT deleted
                   AND ($3::text IS NULL OR folder_key = lower($3)) LIMIT 1"
            ))
            .await?;
        Ok(c.query_opt(&stmt, &[&message.0, &account, &folder])
            .await?
            .as_ref()
            .map(entry))
    }

    async fn summaries(&self, ids: &[MessageId]) -> Result<Vec<MessageSummary>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT m.id, sender, subject, kind, importance, received_at, size, meta::text
                 FROM unnest($1::uuid[]) WITH ORDINALITY AS wanted(id, n)
                 JOIN messages m ON m.id = wanted.id ORDER BY wanted.n",
            )
            .await?;
        let wanted: Vec<uuid::Uuid> = ids.iter().map(|i| i.0).collect();
        c.query(&stmt, &[&wanted])
            .await?
            .iter()
            .map(|r| {
                let row = MessageRow {
                    sender: r.get(1),
                    subject: r.get(2),
                    kind: i64::from(r.get::<_, i16>(3)),
                    importance: i64::from(r.get::<_, i16>(4)),
                    received_at: r.get(5),
                    meta: r.get(7),
                    wire_protocol: None,
                    wire: None,
                };
                summary(MessageId(r.get(0)), row, r.get(6))
            })
            .collect()
    }

    async fn set_flags(
        &self,
        account: AccountId,
        entry: i64,
        flags: Flags,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE entries SET seen = $3, deleted = $4 WHERE id = $1 AND account_id = $2",
            )
            .await?;
        let n = c
            .execute(&stmt, &[&entry, &account, &flags.seen, &flags.deleted])
            .await?;
        if n == 0 {
            Err(StoreError::NotFound(format!("entry {entry}")))
        } else {
            Ok(())
        }
    }

    async fn add_entry(
        &self,
        account: AccountId,
        folder: &str,
        message: MessageId,
    ) -> Result<i64, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let id = insert_entry(&tx, account, folder, &message, now_ms()).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn remove_entries(&self, account: AccountId, entries: &[i64]) -> Result<u64, StoreError> {
        let ids = entries.to_vec();
        self.delete_where(
            "SELECT id, message_id FROM entries WHERE id = ANY($1) AND account_id = $2
             ORDER BY id FOR UPDATE",
            &[&ids, &account],
        )
        .await
    }

    async fn expunge(&self, account: AccountId, folder: &str) -> Result<u64, StoreError> {
        self.delete_where(
            "SELECT id, message_id FROM entries
             WHERE account_id = $1 AND folder_key = lower($2) AND deleted ORDER BY id FOR UPDATE",
            &[&account, &folder],
        )
        .await
    }

    async fn claim_due(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let c = self.conn().await?;
        // Leases that ran out (a node died mid-delivery) first, then due entries oldest first;
        // rows another node is claiming right now are skipped, not waited for.
        let stmt = c
            .prepare_cached(&format!(
                "WITH expired AS (
                   SELECT id FROM queue WHERE state = 1 AND lease_until <= $1
                   ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED),
                 due AS (
                   SELECT id FROM queue WHERE state = 0 AND next_attempt <= $1
                   ORDER BY next_attempt LIMIT $3 FOR UPDATE SKIP LOCKED),
                 chosen AS (
                   SELECT id FROM (SELECT id, 0 AS k FROM expired UNION ALL SELECT id, 1 FROM due) u
                   ORDER BY k LIMIT $3)
                 UPDATE queue q SET state = 1, lease_until = $2 FROM chosen WHERE q.id = chosen.id
                 RETURNING {}",
                QUEUE_COLUMNS
                    .split(", ")
                    .map(|c| format!("q.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .await?;
        c.query(
            &stmt,
            &[&now, &now.saturating_add(lease_ms), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(queue_entry)
        .collect()
    }

    async fn finish_relay(&self, id: i64, outcome: RelayOutcome) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = match &outcome {
            RelayOutcome::Delivered => {
                tx.execute(
                    "UPDATE queue SET state = 2, attempts = attempts + 1, last_error = NULL
                     WHERE id = $1",
                    &[&id],
                )
                .await?
            }
            RelayOutcome::Retry {
                next_attempt,
                error,
            } => {
                tx.execute(
                    "UPDATE queue SET state = 0, attempts = attempts + 1, next_attempt = $2,
                                      last_error = $3 WHERE id = $1",
                    &[&id, next_attempt, error],
                )
                .await?
            }
            RelayOutcome::Failed { error, bounce } => {
                if let Some(b) = bounce {
                    write_submission(&tx, b).await?;
                }
                tx.execute(
                    "UPDATE queue SET state = 3, attempts = attempts + 1, last_error = $2
                     WHERE id = $1",
                    &[&id, error],
                )
                .await?
            }
        };
        if n == 0 {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_leases(&self) -> Result<u64, StoreError> {
        // Other nodes' leases are theirs while they run: a starting node releases nothing,
        // and a dead node's leases come due when they run out (`claim_due`).
        Ok(0)
    }

    async fn queue(&self, domain: Option<&str>) -> Result<Vec<QueueEntry>, StoreError> {
        let domain = domain.map(str::to_ascii_lowercase);
        let c = self.conn().await?;
        c.query(
            &format!(
                "SELECT {QUEUE_COLUMNS} FROM queue WHERE state IN (0, 1, 3)
                 AND ($1::text IS NULL OR domain = $1) ORDER BY id"
            ),
            &[&domain],
        )
        .await?
        .iter()
        .map(queue_entry)
        .collect()
    }

    async fn retry_now(&self, id: Option<i64>, now: i64) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        Ok(c.execute(
            "UPDATE queue SET state = 0, next_attempt = $2
             WHERE state IN (0, 3) AND ($1::bigint IS NULL OR id = $1)",
            &[&id, &now],
        )
        .await?)
    }

    async fn drop_queued(&self, id: i64) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(c.execute("DELETE FROM queue WHERE id = $1", &[&id]).await? > 0)
    }

    async fn put_token(
        &self,
        kind: &str,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO tokens (kind, key, value, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value,
                   expires_at = excluded.expires_at",
            )
            .await?;
        c.execute(&stmt, &[&kind, &key, &value, &expires_at])
            .await?;
        Ok(())
    }

    async fn take_token(
        &self,
        kind: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "DELETE FROM tokens WHERE kind = $1 AND key = $2 RETURNING value, expires_at",
            )
            .await?;
        Ok(c.query_opt(&stmt, &[&kind, &key])
            .await?
            .filter(|r| r.get::<_, i64>(1) > now)
            .map(|r| r.get(0)))
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let a = tx
            .execute("DELETE FROM tokens WHERE expires_at <= $1", &[&now])
            .await?;
        let b = tx
            .execute("DELETE FROM stamps WHERE expires_at <= $1", &[&now])
            .await?;
        // Fold the counters' deltas into one row per name (rows added meanwhile stay).
        tx.batch_execute(
            "WITH gone AS (DELETE FROM counter_deltas RETURNING name, n)
             INSERT INTO counter_deltas (name, n) SELECT name, sum(n) FROM gone GROUP BY name",
        )
        .await?;
        tx.commit().await?;
        Ok(a + b)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT name, sum(n)::bigint FROM counter_deltas GROUP BY name",
                &[],
            )
            .await?;
        let mut stats = StoreStats::default();
        for r in rows {
            let n = r.get::<_, i64>(1).max(0) as u64;
            match r.get::<_, &str>(0) {
                "messages" => stats.messages = n,
                "accounts" => stats.accounts = n,
                "queue_pending" => stats.queue_depth = n,
                _ => {}
            }
        }
        Ok(stats)
    }

    async fn health(&self) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let writable: bool = c
            .query_one("SELECT NOT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        if writable {
            Ok(())
        } else {
            Err(StoreError::Backend {
                kind: BackendErrorKind::Storage,
                message: "the database is a read-only standby".into(),
            })
        }
    }

    async fn backup(&self, _path: &std::path::Path) -> Result<(), StoreError> {
        Err(StoreError::Backend {
            kind: BackendErrorKind::Other,
            message: "a PostgreSQL store is backed up with the database's own tools \
                      (pg_dump, or base backups with WAL archiving): see docs/scaling.md"
                .into(),
        })
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        self.listener.abort();
        Ok(())
    }
}
