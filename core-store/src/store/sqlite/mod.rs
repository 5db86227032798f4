//! SQLite back-end: WAL, `synchronous=FULL`, one group-commit writer, a pool of readers.

mod hosted;
mod listing;
mod messages;
#[cfg(test)]
mod plans;
mod pubsub;
mod schema;
mod settings;
mod tmtp;
pub(super) mod transfer;
mod writer;

use super::rows::{
    kind_code, message_id_from_blob, parse_stored_address, queue_state_from_code, summary,
    MessageRow,
};
use super::{
    Account, AccountId, AccountRef, BackendErrorKind, EntryQuery, Flags, FolderChoice, FolderInfo,
    LocalDelivery, MailStore, MailboxEntry, MessageSummary, NodeInfo, Placement, PubSubStore,
    PublicKeyRecord, QueueEntry, RelayOutcome, RelayRequest, StoreError, StoreStats, Submission,
    Subscription, TagCount, TagFilter,
};
use crate::address::Address;
use crate::mailbox::{is_standard_folder, INBOX, STANDARD_FOLDERS};
use crate::message::{now_ms, Message, MessageId, Part};
use crate::metrics::Metrics;
use async_trait::async_trait;
use messages::*;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use schema::migrate;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use writer::Writer;

/// Options for opening the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Database file (created with its directory when missing).
    pub path: PathBuf,
    /// Fsync every commit (`synchronous=FULL`); only benchmarks turn this off.
    pub fsync: bool,
    /// Reader connections (concurrent reads).
    pub readers: usize,
    /// Size the write-ahead log may reach before a checkpoint waits for the writer and
    /// truncates it (under sustained writes it would otherwise never restart and grow without
    /// bound).
    pub wal_limit: u64,
}

impl SqliteOptions {
    /// Defaults for a database at `path`: fsync on, four readers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            fsync: true,
            readers: 4,
            wal_limit: DEFAULT_WAL_LIMIT,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        let kind = match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                DiskFull | SystemIoFailure | ReadOnly | CannotOpen | DatabaseCorrupt
                | NotADatabase => BackendErrorKind::Storage,
                ConstraintViolation => BackendErrorKind::Constraint,
                _ => BackendErrorKind::Other,
            },
            _ => BackendErrorKind::Other,
        };
        StoreError::Backend {
            kind,
            message: e.to_string(),
        }
    }
}

/// Default [`SqliteOptions::wal_limit`]: 64 MiB.
pub const DEFAULT_WAL_LIMIT: u64 = 64 * 1024 * 1024;

/// The SQLite store.
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<ReaderPool>,
    live: tokio::sync::broadcast::Sender<super::LiveEvent>,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

fn open_conn(path: &Path, read_only: bool, fsync: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "OFF" })?;
        // Each job runs under a savepoint: its statement journal stays in memory instead of
        // a temporary file written for every page a job touches twice (13 % of the writer's
        // time with it on disk).
        conn.pragma_update(None, "temp_store", "MEMORY")?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    #[cfg(test)]
    plans::record(&conn);
    Ok(conn)
}

impl SqliteStore {
    /// Open (creating and migrating) the database.
    pub fn open(opts: SqliteOptions, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        if let Some(dir) = opts.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut conn = open_conn(&opts.path, false, opts.fsync)?;
        migrate(&mut conn)?;
        // The database holds password equivalents: owner only, whatever the umask was.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = opts.path.clone().into_os_string();
            p.push(suffix);
            make_private(std::path::Path::new(&p))?;
        }
        // Checkpoints run on their own thread and connection, so the writer's commits never
        // wait for the WAL to be copied back into the database file.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // When the log restarts, a file grown past the limit is cut back to it.
        conn.pragma_update(None, "journal_size_limit", opts.wal_limit as i64)?;
        let checkpointer = open_conn(&opts.path, false, opts.fsync)?;
        let wal = {
            let mut p = opts.path.clone().into_os_string();
            p.push("-wal");
            PathBuf::from(p)
        };
        let writer = Writer::start(conn, checkpointer, (wal, opts.wal_limit), metrics)?;
        Ok(SqliteStore {
            live: tokio::sync::broadcast::channel(super::LIVE_EVENT_BACKLOG).0,
            writer,
            readers: Arc::new(ReaderPool {
                path: opts.path,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(opts.readers.max(1)),
            }),
        })
    }

    /// Run a read on a pooled read-only connection, off the async threads.
    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let _permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = pool.idle.lock().ok().and_then(|mut v| v.pop());
            let conn = match pooled {
                Some(c) => c,
                None => open_conn(&pool.path, true, true)?,
            };
            let result = f(&conn);
            if let Ok(mut idle) = pool.idle.lock() {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

pub(super) const ENTRY_COLUMNS: &str =
    "id, account_id, folder, message_id, seen, deleted, added_at";

pub(super) struct EntryRow {
    id: i64,
    account: AccountId,
    folder: String,
    message: Vec<u8>,
    seen: bool,
    deleted: bool,
    added_at: i64,
}

pub(super) fn entry_from_row(r: &Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok(EntryRow {
        id: r.get(0)?,
        account: r.get(1)?,
        folder: r.get(2)?,
        message: r.get(3)?,
        seen: r.get(4)?,
        deleted: r.get(5)?,
        added_at: r.get(6)?,
    })
}

impl EntryRow {
    fn into_entry(self) -> Result<MailboxEntry, StoreError> {
        Ok(MailboxEntry {
            id: self.id,
            account: self.account,
            folder: self.folder,
            message: message_id_from_blob(&self.message)?,
            flags: Flags {
                seen: self.seen,
                deleted: self.deleted,
            },
            added_at: self.added_at,
        })
    }
}

const QUEUE_COLUMNS: &str =
    "id, message_id, recipient, protocol, state, attempts, next_attempt, last_error, created_at";

fn queue_from_row(r: &Row<'_>) -> rusqlite::Result<QueueRow> {
    Ok(QueueRow {
        id: r.get(0)?,
        message: r.get(1)?,
        recipient: r.get(2)?,
        protocol: r.get(3)?,
        state: r.get(4)?,
        attempts: r.get(5)?,
        next_attempt: r.get(6)?,
        last_error: r.get(7)?,
        created_at: r.get(8)?,
    })
}

struct QueueRow {
    id: i64,
    message: Vec<u8>,
    recipient: String,
    protocol: Option<String>,
    state: i64,
    attempts: i64,
    next_attempt: i64,
    last_error: Option<String>,
    created_at: i64,
}

impl QueueRow {
    fn into_entry(self) -> Result<QueueEntry, StoreError> {
        Ok(QueueEntry {
            id: self.id,
            message: message_id_from_blob(&self.message)?,
            recipient: parse_stored_address(&self.recipient)?,
            protocol: self.protocol,
            state: queue_state_from_code(self.state),
            attempts: self.attempts.max(0) as u32,
            next_attempt: self.next_attempt,
            last_error: self.last_error,
            created_at: self.created_at,
        })
    }
}

#[async_trait]
impl MailStore for SqliteStore {
    async fn submit(&self, submission: Submission) -> Result<Vec<Placement>, StoreError> {
        self.writer
            .write(move |c| write_submission(c, &submission))
            .await
    }

    async fn create_account(
        &self,
        address: &Address,
        password_hash: &str,
    ) -> Result<Account, StoreError> {
        let address = address.account();
        let hash = password_hash.to_owned();
        self.writer
            .write(move |c| {
                let key = address.account_key();
                let now = now_ms();
                let n = c.execute(
                    "INSERT OR IGNORE INTO accounts (address_key, address, password_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![key, address.to_string(), hash, now],
                )?;
                if n == 0 {
                    return Err(StoreError::AccountExists(address.to_string()));
                }
                let id = c.last_insert_rowid();
                for f in STANDARD_FOLDERS {
                    ensure_folder(c, id, f)?;
                }
                Ok(Account {
                    id,
                    address,
                    password_hash: hash,
                    created_at: now,
                })
            })
            .await
    }

    async fn account(&self, address: &Address) -> Result<Option<Account>, StoreError> {
        let key = address.account_key();
        self.read(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT id, address, password_hash, created_at FROM accounts
                     WHERE address_key = ?1",
                )?
                .query_row(params![key], account_from_row)
                .optional()?;
            row.map(to_account).transpose()
        })
        .await
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, address, password_hash, created_at FROM accounts ORDER BY address_key",
            )?;
            let rows = stmt
                .query_map([], account_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_account).collect()
        })
        .await
    }

    async fn set_password_hash(&self, address: &Address, hash: &str) -> Result<(), StoreError> {
        let key = address.account_key();
        let hash = hash.to_owned();
        self.writer
            .write(move |c| {
                let n = c.execute(
                    "UPDATE accounts SET password_hash = ?2 WHERE address_key = ?1",
                    params![key, hash],
                )?;
                if n == 0 {
                    Err(StoreError::NoAccount(key))
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn remove_account(&self, address: &Address) -> Result<bool, StoreError> {
        let key = address.account_key();
        self.writer
            .write(move |c| {
                Ok(c.execute("DELETE FROM accounts WHERE address_key = ?1", params![key])? > 0)
            })
            .await
    }

    async fn set_secret(
        &self,
        account: AccountId,
        kind: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let (kind, value) = (kind.to_owned(), value.to_vec());
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO account_secrets (account_id, kind, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account_id, kind) DO UPDATE SET value = excluded.value",
                    params![account, kind, value],
                )?;
                Ok(())
            })
            .await
    }

    async fn secret(&self, account: AccountId, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let kind = kind.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT value FROM account_secrets WHERE account_id = ?1 AND kind = ?2",
            )?
            .query_row(params![account, kind], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    async fn put_key(&self, key: PublicKeyRecord) -> Result<(), StoreError> {
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO public_keys
                       (address_key, address, fingerprint, armored, updated_at, owner_verified)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (address_key) DO UPDATE SET address = excluded.address,
                       fingerprint = excluded.fingerprint, armored = excluded.armored,
                       updated_at = excluded.updated_at,
                       owner_verified = excluded.owner_verified",
                    params![
                        key.address.account_key(),
                        key.address.account().to_string(),
                        key.fingerprint,
                        key.armored,
                        now_ms(),
                        key.owner_verified
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn key(&self, address: &Address) -> Result<Option<PublicKeyRecord>, StoreError> {
        let key = address.account_key();
        self.read(move |c| {
            let row: Option<(String, String, String, bool)> = c
                .prepare_cached(
                    "SELECT address, fingerprint, armored, owner_verified
                     FROM public_keys WHERE address_key = ?1",
                )?
                .query_row(params![key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            row.map(|(a, fingerprint, armored, owner_verified)| {
                Ok(PublicKeyRecord {
                    address: parse_stored_address(&a)?,
                    fingerprint,
                    armored,
                    owner_verified,
                })
            })
            .transpose()
        })
        .await
    }

    async fn folders(&self, account: AccountId) -> Result<Vec<FolderInfo>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                // Counts kept by triggers (migration 7).
                "SELECT name, total, unseen FROM folders WHERE account_id = ?1 ORDER BY name",
            )?;
            let rows = stmt
                .query_map(params![account], |r| {
                    Ok(FolderInfo {
                        name: r.get(0)?,
                        total: r.get::<_, i64>(1)? as u64,
                        unseen: r.get::<_, i64>(2)? as u64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn create_folder(&self, account: AccountId, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.writer
            .write(move |c| ensure_folder(c, account, &name))
            .await
    }

    async fn delete_folder(&self, account: AccountId, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.writer
            .write(move |c| {
                let escaped = name
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                let sub = format!("{escaped}/%");
                delete_entries(
                    c,
                    "SELECT id, message_id FROM entries
                     WHERE account_id = ?1 AND (folder = ?2 OR folder LIKE ?3 ESCAPE '\\')",
                    params![account, name, sub],
                )?;
                let n = c.execute(
                    "DELETE FROM folders
                     WHERE account_id = ?1 AND (name = ?2 OR name LIKE ?3 ESCAPE '\\')",
                    params![account, name, sub],
                )?;
                Ok(n > 0)
            })
            .await
    }

    async fn entries(
        &self,
        account: AccountId,
        folder: &str,
        query: EntryQuery,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let folder = folder.to_owned();
        self.read(move |c| {
            listing::list(c, account, &folder, &query)?
                .into_iter()
                .map(EntryRow::into_entry)
                .collect()
        })
        .await
    }

    async fn count_entries(
        &self,
        account: AccountId,
        folder: &str,
        tags: &TagFilter,
    ) -> Result<u64, StoreError> {
        let (folder, tags) = (folder.to_owned(), tags.clone());
        self.read(move |c| listing::count(c, account, &folder, &tags))
            .await
    }

    async fn tag_counts(
        &self,
        account: AccountId,
        folder: &str,
    ) -> Result<Vec<TagCount>, StoreError> {
        let folder = folder.to_owned();
        self.read(move |c| listing::tag_counts(c, account, &folder))
            .await
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.read(move |c| load_message(c, id)).await
    }

    async fn find_entry(
        &self,
        account: AccountId,
        message: MessageId,
        folder: Option<&str>,
    ) -> Result<Option<MailboxEntry>, StoreError> {
        let folder = folder.map(str::to_owned);
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries
                 WHERE message_id = ?1 AND account_id = ?2 AND deleted = 0
                   AND (?3 IS NULL OR folder = ?3) LIMIT 1"
            ))?
            .query_row(
                params![&message.0.as_bytes()[..], account, folder],
                entry_from_row,
            )
            .optional()?
            .map(EntryRow::into_entry)
            .transpose()
        })
        .await
    }

    async fn summaries(&self, ids: &[MessageId]) -> Result<Vec<MessageSummary>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT sender, subject, kind, importance, received_at, size, meta
                 FROM messages WHERE id = ?1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row = stmt
                    .query_row(params![&id.0.as_bytes()[..]], |r| {
                        Ok((
                            MessageRow {
                                sender: r.get(0)?,
                                subject: r.get(1)?,
                                kind: r.get(2)?,
                                importance: r.get(3)?,
                                received_at: r.get(4)?,
                                meta: r.get(6)?,
                                wire_protocol: None,
                                wire: None,
                            },
                            r.get::<_, i64>(5)?,
                        ))
                    })
                    .optional()?;
                if let Some((row, size)) = row {
                    out.push(summary(id, row, size)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_flags(
        &self,
        account: AccountId,
        entry: i64,
        flags: Flags,
    ) -> Result<(), StoreError> {
        self.writer
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE entries SET seen = ?3, deleted = ?4 WHERE id = ?1 AND account_id = ?2",
                    )?
                    .execute(params![entry, account, flags.seen, flags.deleted])?;
                if n == 0 {
                    Err(StoreError::NotFound(format!("entry {entry}")))
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn add_entry(
        &self,
        account: AccountId,
        folder: &str,
        message: MessageId,
    ) -> Result<i64, StoreError> {
        let folder = folder.to_owned();
        self.writer
            .write(move |c| insert_entry(c, account, &folder, &message, now_ms()))
            .await
    }

    async fn remove_entries(&self, account: AccountId, entries: &[i64]) -> Result<u64, StoreError> {
        let ids = entries.to_vec();
        self.writer
            .write(move |c| {
                let mut n = 0;
                for id in &ids {
                    n += delete_entries(
                        c,
                        "SELECT id, message_id FROM entries WHERE id = ?1 AND account_id = ?2",
                        params![id, account],
                    )?;
                }
                Ok(n)
            })
            .await
    }

    async fn expunge(&self, account: AccountId, folder: &str) -> Result<u64, StoreError> {
        let folder = folder.to_owned();
        self.writer
            .write(move |c| {
                delete_entries(
                    c,
                    "SELECT id, message_id FROM entries
                     WHERE account_id = ?1 AND folder = ?2 AND deleted = 1",
                    params![account, folder],
                )
            })
            .await
    }

    async fn claim_due(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        self.writer
            .write(move |c| {
                let sql = format!(
                    // Leases that ran out (a crash mid-delivery) first, then the due entries
                    // oldest first: two index ranges, no sort.
                    "UPDATE queue SET state = 1, lease_until = ?2
                     WHERE id IN (
                       SELECT id FROM (SELECT id FROM queue WHERE state = 1 AND lease_until <= ?1
                                       LIMIT ?3)
                       UNION ALL
                       SELECT id FROM (SELECT id FROM queue WHERE state = 0 AND next_attempt <= ?1
                                       ORDER BY next_attempt LIMIT ?3)
                       LIMIT ?3)
                     RETURNING {QUEUE_COLUMNS}"
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt
                    .query_map(
                        params![now, now.saturating_add(lease_ms), limit],
                        queue_from_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.into_iter().map(QueueRow::into_entry).collect()
            })
            .await
    }

    async fn finish_relay(&self, id: i64, outcome: RelayOutcome) -> Result<(), StoreError> {
        self.writer
            .write(move |c| {
                let n = match outcome {
                    RelayOutcome::Delivered => c.execute(
                        "UPDATE queue SET state = 2, attempts = attempts + 1, last_error = NULL
                         WHERE id = ?1",
                        params![id],
                    )?,
                    RelayOutcome::Retry {
                        next_attempt,
                        error,
                    } => c.execute(
                        "UPDATE queue SET state = 0, attempts = attempts + 1, next_attempt = ?2,
                                          last_error = ?3 WHERE id = ?1",
                        params![id, next_attempt, error],
                    )?,
                    RelayOutcome::Failed { error, bounce } => {
                        if let Some(b) = &bounce {
                            write_submission(c, b)?;
                        }
                        c.execute(
                            "UPDATE queue SET state = 3, attempts = attempts + 1, last_error = ?2
                             WHERE id = ?1",
                            params![id, error],
                        )?
                    }
                };
                if n == 0 {
                    Err(StoreError::NotFound(format!("queue entry {id}")))
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn release_leases(&self) -> Result<u64, StoreError> {
        self.writer
            .write(|c| {
                let a = c.execute(
                    "UPDATE queue SET state = 0, lease_until = 0 WHERE state = 1",
                    [],
                )?;
                let b = c.execute(
                    "UPDATE notifications SET lease_until = 0 WHERE state = 0 AND lease_until > 0",
                    [],
                )?;
                Ok((a + b) as u64)
            })
            .await
    }

    async fn queue(&self, domain: Option<&str>) -> Result<Vec<QueueEntry>, StoreError> {
        let domain = domain.map(str::to_ascii_lowercase);
        self.read(move |c| {
            let sql = format!(
                "SELECT {QUEUE_COLUMNS} FROM queue WHERE state IN (0, 1, 3)
                 AND (?1 IS NULL OR domain = ?1) ORDER BY id"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![domain], queue_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(QueueRow::into_entry).collect()
        })
        .await
    }

    async fn retry_now(&self, id: Option<i64>, now: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |c| {
                let n = c.execute(
                    "UPDATE queue SET state = 0, next_attempt = ?2
                     WHERE state IN (0, 3) AND (?1 IS NULL OR id = ?1)",
                    params![id, now],
                )?;
                Ok(n as u64)
            })
            .await
    }

    async fn drop_queued(&self, id: i64) -> Result<bool, StoreError> {
        self.writer
            .write(move |c| Ok(c.execute("DELETE FROM queue WHERE id = ?1", params![id])? > 0))
            .await
    }

    async fn put_token(
        &self,
        kind: &str,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (kind, key, value) = (kind.to_owned(), key.to_owned(), value.to_vec());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO tokens (kind, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value,
                       expires_at = excluded.expires_at",
                )?
                .execute(params![kind, key, value, expires_at])?;
                Ok(())
            })
            .await
    }

    async fn take_token(
        &self,
        kind: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.writer
            .write(move |c| {
                let v: Option<(Vec<u8>, i64)> = c
                    .prepare_cached(
                        "DELETE FROM tokens WHERE kind = ?1 AND key = ?2
                         RETURNING value, expires_at",
                    )?
                    .query_row(params![kind, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                Ok(v.filter(|(_, exp)| *exp > now).map(|(v, _)| v))
            })
            .await
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |c| {
                let a = c.execute("DELETE FROM tokens WHERE expires_at <= ?1", params![now])?;
                let b = c.execute("DELETE FROM stamps WHERE expires_at <= ?1", params![now])?;
                Ok((a + b) as u64)
            })
            .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|c| {
            // Counts kept by triggers (migration 7).
            let (messages, accounts, queue_depth): (i64, i64, i64) = c.query_row(
                "SELECT (SELECT n FROM counters WHERE name = 'messages'),
                        (SELECT n FROM counters WHERE name = 'accounts'),
                        (SELECT n FROM counters WHERE name = 'queue_pending')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(StoreStats {
                messages: messages as u64,
                accounts: accounts as u64,
                queue_depth: queue_depth as u64,
            })
        })
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        let health = &self.writer.health;
        let recent = health.last_ok().is_some_and(|t| t.elapsed() < HEALTH_FRESH);
        if recent && health.failure().is_none() {
            return Ok(());
        }
        // Nothing written lately, or the last write failed: try one now.
        self.writer
            .write(|c| {
                c.execute_batch(
                    "CREATE TABLE IF NOT EXISTS health_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)",
                )?;
                c.prepare_cached("INSERT OR REPLACE INTO health_probe (id, at) VALUES (1, ?1)")?
                    .execute([crate::message::now_ms()])?;
                Ok(())
            })
            .await
    }

    async fn backup(&self, path: &Path) -> Result<(), StoreError> {
        let dest = path.to_owned();
        self.read(move |c| {
            if dest.exists() {
                return Err(StoreError::Io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists already", dest.display()),
                )));
            }
            let mut out = Connection::open(&dest)?;
            let backup = rusqlite::backup::Backup::new(c, &mut out)?;
            backup.run_to_completion(256, Duration::from_millis(5), None)?;
            make_private(&dest)?;
            Ok(())
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.writer.stop().await;
        Ok(())
    }
}

/// A successful write this recent makes a health check answer without a probe write.
const HEALTH_FRESH: Duration = Duration::from_secs(10);

/// Make an existing file readable by its owner only (0600); a missing file is fine.
fn make_private(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
