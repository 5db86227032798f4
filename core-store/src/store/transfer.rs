//! `mailgate store migrate`: copy every stored row from one store to another of either
//! back-end (SQLite ↔ PostgreSQL), then count both sides.
//!
//! The two schemas hold the same logical tables and columns; they differ in types (UUIDs are
//! 16-byte BLOBs in SQLite, `UUID` in PostgreSQL; flags integers or `BOOLEAN`; JSON text or
//! `JSONB`) and in what each derives by itself. Rows travel as back-end-neutral [`Cell`]s, in
//! the order foreign keys need. Derived data is never copied: folder totals, tag counts and
//! store-wide counters are recomputed by the destination's own triggers as the rows arrive,
//! and the check afterwards compares them with the source's.
//!
//! The source is read in one snapshot (a read transaction), the destination written in one
//! transaction committed at the end, so a failure leaves the destination as empty as it was.
//! The destination must be empty: merging two stores is not copying one.

use super::{StoreError, StoreLocation};
use crate::metrics::Metrics;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How a column's values are typed, whatever each back-end calls the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A whole number.
    Int,
    /// A flag.
    Bool,
    /// UTF-8 text.
    Text,
    /// Opaque bytes.
    Bytes,
    /// A message id.
    Uuid,
    /// A JSON document (carried as its text).
    Json,
}

/// One copied table: its name and the columns both back-ends store (derived columns left out).
pub(super) struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

impl Table {
    /// The column names, comma-separated.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

use Kind::{Bool, Bytes, Int, Json, Text, Uuid};

/// Every table that holds primary data, parents before children.
pub(super) const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        columns: &[
            ("id", Int),
            ("address_key", Text),
            ("address", Text),
            ("password_hash", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "account_secrets",
        columns: &[("account_id", Int), ("kind", Text), ("value", Bytes)],
    },
    Table {
        name: "account_settings",
        columns: &[("account_id", Int), ("name", Text), ("value", Text)],
    },
    Table {
        name: "site_secrets",
        columns: &[("name", Text), ("value", Bytes)],
    },
    Table {
        name: "public_keys",
        columns: &[
            ("address_key", Text),
            ("address", Text),
            ("fingerprint", Text),
            ("armored", Text),
            ("updated_at", Int),
            ("owner_verified", Bool),
        ],
    },
    Table {
        name: "messages",
        columns: &[
            ("id", Uuid),
            ("sender", Text),
            ("subject", Text),
            ("kind", Int),
            ("importance", Int),
            ("received_at", Int),
            ("size", Int),
            ("meta", Json),
            ("wire_protocol", Text),
            ("wire", Bytes),
            ("origin_key", Text),
        ],
    },
    Table {
        name: "parts",
        columns: &[
            ("message_id", Uuid),
            ("idx", Int),
            ("name", Text),
            ("media_type", Text),
            ("is_content", Bool),
            ("data", Bytes),
        ],
    },
    Table {
        name: "folders",
        columns: &[("account_id", Int), ("name", Text)],
    },
    Table {
        name: "entries",
        columns: &[
            ("id", Int),
            ("account_id", Int),
            ("folder", Text),
            ("message_id", Uuid),
            ("seen", Bool),
            ("deleted", Bool),
            ("added_at", Int),
        ],
    },
    Table {
        name: "queue",
        columns: &[
            ("id", Int),
            ("message_id", Uuid),
            ("recipient", Text),
            ("domain", Text),
            ("protocol", Text),
            ("state", Int),
            ("attempts", Int),
            ("next_attempt", Int),
            ("lease_until", Int),
            ("last_error", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "stamps",
        columns: &[("stamp", Text), ("expires_at", Int)],
    },
    Table {
        name: "tokens",
        columns: &[
            ("kind", Text),
            ("key", Text),
            ("value", Bytes),
            ("expires_at", Int),
        ],
    },
    Table {
        name: "nodes",
        columns: &[
            ("address_key", Text),
            ("address", Text),
            ("owner", Int),
            ("title", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "subscriptions",
        columns: &[
            ("id", Text),
            ("account_id", Int),
            ("node", Text),
            ("title", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "remote_subscriptions",
        columns: &[
            ("id", Text),
            ("node", Text),
            ("subscriber", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "access_grants",
        columns: &[
            ("message_id", Uuid),
            ("recipient", Text),
            ("code_hash", Bytes),
            ("created_at", Int),
            ("fetched_at", Int),
        ],
    },
    Table {
        name: "notifications",
        columns: &[
            ("id", Int),
            ("account_id", Int),
            ("url", Text),
            ("sender", Text),
            ("subject", Text),
            ("sent_at", Int),
            ("size", Int),
            ("peer", Text),
            ("received_at", Int),
            ("state", Int),
            ("message_id", Uuid),
            ("attempts", Int),
            ("next_attempt", Int),
            ("lease_until", Int),
            ("last_error", Text),
        ],
    },
    // TMTP after the mailbox: the entries trigger finds no node yet, and the queue is copied
    // as it is.
    Table {
        name: "tmtp_members",
        columns: &[("account_id", Int), ("uid", Text), ("created_at", Int)],
    },
    Table {
        name: "tmtp_nodes",
        columns: &[
            ("id", Int),
            ("account_id", Int),
            ("label", Text),
            ("secret_hash", Bytes),
            ("created_at", Int),
        ],
    },
    Table {
        name: "tmtp_aliases",
        columns: &[("alias", Text), ("account_id", Int)],
    },
    Table {
        name: "tmtp_groups",
        columns: &[
            ("gid", Text),
            ("account_id", Int),
            ("alias", Text),
            ("status", Int),
        ],
    },
    Table {
        name: "tmtp_ohi",
        columns: &[("account_id", Int), ("target_id", Int)],
    },
    Table {
        name: "tmtp_queue",
        columns: &[
            ("seq", Int),
            ("node_id", Int),
            ("priority", Int),
            ("tmtp_id", Text),
            ("message_id", Uuid),
            ("frame", Bytes),
        ],
    },
];

/// Counts derived from the rows, compared after the copy as well as the rows themselves:
/// they are recomputed by the destination, not copied.
pub(super) const DERIVED: &[(&str, &str)] = &[
    (
        "folder totals",
        "SELECT CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM folders",
    ),
    (
        "folder unseen",
        "SELECT CAST(COALESCE(SUM(unseen), 0) AS BIGINT) FROM folders",
    ),
];

/// One value in transit.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
    Uuid(uuid::Uuid),
}

/// What the reader sends the writer, in order: for each table in [`TABLES`] its rows, then
/// the end of the table.
pub(super) enum Item {
    Row(Vec<Cell>),
    EndOfTable,
}

/// Rows in flight between reader and writer (a row may hold a whole message).
const IN_FLIGHT: usize = 64;

/// Counts of one side, in the order of [`TABLES`] then [`DERIVED`].
pub(super) type Counts = Vec<u64>;

/// What a copy did: per table (and derived count), the source's and the destination's count.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    /// `(what, in the source, in the destination)`.
    pub counts: Vec<(&'static str, u64, u64)>,
}

impl MigrateReport {
    /// Whether every count matches.
    pub fn matches(&self) -> bool {
        self.counts.iter().all(|(_, a, b)| a == b)
    }
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<22} {:>12} {:>12}", "", "source", "destination")?;
        for (what, a, b) in &self.counts {
            let mark = if a == b { "" } else { "  MISMATCH" };
            writeln!(f, "{what:<22} {a:>12} {b:>12}{mark}")?;
        }
        Ok(())
    }
}

/// The error for a value that does not fit the column it goes to.
pub(super) fn bad_value(table: &str, column: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{table}.{column}: {what}"))
}

/// Copy every row of `from` into the empty store `to`, and count both.
///
/// Both are created and migrated to the current schema first. Mail arriving at the source
/// after its snapshot is taken is not copied: stop every gateway using it first.
pub async fn migrate_store(
    from: &StoreLocation,
    to: &StoreLocation,
) -> Result<MigrateReport, StoreError> {
    if from == to {
        return Err(refused(
            "the source and the destination are the same store".into(),
        ));
    }
    // Opening creates and migrates each schema; the copy itself works on its own connections.
    for location in [from, to] {
        location
            .open(Arc::new(Metrics::new()), 1)
            .await?
            .close()
            .await?;
    }
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let reader = read(from, tx);
    let writer = write(to, rx);
    let (read, written) = tokio::join!(reader, writer);
    // A failed write drops the channel, which the reader reports as closed: the writer's
    // error is the cause.
    let source = match (read, written) {
        (_, Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(counts), Ok(())) => counts,
    };
    let destination = count(to).await?;
    let names = TABLES
        .iter()
        .map(|t| t.name)
        .chain(DERIVED.iter().map(|d| d.0));
    Ok(MigrateReport {
        counts: names
            .zip(source)
            .zip(destination)
            .map(|((n, a), b)| (n, a, b))
            .collect(),
    })
}

async fn read(from: &StoreLocation, tx: mpsc::Sender<Item>) -> Result<Counts, StoreError> {
    match from {
        StoreLocation::Sqlite(path) => {
            let path = path.clone();
            blocking(move || super::sqlite::transfer::read(&path, tx)).await
        }
        StoreLocation::Postgres(url) => super::postgres::transfer::read(url, tx).await,
    }
}

async fn write(to: &StoreLocation, rx: mpsc::Receiver<Item>) -> Result<(), StoreError> {
    match to {
        StoreLocation::Sqlite(path) => {
            let path = path.clone();
            blocking(move || super::sqlite::transfer::write(&path, rx)).await
        }
        StoreLocation::Postgres(url) => super::postgres::transfer::write(url, rx).await,
    }
}

async fn count(at: &StoreLocation) -> Result<Counts, StoreError> {
    match at {
        StoreLocation::Sqlite(path) => {
            let path = path.clone();
            blocking(move || super::sqlite::transfer::count(&path)).await
        }
        StoreLocation::Postgres(url) => super::postgres::transfer::count(url).await,
    }
}

/// Run SQLite's side off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StoreError::Closed)?
}

/// The statements that count a side: rows per table, then the derived counts.
pub(super) fn count_queries() -> impl Iterator<Item = String> {
    let tables = TABLES
        .iter()
        .map(|t| format!("SELECT COUNT(*) FROM {}", t.name));
    tables.chain(DERIVED.iter().map(|(_, sql)| (*sql).to_owned()))
}

/// The writer stopped taking rows (it failed; its error says why).
pub(super) fn writer_gone() -> StoreError {
    StoreError::Closed
}

/// The reader stopped before the end (it failed; its error says why).
pub(super) fn reader_gone() -> StoreError {
    StoreError::Closed
}

fn refused(message: String) -> StoreError {
    StoreError::Backend {
        kind: super::BackendErrorKind::Other,
        message,
    }
}

/// Refuse a destination that holds anything.
pub(super) fn require_empty(counts: &[u64]) -> Result<(), StoreError> {
    match TABLES.iter().zip(counts).find(|(_, n)| **n > 0) {
        Some((t, n)) => Err(refused(format!(
            "the destination holds {n} rows in {}: migrate only into an empty store",
            t.name
        ))),
        None => Ok(()),
    }
}
